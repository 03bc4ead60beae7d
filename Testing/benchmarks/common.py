"""Shared pieces of the benchmarks: a real CT on a fixed grid, the default-size DuPLUS model, and one
``promptseg segment`` request timed phase by phase in its own process (so that its peak RSS is its own)."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.models.folder import Model, ModelConfig
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocessing.preprocess import resample_to

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_CT = SHARED / "totalsegmentator_example" / "ct_3mm" / "example_ct.nii.gz"
TEN_TARGETS = ["liver", "spleen", "left kidney", "right kidney", "stomach", "aorta", "pancreas", "gallbladder",
               "vertebral column", "left lung"]
TWENTY_TARGETS = TEN_TARGETS + ["right lung", "heart", "esophagus", "trachea", "urinary bladder", "duodenum",
                                "left adrenal gland", "right adrenal gland", "portal vein and splenic vein",
                                "inferior vena cava"]
FULL_SIZE = ((512, 512, 300), (0.78, 0.78, 1.5))
"""A clinical CT grid (voxels x, y, z; mm): 400 x 400 x 450 mm."""
SMALL_SIZE = ((160, 160, 128), (1.5, 1.5, 1.5))
"""The quick option: the small volume the benchmarks used before."""
PHASES = ("read", "resample", "windows", "map back", "write")


def real_ct_on_grid(size: tuple[int, int, int], spacing_mm: float | tuple[float, float, float]) -> sitk.Image:
    """The TotalSegmentator example CT (real, abdomen) resampled onto a centred grid of ``size`` voxels (x, y, z)
    at ``spacing_mm`` (one value: isotropic); air (-1024 HU) where the grid reaches beyond the scan."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    ct = sitk.ReadImage(str(REAL_CT))
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()]))
    grid = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin((centre - (np.array(size) - 1) / 2 * spacing).tolist())
    return sitk.Cast(resample_to(ct, grid, sitk.sitkLinear, -1024.0), sitk.sitkInt16)


def rss_gb() -> tuple[float, float]:
    """(current, peak) resident memory of this process, GB (Linux ``/proc/self/status``)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[key].split()[0]) / 1024**2 for key in ("VmRSS", "VmHWM"))


def timed_request(image_path: str, targets: list[str], threads: int, model: str | None = None,
                  precision: str = "auto") -> dict:
    """One request as ``promptseg segment`` runs it (read, segment, write the ``.seg.nrrd``), in this process:
    seconds per phase (:data:`PHASES`), the peak RSS at the end of each phase and overall, GB.

    ``model``: a model folder or name; None: :func:`default_model` (random weights). ``precision``: the
    network's (``promptseg segment --precision``)."""
    import torch

    from PromptSegLib.export.segfile import write_seg_nrrd
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.segment.inference import Segmenter

    torch.set_num_threads(threads)
    segmenter = Segmenter(model or default_model(), device="cpu", precision=precision)
    marks = [("start", time.perf_counter(), rss_gb()[1])]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter(), rss_gb()[1]))

    def progress(fraction: float, message: str) -> None:
        if message.startswith("window") and marks[-1][0] == "read":
            mark("resample")  # the volume is prepared: the first window is done (its time counts as resampling)
        elif message.startswith("mapping back"):
            mark("windows")

    image = read_image(image_path)
    mark("read")
    result = segmenter.segment(image, "CT", "abdomen", targets, progress=progress)
    mark("map back")
    with tempfile.TemporaryDirectory() as folder:
        write_seg_nrrd(Path(folder) / "out.seg.nrrd", result)
    mark("write")
    seconds = {name: t - marks[i][1] for i, (name, t, _) in enumerate(marks[1:])}
    peaks = {name: peak for name, _, peak in marks[1:]}
    return {"targets": len(targets), "seconds": seconds, "total": marks[-1][1] - marks[0][1],
            "peak_gb": peaks, "peak_rss_gb": peak_rss_gb()}


def run_in_subprocess(script: str, arguments: list[str]) -> dict:
    """Run ``script`` with ``arguments`` in a fresh Python; its last output line is a JSON object."""
    out = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def interleaved_runs(script: str, kinds: list[str], arguments: list[str], repeats: int) -> dict[str, list[dict]]:
    """Each kind's runs of ``script --case IMAGE:KIND ...`` (``kinds`` as ``IMAGE:KIND`` cases, ``arguments`` added)
    over ``repeats`` rounds, every run in its own process; odd rounds go through the kinds in reverse order, so
    that a machine growing slower or faster over the rounds weighs on every kind alike."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_ in range(repeats):
        for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
            runs[kind].append(run_in_subprocess(script, ["--case", kind, *arguments]))
    return runs


def phase_table(runs: list[dict]) -> str:
    """A Markdown table of :func:`timed_request` results with each run's time and RSS as ratios to the first."""
    lines = ["| targets | " + " | ".join(PHASES) + " | total s | x first | peak RSS GB | x first |",
             "|---" * (len(PHASES) + 5) + "|"]
    first = runs[0]
    for run in runs:
        phases = " | ".join(f"{run['seconds'][p]:.1f}" for p in PHASES)
        lines.append(f"| {run['targets']} | {phases} | {run['total']:.1f} | {run['total'] / first['total']:.2f} | "
                     f"{run['peak_rss_gb']:.2f} | {run['peak_rss_gb'] / first['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def default_model() -> Model:
    """The default architecture with seeded random weights, 96^3 windows at 1.5 mm. Windows do not depend on the
    weights; the masks do, and with them the mapping back and the .seg.nrrd's layers (unseeded, a run's targets
    covered nothing or the whole body and overlapped: 10 targets wrote 10 full layers in 113 s)."""
    import torch

    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig()).eval()
    config = ModelConfig("benchmark", "0", network.config, patch_size=(96, 96, 96), spacing_mm=1.5,
                         targets=TWENTY_TARGETS)
    return Model(config, network)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

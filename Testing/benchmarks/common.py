"""Shared pieces of the benchmarks: a real CT on a fixed grid, the default-size DuPLUS model, one ``promptseg
segment`` request timed phase by phase in its own process (so that its peak RSS is its own), and the text
embeddings of its prompts as a table for a machine without the text encoder (:class:`EmbeddingTable`)."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from threading import Lock

import numpy as np
import SimpleITK as sitk
import torch

from PromptSegLib.errors import PromptError
from PromptSegLib.models.folder import Model, ModelConfig
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocessing.preprocess import resample_to
from PromptSegLib.text.encoder import TextEncoder

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
                  precision: str = "auto", device: str = "cpu", embeddings: str | None = None,
                  warm_up: bool = False) -> dict:
    """One request as ``promptseg segment`` runs it (read, segment, write the ``.seg.nrrd``), in this process:
    seconds per phase (:data:`PHASES`), the peak RSS at the end of each phase and overall, GB, and on a GPU its
    peak memory, GB.

    ``model``: a model folder or name; None: :func:`default_model` (random weights). ``precision``: the
    network's (``promptseg segment --precision``). ``embeddings``: an :class:`EmbeddingTable` file instead of
    the model's text encoder. ``warm_up``: run the same request once, untimed, before (a process that already
    ran one, as Slicer is after its first request: on a GPU the first one also loads its kernels)."""
    from PromptSegLib.export.segfile import write_seg_nrrd
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.segment.inference import Segmenter

    torch.set_num_threads(threads)
    encoder = EmbeddingTable(embeddings) if embeddings else None
    segmenter = Segmenter(model or default_model(), device=device, precision=precision, text_encoder=encoder)
    if warm_up:
        segmenter.segment(read_image(image_path), "CT", "abdomen", targets)
    if segmenter.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(segmenter.device)
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
    gpu = (torch.cuda.max_memory_allocated(segmenter.device) / 1024**3 if segmenter.device.type == "cuda"
           else None)
    return {"targets": len(targets), "seconds": seconds, "total": marks[-1][1] - marks[0][1],
            "peak_gb": peaks, "peak_rss_gb": peak_rss_gb(), "peak_gpu_gb": gpu, "device": str(segmenter.device)}


def run_in_subprocess(script: str, arguments: list[str]) -> dict:
    """Run ``script`` with ``arguments`` in a fresh Python; its last output line is a JSON object."""
    done = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{Path(script).name} {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    """A Markdown table of :func:`timed_request` results with each run's time and RSS as ratios to the first (and
    the peak GPU memory of runs on a GPU)."""
    gpu = any(run.get("peak_gpu_gb") is not None for run in runs)
    lines = ["| targets | " + " | ".join(PHASES) + " | total s | x first | peak RSS GB | x first |"
             + (" peak GPU GB |" if gpu else ""), "|---" * (len(PHASES) + 5 + gpu) + "|"]
    first = runs[0]
    for run in runs:
        phases = " | ".join(f"{run['seconds'][p]:.1f}" for p in PHASES)
        lines.append(f"| {run['targets']} | {phases} | {run['total']:.1f} | {run['total'] / first['total']:.2f} | "
                     f"{run['peak_rss_gb']:.2f} | {run['peak_rss_gb'] / first['peak_rss_gb']:.2f} |"
                     + (f" {run['peak_gpu_gb']:.2f} |" if gpu else ""))
    return "\n".join(lines)


class EmbeddingTable(TextEncoder):
    """A text encoder's embeddings of fixed prompts, computed beforehand (``device_kit.py``) for a machine that
    lacks the encoder (a lent GPU, where nothing can be fetched): the same vectors, looked up; any other prompt is
    refused. The file: a safetensors tensor ``embeddings`` ``(N, D)``, its metadata ``texts`` (JSON, N strings)
    and ``encoder`` (the encoder's id)."""

    def __init__(self, path: str | Path):  # noqa: D107 - no model is loaded: the parent's __init__ is skipped
        from safetensors import safe_open

        with safe_open(str(path), "pt") as table:
            meta, vectors = table.metadata(), table.get_tensor("embeddings")
        self.encoder_id, self.dim, self.lora = meta["encoder"], int(vectors.shape[1]), None
        self._cache = dict(zip(json.loads(meta["texts"]), vectors.float()))
        self._lock = Lock()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings ``(len(texts), D)`` float32 on the CPU, looked up.

        Raises:
            PromptError: a text the table does not hold."""
        missing = [t for t in texts if t not in self._cache]
        if missing:
            raise PromptError(f"the embedding table holds no {missing[0]!r}")
        return torch.stack([self._cache[t] for t in texts])


def write_embedding_table(path: str | Path, encoder: TextEncoder, texts: list[str]) -> None:
    """Write ``encoder``'s embeddings of ``texts`` as an :class:`EmbeddingTable` file."""
    from safetensors.torch import save_file

    save_file({"embeddings": encoder.encode(texts).contiguous()}, str(path),
              metadata={"texts": json.dumps(texts), "encoder": encoder.encoder_id})


def default_model() -> Model:
    """The default architecture with seeded random weights, 96^3 windows at 1.5 mm. Windows do not depend on the
    weights; the masks do, and with them the mapping back and the .seg.nrrd's layers (unseeded, a run's targets
    covered nothing or the whole body and overlapped: 10 targets wrote 10 full layers in 113 s)."""
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig()).eval()
    config = ModelConfig("benchmark", "0", network.config, patch_size=(96, 96, 96), spacing_mm=1.5,
                         targets=TWENTY_TARGETS)
    return Model(config, network)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

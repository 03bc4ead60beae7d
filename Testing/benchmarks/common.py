"""Shared pieces of the benchmarks: a real CT on a fixed grid and the default-size DuPLUS model."""
from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.model_io import Model, ModelConfig
from PromptSegLib.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocess import resample_to

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_CT = SHARED / "totalsegmentator_example" / "ct_3mm" / "example_ct.nii.gz"
TEN_TARGETS = ["liver", "spleen", "left kidney", "right kidney", "stomach", "aorta", "pancreas", "gallbladder",
               "vertebral column", "left lung"]


def real_ct_on_grid(size: tuple[int, int, int], spacing_mm: float) -> sitk.Image:
    """The TotalSegmentator example CT (real, abdomen) resampled onto a centred grid of ``size`` voxels (x, y, z)."""
    ct = sitk.ReadImage(str(REAL_CT))
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ct.GetSize()]))
    grid = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetOrigin((centre - (np.array(size) - 1) / 2 * spacing_mm).tolist())
    return sitk.Cast(resample_to(ct, grid, sitk.sitkLinear, -1024.0), sitk.sitkInt16)


def default_model() -> Model:
    """The default architecture (random weights: timing does not depend on them), 96^3 windows at 1.5 mm."""
    network = DuPLUSNet(NetworkConfig()).eval()
    config = ModelConfig("benchmark", "0", network.config, patch_size=(96, 96, 96), spacing_mm=1.5,
                         targets=TEN_TARGETS)
    return Model(config, network)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

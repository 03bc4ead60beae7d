"""Shared fixtures: real images shipped in PyPI packages and in ../shared/data, and a tiny model built here.

The tiny model is randomly initialised: tests use it for mechanics (shapes, geometry, prompts changing the
output, errors), never to claim that anything is segmented.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptSegLib.models.folder import ModelConfig, save_model
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig

REPO = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)  # the CI machine has 2 cores; keep one free and timings steady
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # Started in the background by a non-interactive shell, the suite inherits an ignored SIGINT, and so would the
    # commands its tests interrupt as a terminal's Ctrl-C does; give them the normal KeyboardInterrupt back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
SHARED = Path(os.environ.get("PROMPTSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
"""The project's real data (``../shared/data``; ``$PROMPTSEG_SHARED_DATA`` elsewhere, e.g. to check that the
suite skips cleanly without it)."""


def needs_shared(*parts: str) -> pytest.MarkDecorator:
    """The one marker for tests that read ``../shared/data/<parts>``: skipped, saying what is missing, where
    it is absent (a checkout without the data), instead of failing with a file error."""
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"needs {path}: ../shared/data (see its MANIFEST.md) is absent")


@pytest.fixture(scope="session")
def chest_ct_path() -> Path:
    """Real chest CT, 128x128x34 voxels, 3.05x3.05x10 mm, HU, from the slicerio package."""
    import slicerio

    return Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"


@pytest.fixture(scope="session")
def chest_segmentation(chest_ct_path):
    """slicerio's segmentation of that CT: lungs, ribs, vertebrae, tissue (IJK-indexed voxels)."""
    import slicerio

    return slicerio.read_segmentation(str(chest_ct_path.parent / "Segmentation.seg.nrrd"))


@pytest.fixture(scope="session")
def chest_ct(chest_ct_path) -> sitk.Image:
    return sitk.ReadImage(str(chest_ct_path))


def zip_model(folder: Path, archive: Path) -> Path:
    """A ``.zip`` of a model folder (its files under ``tiny/``), as a hospital or a site's server hands it out."""
    import zipfile

    with zipfile.ZipFile(archive, "w") as handle:
        for file in folder.iterdir():
            handle.write(file, f"tiny/{file.name}")
    return archive


def segment_mask(segmentation, name: str) -> np.ndarray:
    """A named segment of a slicerio segmentation as a ``(Z, Y, X)`` boolean mask."""
    segment = next(s for s in segmentation["segments"] if s["name"] == name)
    voxels = segmentation["voxels"]
    voxels = voxels[segment["layer"]] if voxels.ndim == 4 else voxels
    return (voxels == segment["labelValue"]).transpose(2, 1, 0)


@pytest.fixture(scope="session")
def mni_t1_path() -> Path:
    """Real MNI152 T1 template (nilearn)."""
    from nilearn.datasets import MNI152_FILE_PATH

    return Path(MNI152_FILE_PATH)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    """A randomly initialised 2-level model folder (CT and MR inputs), saved with its checksums."""
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig(modalities=("CT", "MR"), widths=(4, 8), film_hidden=16, pred_hidden=32))
    config = ModelConfig("tiny-untrained", "0", network.config, patch_size=(32, 32, 32), spacing_mm=6.0,
                         targets=["left lung", "right lung", "liver", "spleen", "aorta", "stomach", "heart",
                                  "left kidney", "right kidney", "trachea", "white matter", "grey matter"],
                         regions={"CT": ["thorax"], "MR": ["brain"]})
    return save_model(tmp_path_factory.mktemp("models") / "tiny", network, config, "# tiny untrained test model\n")


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_model_folder):
    from PromptSegLib.segment.inference import Segmenter

    return Segmenter(tiny_model_folder, device="cpu")


@pytest.fixture(scope="module")
def logic():
    """The module's logic on slicer-core, one instance per test module: its loaded model is reused."""
    import slicer_shim

    slicer_shim.setup()
    from PromptSegSlicer import PromptSegLogic

    return PromptSegLogic()


@pytest.fixture
def scene():
    """A fresh MRML scene of slicer-core, behind the ``slicer`` module shim; cleared after the test."""
    import slicer_shim

    scene = slicer_shim.setup()
    yield scene
    slicer_shim.teardown()

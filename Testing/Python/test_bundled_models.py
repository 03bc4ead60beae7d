"""The bundled models on real data they were never trained on. Floors sit below the values the model cards
report, so the tests catch a broken model or pipeline rather than run-to-run noise."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PromptSegLib.catalogue import catalogue_entry, load_catalogue
from PromptSegLib.inference import Segmenter
from PromptSegLib.metrics import dice
from PromptSegLib.model_io import BUNDLED_MODELS

from conftest import SHARED, segment_mask

HELD_OUT = [f"STS_{i:03d}" for i in range(25, 31)]  # the GTV model's validation patients


@pytest.fixture(scope="module")
def gtv_model():
    return Segmenter("promptseg-sts-gtv", device="cpu")


@pytest.mark.parametrize("modality, prefix, floor", [("CT", "CT", 0.5), ("PET", "PET", 0.5)])
def test_gtv_on_held_out_patients(gtv_model, modality, prefix, floor):
    scores = []
    for case in HELD_OUT:
        folder = SHARED / "sts_pet_ct_mr" / "nifti" / case
        image = sitk.ReadImage(str(folder / f"{prefix}_image.nii.gz"))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{prefix}_mask.nii.gz"))) > 0
        result = gtv_model.segment(image, modality, "extremity", ["GTV"])
        scores.append(dice(result.mask(0), truth))
    assert np.mean(scores) >= floor, scores  # cards: CT 0.585, PET 0.621


def test_starter_finds_the_spine_on_the_unseen_chest_ct_and_switches_targets(chest_ct, chest_segmentation):
    model = Segmenter(None, device="cpu")  # the default model
    assert model.model.config.name == "promptseg-starter"
    truth = (segment_mask(chest_segmentation, "thoracic vertebral column")
             | segment_mask(chest_segmentation, "lumbar vertebral column")
             | segment_mask(chest_segmentation, "cervical vertebral column"))
    result = model.segment(chest_ct, "CT", "thorax", ["vertebral column", "liver"])
    assert dice(result.mask(0), truth) >= 0.25  # card: 0.333
    assert dice(result.mask(0), result.mask(1)) < 0.2  # another target prompt, another mask


def test_catalogue_matches_the_bundled_folders():
    entries = {e["name"]: e for e in load_catalogue()}
    assert set(entries) == {"promptseg-starter", "promptseg-sts-gtv"}
    for name, entry in entries.items():
        assert catalogue_entry(BUNDLED_MODELS / entry["folder"]) == entry, f"{name}: run promptseg models --update"


PARAPHRASES = ["A CT image of the liver", "The liver in a CT scan", "Segment the liver on CT",
               "A computed tomography of the hepatic", "liver"]


def test_starter_paraphrases_give_the_same_segment_and_other_targets_do_not():
    """On the starter model's own training CT (the only anatomy it knows): prompt control, not generalisation."""
    folder = SHARED / "totalsegmentator_example" / "ct_3mm"
    image = sitk.ReadImage(str(folder / "example_ct.nii.gz"))
    liver_truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))) == 5
    texts = ["A computed tomography of the liver", *PARAPHRASES, "A computed tomography of the spleen",
             "A computed tomography of the"]
    result = Segmenter(None, device="cpu").segment(image, "CT", "abdomen", target_texts=texts)
    reference = result.mask(0)
    assert dice(reference, liver_truth) > 0.9
    for i, text in enumerate(PARAPHRASES, start=1):
        assert dice(result.mask(i), reference) >= 0.95, text
    assert dice(result.mask(len(texts) - 2), reference) < 0.05  # the spleen is not the liver
    assert result.mask(len(texts) - 1).sum() < 0.1 * reference.sum()  # an empty target gives (almost) nothing

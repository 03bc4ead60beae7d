"""The OpenKBP importer on real patients: the converted validation files in ../shared/data give the voxels and
geometry the importer must reproduce from the sparse-CSV format (written back here, as upstream stores it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptSegLib.text.vocabulary import default_vocabulary
from PromptSegLib.train import openkbp
from PromptSegLib.train.datasets import load_case, load_spec
from PromptSegLib.train.loss import dice_bce_loss

from conftest import REPO, SHARED, needs_shared

VALIDATION = SHARED / "openkbp_hn_ct" / "validation"
CHECKOUT = REPO.parent / "open-kbp" / "provided-data"
needs_data = needs_shared("openkbp_hn_ct", "validation")


def write_sparse_patient(converted: Path, folder: Path) -> Path:
    """Write a converted patient (``ct.nii.gz``, ``oars.nii.gz``) back in OpenKBP's sparse-CSV format."""
    folder.mkdir(parents=True)
    ct = sitk.ReadImage(str(converted / "ct.nii.gz"))
    oars = sitk.GetArrayFromImage(sitk.ReadImage(str(converted / "oars.nii.gz")))

    def upstream(array: np.ndarray) -> np.ndarray:  # [S-I, A-P, R-L] -> upstream (A-P, R-L, S-I), flat C order
        return np.transpose(array, (1, 2, 0)).ravel()

    hu = upstream(sitk.GetArrayFromImage(ct).astype(np.int32) + openkbp.HU_OFFSET)
    stored = np.flatnonzero(hu)
    np.savetxt(folder / "ct.csv", np.column_stack([stored, hu[stored]]), fmt="%d", delimiter=",",
               header=",data", comments="")
    for value, name in enumerate(openkbp.STRUCTURES, start=1):
        inside = np.flatnonzero(upstream(oars) == value)
        if inside.size:
            (folder / f"{name}.csv").write_text(",data\n" + "".join(f"{i},\n" for i in inside), encoding="utf-8")
    np.savetxt(folder / "voxel_dimensions.csv", np.array(ct.GetSpacing()))
    return folder


@needs_data
@pytest.mark.parametrize("patient", ["pt_201", "pt_230"])
def test_sparse_csv_patient_reads_as_the_converted_files(patient, tmp_path):
    folder = write_sparse_patient(VALIDATION / patient, tmp_path / patient)
    for image, reference in ((openkbp.read_ct(folder), VALIDATION / patient / "ct.nii.gz"),
                             (openkbp.read_structures(folder), VALIDATION / patient / "oars.nii.gz")):
        expected = sitk.ReadImage(str(reference))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-4)
        assert image.GetOrigin() == expected.GetOrigin() and image.GetDirection() == expected.GetDirection()


@needs_data
def test_left_parotid_lies_on_the_patients_left_and_the_cord_below_the_brainstem(tmp_path):
    folder = write_sparse_patient(VALIDATION / "pt_201", tmp_path / "pt_201")
    label = openkbp.read_structures(folder)
    array = sitk.GetArrayFromImage(label)

    def centre(value: int) -> np.ndarray:  # physical LPS mm
        index = np.argwhere(array == value).mean(axis=0)[::-1]
        return np.array(label.TransformContinuousIndexToPhysicalPoint(index.tolist()))

    assert centre(4)[0] > centre(3)[0]  # LPS x grows to the patient's left
    assert centre(2)[2] < centre(1)[2]  # z grows superiorly
    assert centre(7)[1] < centre(1)[1]  # y grows posteriorly: mandible in front of the brainstem


@needs_shared()
@pytest.mark.skipif(not (CHECKOUT / "validation-pats" / "pt_201" / "ct.csv").is_file(),
                    reason="no checkout of the open-kbp repository beside the project")
def test_upstream_files_read_as_the_converted_files():
    folder = CHECKOUT / "validation-pats" / "pt_201"
    for image, name in ((openkbp.read_ct(folder), "ct.nii.gz"), (openkbp.read_structures(folder), "oars.nii.gz")):
        expected = sitk.ReadImage(str(VALIDATION / "pt_201" / name))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


@needs_data
def test_openkbp_layout_in_a_spec_splits_and_marks_organs_not_delineated(tmp_path):
    summary = json.loads((VALIDATION / "summary.json").read_text())
    partial = next(p for p, s in summary.items() if "Larynx" not in s["voxels"])  # larynx not contoured there
    for patient in ("pt_201", "pt_230", partial):
        write_sparse_patient(VALIDATION / patient, tmp_path / "pats" / patient)
    (tmp_path / "pats" / "pt_999").mkdir()  # a patient whose ct.csv the snapshot lacks: skipped
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": [{"name": "kbp", "layout": "openkbp", "folder": "pats",
                                              "val": ["pt_230"], "test": [partial]}]}))
    (dataset,) = load_spec(spec)
    assert dataset.modality == "CT" and dataset.regions == ["head and neck"]
    assert dataset.values_of("left parotid") == [4] and dataset.values_of("mandible") == [7]
    splits = {c.id: c.split for c in dataset.cases}
    assert splits == {"pt_201": "train", "pt_230": "val", partial: "test"}
    case = next(c for c in dataset.cases if c.id == partial)
    assert "larynx" in case.unlabelled
    loaded = load_case(dataset, case)
    assert loaded.image.GetSize() == (128, 128, 128) and not (sitk.GetArrayFromImage(loaded.label) == 6).any()


def test_unknown_truth_adds_nothing_to_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    truth = (torch.rand(2, 3, 8, 8, 8) > 0.7).float()
    known = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    dice_bce_loss(logits, truth, known).backward()
    assert logits.grad[0, 1].abs().max() == 0 and logits.grad[0, 0].abs().max() > 0
    truth_changed = truth.clone()
    truth_changed[0, 1] = 1 - truth_changed[0, 1]
    assert torch.isclose(dice_bce_loss(logits, truth, known), dice_bce_loss(logits, truth_changed, known))
    assert torch.isclose(dice_bce_loss(logits, truth), dice_bce_loss(logits, truth, torch.ones(2, 3)))


@pytest.mark.parametrize("tg263, name, code", [
    ("Brainstem", "brain stem", "119238007"), ("SpinalCord", "spinal cord", "2748008"),
    ("Parotid_L", "left parotid", "45289007"), ("Parotid_R", "right parotid", "45289007"),
    ("Esophagus", "esophagus", "32849002"), ("Larynx", "larynx", "4596009"), ("Bone_Mandible", "mandible", "91609006")])
def test_head_and_neck_organs_by_their_tg263_names(tg263, name, code):
    target = default_vocabulary().target(tg263)
    assert target.name == name and target.tg263 == tg263 and target.type[1] == code
    assert target.interpreted_type == "ORGAN" and "head and neck" in target.regions
    modifier = {"left parotid": "7771000", "right parotid": "24028007"}.get(name)
    assert (target.modifier[1] if target.modifier else None) == modifier

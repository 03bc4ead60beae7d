"""SUV body weight from the real DICOM PET of STS_002, PET-to-CT resampling, late fusion and aggregated Dice,
and ``promptseg evaluate --fuse`` with the bundled GTV model on a held-out patient's CT and PET.

The STS_002 DICOM PET was exported in SUV (Units GML) by MIRP; the BQML paths (decay correction ADMIN and
START) are tested by writing the same series back as activity concentration with the real header's dose,
weight and half-life, then converting it again: the result must match the SUV NIfTI of the same patient.
"""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PromptSegLib.metrics import dice
from PromptSegLib.preprocessing.pet import (NoOverlapError, PETConversionError, read_pet_suv, resample_pet_to_ct,
                                            suv_scale_factor)
from PromptSegLib.preprocessing.preprocess import resample_to
from PromptSegLib.segment.fusion import FusionError, aggregated_dice, fuse, fuse_masks

from conftest import SHARED, needs_shared

STS = SHARED / "sts_pet_ct_mr"
PET_DICOM = STS / "dicom_example" / "STS_002" / "PET" / "image"
NIFTI = STS / "nifti"


@pytest.fixture(scope="module")
def suv_nifti():
    return sitk.ReadImage(str(NIFTI / "STS_002" / "PET_image.nii.gz"))


@pytest.fixture(scope="module")
def summary():
    return {c["pid"]: c for c in json.loads((STS / "per_case_summary.json").read_text())}


def _header():
    return pydicom.dcmread(sorted(PET_DICOM.glob("*.dcm"))[0])


@needs_shared()
def test_real_dicom_pet_matches_suv_nifti(suv_nifti, summary):
    suv, info = read_pet_suv(PET_DICOM)
    assert info.units == "GML" and info.scale_factor == 1.0
    assert suv.GetSize() == suv_nifti.GetSize()
    assert np.allclose(suv.GetOrigin(), suv_nifti.GetOrigin(), atol=1e-3)
    assert np.allclose(suv.GetSpacing(), suv_nifti.GetSpacing(), atol=1e-5)
    a, b = sitk.GetArrayFromImage(suv), sitk.GetArrayFromImage(suv_nifti)
    assert np.abs(a - b).max() < 1e-4 * b.max()
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(NIFTI / "STS_002" / "PET_mask.nii.gz"))) > 0
    assert a[mask].max() == pytest.approx(summary["STS_002"]["SUVmax"], abs=0.01)
    assert a[mask].mean() == pytest.approx(summary["STS_002"]["SUVmean"], abs=0.01)


@needs_shared()
def test_slopes_differ_per_slice():
    slopes = {float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in PET_DICOM.glob("*.dcm")}
    assert len(slopes) > 10  # the per-slice rescale matters on this series


def _write_bqml(folder, decay: str, start: str | None):
    """The real series rewritten as Bq/ml: slope * (decayed dose / weight); returns the expected decay time."""
    folder.mkdir()
    for path in sorted(PET_DICOM.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        info = ds.RadiopharmaceuticalInformationSequence[0]
        dose, half_life = float(info.RadionuclideTotalDose), float(info.RadionuclideHalfLife)
        ds.Units, ds.DecayCorrection = "BQML", decay
        decay_s = 0.0
        if decay == "START":
            info.RadiopharmaceuticalStartDateTime = start
            decay_s = 3600.0  # series time 14:57:59, start 13:57:59 the same day
        decayed = dose * 2 ** (-decay_s / half_life)
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * decayed / (float(ds.PatientWeight) * 1000):.10e}"[:16]
        ds.save_as(folder / path.name)
    return decay_s


@needs_shared()
@pytest.mark.parametrize("decay", ["ADMIN", "START"])
def test_bqml_conversion_recovers_suv(tmp_path, suv_nifti, decay):
    expected_decay = _write_bqml(tmp_path / "pet", decay, "20060128135759")
    suv, info = read_pet_suv(tmp_path / "pet")
    assert info.units == "BQML" and info.decay_correction == decay and info.weight_kg == 99.0
    if decay == "START":
        assert info.decay_time_s == pytest.approx(expected_decay)
        assert info.decayed_dose_bq < info.injected_dose_bq
    a, b = sitk.GetArrayFromImage(suv), sitk.GetArrayFromImage(suv_nifti)
    assert np.abs(a - b).max() < 1e-4 * b.max()


@needs_shared()
def test_start_time_of_day_used_when_dates_shifted():
    ds = _header()  # de-identified: start DateTime is 2006-01-29, the series 2006-01-28
    ds.Units, ds.DecayCorrection = "BQML", "START"
    info = suv_scale_factor(ds)
    assert info.decay_time_s == pytest.approx(14 * 3600 + 57 * 60 + 59 - (13 * 3600 + 51 * 60))
    assert any("time of day" in note for note in info.notes)


@needs_shared()
@pytest.mark.parametrize("edit, words", [
    (lambda ds: delattr(ds, "PatientWeight"), "PatientWeight"),
    (lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose"), "RadionuclideTotalDose"),
    (lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideHalfLife"), "RadionuclideHalfLife"),
    (lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"), "RadiopharmaceuticalInformationSequence"),
    (lambda ds: delattr(ds, "DecayCorrection"), "DecayCorrection"),
    (lambda ds: setattr(ds, "DecayCorrection", "NONE"), "DecayCorrection"),
    (lambda ds: setattr(ds, "CorrectedImage", ["ATTN", "SCAT"]), "DECY"),
    (lambda ds: setattr(ds, "PatientWeight", "0"), "positive"),
    (lambda ds: (setattr(ds, "DecayCorrection", "START"),
                 delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartDateTime"),
                 delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartTime")), "injection"),
    (lambda ds: setattr(ds, "Units", "CNTS"), "7053,1000"),
    (lambda ds: setattr(ds, "Units", "PROPCPS"), "PROPCPS"),
    (lambda ds: setattr(ds, "Modality", "CT"), "expected PT"),
])
def test_missing_or_invalid_tags_refused(edit, words):
    ds = _header()
    ds.Units = "BQML"
    edit(ds)
    with pytest.raises(PETConversionError, match="cannot compute SUV") as err:
        suv_scale_factor(ds)
    assert words in str(err.value) and "\n" not in str(err.value)


@needs_shared()
def test_series_without_weight_refused(tmp_path):
    (tmp_path / "pet").mkdir()
    for path in sorted(PET_DICOM.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.Units = "BQML"
        del ds.PatientWeight
        ds.save_as(tmp_path / "pet" / path.name)
    with pytest.raises(PETConversionError, match="PatientWeight"):
        read_pet_suv(tmp_path / "pet")


@needs_shared()
def test_resample_pet_to_ct_and_overlap(suv_nifti):
    ct = sitk.ReadImage(str(NIFTI / "STS_002" / "CT_image.nii.gz"))
    pet_on_ct, report = resample_pet_to_ct(suv_nifti, ct)
    assert pet_on_ct.GetSize() == ct.GetSize() and report["ct_covered"] > 0.99
    assert "covers" in report["message"]
    ct_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(NIFTI / "STS_002" / "CT_mask.nii.gz"))) > 0
    assert sitk.GetArrayFromImage(pet_on_ct)[ct_mask].mean() > 3.0  # the tumour is FDG-avid on the CT grid too

    half = sitk.Image(suv_nifti)
    extent = np.array(ct.GetSpacing()) * np.array(ct.GetSize())
    half.SetOrigin(tuple(np.array(ct.GetOrigin()) + [extent[0] / 2, 0, 0]))
    _, partial = resample_pet_to_ct(half, ct)
    assert 0.3 < partial["ct_covered"] < 0.7
    with pytest.raises(NoOverlapError, match="covers only"):
        resample_pet_to_ct(half, ct, min_overlap=0.8)

    far = sitk.Image(suv_nifti)
    far.SetOrigin(tuple(np.array(ct.GetOrigin()) + [0, 0, 1000.0]))
    with pytest.raises(NoOverlapError, match="do not overlap"):
        resample_pet_to_ct(far, ct)


# ---------------------------------------------------------------- fusion on real masks (CT and PET GTVs)

def _masks_on_ct(pid: str):
    ct_mask = sitk.ReadImage(str(NIFTI / pid / "CT_mask.nii.gz"))
    pet_mask = resample_to(sitk.ReadImage(str(NIFTI / pid / "PET_mask.nii.gz")), ct_mask, sitk.sitkNearestNeighbor,
                           0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(ct_mask) > 0, sitk.GetArrayFromImage(pet_mask) > 0


@pytest.fixture(scope="module")
def real_masks():
    return {pid: _masks_on_ct(pid) for pid in ("STS_002", "STS_003")}


@needs_shared()
def test_fusion_arithmetic_on_real_masks(real_masks):
    ct, pet = real_masks["STS_002"]
    assert ct.sum() > 1000 and pet.sum() > 1000 and (ct ^ pet).sum() > 0
    a, b = ct[None].astype(np.float32), pet[None].astype(np.float32)
    mean = fuse([a, b])
    assert set(np.unique(mean)) <= {0.0, 0.5, 1.0}
    assert np.array_equal(fuse_masks([a, b])[0], ct & pet)           # mean > 0.5: both agree
    assert np.array_equal(fuse_masks([a, b], threshold=0.4)[0], ct | pet)
    assert np.array_equal(fuse_masks([a, b], weights=[0.4, 0.6])[0], pet)  # the heavier model decides
    assert np.array_equal(fuse_masks([a, b], "max")[0], ct | pet)
    assert np.array_equal(fuse_masks([a, b], "majority")[0], ct & pet)
    assert np.array_equal(fuse_masks([a, b, b], "majority")[0], pet)

    from scipy.ndimage import gaussian_filter
    soft_a, soft_b = gaussian_filter(a, 1.0), gaussian_filter(b, 2.0)
    fused = fuse([soft_a, soft_b], weights=[1, 3])
    assert np.allclose(fused, 0.25 * soft_a + 0.75 * soft_b, atol=1e-6)
    assert np.allclose(fuse([soft_a, soft_b], "max"), np.maximum(soft_a, soft_b))


@needs_shared()
def test_aggregated_dice_arithmetic(real_masks):
    preds = [real_masks[p][1] for p in real_masks]  # PET GTV as the "prediction" of the CT GTV
    truths = [real_masks[p][0] for p in real_masks]
    inter = sum(int((p & t).sum()) for p, t in zip(preds, truths))
    total = sum(int(p.sum() + t.sum()) for p, t in zip(preds, truths))
    agg = aggregated_dice(preds, truths)
    assert agg == pytest.approx(2 * inter / total)
    per_case = [dice(p, t) for p, t in zip(preds, truths)]
    assert 0.3 < agg < 1.0 and min(per_case) <= agg <= max(per_case)
    assert aggregated_dice(preds[:1], truths[:1]) == pytest.approx(per_case[0])
    # an empty case adds to the denominator only through its truth: aggregated Dice penalises it by size
    empty = np.zeros_like(truths[0])
    assert aggregated_dice(preds + [empty], truths + [truths[0]]) < agg
    assert np.isnan(aggregated_dice([empty], [empty]))


def test_fusion_bad_inputs():
    a = np.zeros((1, 4, 4, 4), np.float32)
    with pytest.raises(FusionError, match="different shapes"):
        fuse([a, np.zeros((1, 4, 4, 5), np.float32)])
    with pytest.raises(FusionError, match="outside"):
        fuse([a, a + 2])
    with pytest.raises(FusionError, match="weights"):
        fuse([a, a], weights=[1])
    with pytest.raises(FusionError, match="not all zero"):
        fuse([a, a], weights=[0, 0])
    with pytest.raises(FusionError, match="unknown fusion method"):
        fuse([a, a], "median")
    with pytest.raises(FusionError, match=r"\(T, Z, Y, X\)"):
        fuse([a[0], a[0]])
    with pytest.raises(FusionError, match="shape"):
        aggregated_dice([a], [a[0]])



# ------------------------------------------- promptseg evaluate --fuse on a held-out patient (bundled model)

def _fusion_spec(tmp_path, ct_id: str = "STS_026", pet_id: str = "STS_026", pet_folder=None) -> str:
    """A spec with the CT and the PET of one held-out patient of promptseg-sts-gtv as two datasets."""
    def dataset(name, modality, prefix, case_id, folder):
        return {"name": name, "modality": modality, "regions": ["extremity"], "labels": {"1": "GTV"},
                "cases": [{"id": case_id, "split": "val", "image": str(folder / f"{prefix}_image.nii.gz"),
                           "label": str(folder / f"{prefix}_mask.nii.gz")}]}

    spec = {"datasets": [dataset("sts_ct", "CT", "CT", ct_id, NIFTI / "STS_026"),
                         dataset("sts_pet", "PET", "PET", pet_id, pet_folder or NIFTI / "STS_026")]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


@needs_shared()
def test_evaluate_fuse_reports_alone_fused_and_aggregated_dice(tmp_path, capsys):
    import csv

    from PromptSegLib.cli.main import main
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.segment.probability import LEVELS, quantize

    output = tmp_path / "fusion.csv"
    assert main(["evaluate", _fusion_spec(tmp_path), "--model", "promptseg-sts-gtv", "--fuse", "sts_ct", "sts_pet",
                 "-o", str(output), "--device", "cpu", "--threads", "1"]) == 0
    with open(output, newline="") as handle:
        rows = {(r["case"], r["input"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {(case, source) for case in ("STS_026", "aggregated") for source in ("sts_ct", "sts_pet", "fused")}
    table = (tmp_path / "fusion.md").read_text()
    assert "| gross tumor volume | aggregated |" in table and table in capsys.readouterr().out

    # The same by hand: both images segmented, the PET probabilities on the CT grid, their mean > 0.5
    segmenter = Segmenter("promptseg-sts-gtv", device="cpu")
    ct = sitk.ReadImage(str(NIFTI / "STS_026" / "CT_image.nii.gz"))
    pet = sitk.ReadImage(str(NIFTI / "STS_026" / "PET_image.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(NIFTI / "STS_026" / "CT_mask.nii.gz"))) > 0
    ct_probability = segmenter.segment(ct, "CT", "extremity", ["GTV"]).probabilities
    pet_probability = sitk.GetImageFromArray(segmenter.segment(pet, "PET", "extremity", ["GTV"]).probabilities[0])
    pet_probability.CopyInformation(pet)
    # a result holds probabilities in steps of 1/255, the PET's on the CT grid too
    pet_on_ct = LEVELS[quantize(sitk.GetArrayFromImage(resample_pet_to_ct(pet_probability, ct)[0]))][None]
    fused = fuse([ct_probability, pet_on_ct])[0] > 0.5
    expected = {"sts_ct": dice(ct_probability[0] >= 0.5, truth), "sts_pet": dice(pet_on_ct[0] >= 0.5, truth),
                "fused": dice(fused, truth)}
    for source, value in expected.items():
        assert float(rows["STS_026", source]["dice"]) == pytest.approx(value, abs=1e-9)
        assert float(rows["aggregated", source]["dice"]) == pytest.approx(value, abs=1e-9)  # one case
    assert int(rows["STS_026", "fused"]["predicted_voxels"]) == fused.sum()
    assert int(rows["STS_026", "fused"]["truth_voxels"]) == truth.sum()
    # the model card's figures for this patient: CT 0.613, PET 0.625, fused 0.766
    assert expected["fused"] > max(expected["sts_ct"], expected["sts_pet"]) and expected["fused"] > 0.7


@needs_shared()
def test_evaluate_fuse_refuses_unpaired_cases_non_overlapping_grids_and_bad_weights(tmp_path, capsys):
    from PromptSegLib.cli.main import main

    def evaluate(spec, *extra):
        code = main(["evaluate", spec, "--model", "promptseg-sts-gtv", "--fuse", "sts_ct", "sts_pet", "-o",
                     str(tmp_path / "out.csv"), "--device", "cpu", "--threads", "1", *extra])
        return code, capsys.readouterr().err

    code, error = evaluate(_fusion_spec(tmp_path, pet_id="STS_025"))
    assert code == 2 and "STS_026 of dataset sts_ct" in error and "no case of the same id in dataset sts_pet" in error

    far = tmp_path / "far"
    far.mkdir()
    for name in ("PET_image.nii.gz", "PET_mask.nii.gz"):
        image = sitk.ReadImage(str(NIFTI / "STS_026" / name))
        image.SetOrigin(tuple(np.array(image.GetOrigin()) + [0.0, 0.0, 1000.0]))
        sitk.WriteImage(image, str(far / name))
    code, error = evaluate(_fusion_spec(tmp_path, pet_folder=far))
    assert code == 2 and "do not overlap" in error

    code, error = evaluate(_fusion_spec(tmp_path), "--fusion", "max", "--weights", "1", "2")
    assert code == 2 and "weighted_mean only" in error
    assert main(["evaluate", _fusion_spec(tmp_path), "--fuse", "sts_ct", "sts_mr", "-o", str(tmp_path / "out.csv")]) == 2
    assert "no dataset named sts_mr" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


@needs_shared()
def test_segment_petct_fuses_ct_and_pet_of_a_held_out_patient(tmp_path, capsys):
    """``promptseg segment-petct`` (the library's PET/CT use case, which the Slicer module also calls) on STS_026,
    which the GTV model never trained on: the fused GTV beats the card's CT and PET figures for that patient
    (0.61 / 0.63; measured fused 0.765). A model without a PET block is refused before anything is written."""
    import slicerio

    from PromptSegLib.cli.main import main

    from conftest import segment_mask

    patient = NIFTI / "STS_026"
    output = tmp_path / "fused.seg.nrrd"
    code = main(["segment-petct", str(patient / "CT_image.nii.gz"), str(patient / "PET_image.nii.gz"),
                 "--target", "gross tumor volume", "-o", str(output), "--threads", "2", "-q"])
    assert code == 0 and f"wrote {output}" in capsys.readouterr().out
    fused = segment_mask(slicerio.read_segmentation(str(output)), "gross tumor volume")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(patient / "CT_mask.nii.gz"))) > 0
    assert dice(fused, truth) >= 0.70
    refused = tmp_path / "refused.seg.nrrd"
    code = main(["segment-petct", str(patient / "CT_image.nii.gz"), str(patient / "PET_image.nii.gz"),
                 "--model", "promptseg-hn-oars", "-o", str(refused), "-q"])
    assert code == 2 and "no PET block" in capsys.readouterr().err and not refused.exists()

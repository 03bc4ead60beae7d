"""PET/CT tumour segmentation (late fusion of the CT- and PET-tuned models), PET units and prognosis through the
module logic on slicer-core, with the bundled promptseg-sts-gtv and prognosis models on a real held-out patient."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, a test requirement: a missing install must fail, not skip

import slicer_shim
from conftest import SHARED, needs_shared
from slicer_shim import segment_array, segment_names, tag

STS = SHARED / "sts_pet_ct_mr"
STS_026 = STS / "nifti" / "STS_026"  # a held-out patient of the bundled promptseg-sts-gtv model


@needs_shared()
def test_pet_ct_fused_segment_on_the_ct_geometry_with_terminology(scene, logic):
    from PromptSegLib.metrics import dice
    from PromptSegLib.segment.fusion import fuse, segment_pair
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.text.vocabulary import default_vocabulary

    ct = slicer_shim.load_volume(STS_026 / "CT_image.nii.gz", "CT")
    pet = slicer_shim.load_volume(STS_026 / "PET_image.nii.gz", "PET")
    assert logic.petCtTargets() == ["gross tumor volume"]

    node, overlap = logic.segmentPetCt(ct, pet, device="cpu", threads=1)

    assert segment_names(node) == ["gross tumor volume"] and overlap["ct_covered"] > 0.99
    segment = node.GetSegmentation().GetSegment(node.GetSegmentation().GetSegmentIdBySegmentName("gross tumor volume"))
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.modules.terminologies.logic().DeserializeTerminologyEntry(
        tag(segment, segment.GetTerminologyEntryTagName()), entry)
    assert entry.GetTypeObject().GetCodeValue() == default_vocabulary().target("GTV").type[1]
    assert tag(segment, "PromptSeg.Context") == ("A computed tomography of the extremity | A positron emission "
                                                 "tomography of the extremity")
    # Geometry: the CT's, exactly
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is ct
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(
        slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(ct))
    assert node.GetSegmentation().GetConversionParameter(name) == expected
    mask = segment_array(node, "gross tumor volume", ct)
    assert mask.shape == slicer.util.arrayFromVolume(ct).shape
    # Voxels: PromptSegLib's late fusion of the same files, and the model card's Dice for this patient (0.766)
    ct_image, pet_image = (sitk.ReadImage(str(STS_026 / f"{m}_image.nii.gz")) for m in ("CT", "PET"))
    first, second, _ = segment_pair(Segmenter("promptseg-sts-gtv", device="cpu"), ct_image, pet_image, ("CT", "PET"),
                                    ("extremity", "extremity"), ["gross tumor volume"])
    np.testing.assert_array_equal(mask, fuse([first.probabilities, second.probabilities])[0] >= 0.5)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(STS_026 / "CT_mask.nii.gz"))) > 0
    assert dice(mask, truth) > 0.7


@needs_shared()
def test_pet_ct_runs_off_the_main_thread_and_a_cancel_writes_nothing(scene, logic):
    from PromptSegLib.errors import Cancelled

    ct = slicer_shim.load_volume(STS_026 / "CT_image.nii.gz", "CT")
    pet = slicer_shim.load_volume(STS_026 / "PET_image.nii.gz", "PET")
    count = scene.GetNumberOfNodes()
    seen = []
    job = logic.startPetCt(ct, pet, device="cpu", threads=1, onProgress=lambda f, m: seen.append(m))
    job.cancel()
    job.cancel()  # pressed twice
    with pytest.raises(Cancelled):
        logic.finishPetCt(job, timeout=120)
    assert scene.GetNumberOfNodes() == count and job.message == "cancelled"
    job = logic.startPetCt(ct, pet, device="cpu", threads=1, onProgress=lambda f, m: seen.append(m))
    node, overlap = logic.finishPetCt(job, timeout=300)
    assert segment_names(node) == ["gross tumor volume"] and "done in" in job.message
    assert any(m.startswith("PET: window") for m in seen)  # progress came from the worker, both images


@needs_shared()
def test_pet_ct_refuses_non_overlapping_pet_activity_and_targets_the_model_lacks(scene, logic):
    from PromptSegSlicer import InputError

    from PromptSegLib.preprocessing.pet import NoOverlapError

    ct = slicer_shim.load_volume(STS_026 / "CT_image.nii.gz", "CT")
    pet = slicer_shim.load_volume(STS_026 / "PET_image.nii.gz", "PET")
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"no primary tumor \(GTVp\), malignant lymph node \(GTVn\) target; it "
                                         "segments: gross tumor volume"):
        logic.segmentPetCt(ct, pet, targets=["GTVp", "GTVn"], device="cpu")
    with pytest.raises(InputError, match="same volume"):
        logic.segmentPetCt(ct, ct, device="cpu")
    with pytest.raises(InputError, match="No PET volume"):
        logic.segmentPetCt(ct, None, device="cpu")
    with pytest.raises(InputError, match="no trained PET input"):
        logic.segmentPetCt(ct, pet, modelFolder="promptseg-starter", device="cpu")
    origin = np.array(pet.GetOrigin())
    pet.SetOrigin(*(origin + [0.0, 0.0, 1000.0]))
    with pytest.raises(NoOverlapError, match="do not overlap"):
        logic.segmentPetCt(ct, pet, device="cpu")
    pet.SetOrigin(*origin)
    slicer.util.updateVolumeFromArray(pet, slicer.util.arrayFromVolume(pet) * 5000.0)  # Bq/ml, not SUV
    with pytest.raises(InputError, match="not SUV"):
        logic.segmentPetCt(ct, pet, device="cpu")
    assert scene.GetNumberOfNodes() == count  # nothing was written


class _DicomDatabase:
    """Slicer's DICOM database as far as the logic uses it: instance UID -> file."""

    def __init__(self, files):
        import pydicom

        self.files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in files}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


@needs_shared()
def test_pet_converted_to_suv_from_its_dicom_and_clinical_record_from_patient_tags(scene, logic, tmp_path,
                                                                                     monkeypatch):
    from PromptSegSlicer import InputError
    from test_pet_fusion import _write_bqml

    _write_bqml(tmp_path / "pet", "ADMIN", None)  # the real STS_002 PET series rewritten in Bq/ml
    database = _DicomDatabase(sorted((tmp_path / "pet").glob("*.dcm")))
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    suv_file = STS / "nifti" / "STS_002" / "PET_image.nii.gz"
    pet = slicer_shim.load_volume(suv_file, "PET")  # the series' grid; its voxels replaced by activity below
    slicer.util.updateVolumeFromArray(pet, slicer.util.arrayFromVolume(pet) * 4000.0)
    pet.SetAttribute("DICOM.instanceUIDs", " ".join(database.files))
    assert not logic.petIsSuv(pet)

    info = logic.convertPetToSuv(pet)

    assert info.units == "BQML" and info.weight_kg == 99.0 and logic.petIsSuv(pet)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(suv_file)))
    assert np.abs(slicer.util.arrayFromVolume(pet) - expected).max() < 1e-4 * expected.max()
    with pytest.raises(InputError, match="already in SUV"):
        logic.convertPetToSuv(pet)
    record = logic.clinicalRecordFromDicom(pet)
    assert (record.patient_id, record.gender, record.age, record.weight) == ("STS_002", 1, 61.0, 99.0)
    ct = slicer_shim.load_volume(STS_026 / "CT_image.nii.gz", "CT")
    assert logic.clinicalRecordFromDicom(ct).gender is None  # not loaded from DICOM: all unknown
    with pytest.raises(InputError, match="not loaded from DICOM"):
        logic.convertPetToSuv(ct)


@needs_shared()
def test_predict_gives_risk_group_and_a_survival_curve_plot(scene, logic):
    from PromptSegLib.prognosis.records import ClinicalDataError

    ct = slicer_shim.load_volume(STS_026 / "CT_image.nii.gz", "CT")
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateHierarchyItem(sh.GetSceneItemID(), "Study", slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    sh.CreateItem(study, ct)
    record = {"patient_id": "P1", "gender": 1, "age": 62, "weight": 80, "Tobacco": 1, "HPV status (0=-, 1=+)": 0,
              "T-stage": "T4", "N-stage": "N2", "M-stage": "M0"}

    prediction, chart = logic.predictPrognosis(record, volumeNode=ct)

    assert 0.0 <= prediction["risk_score"] <= 1.0 and prediction["risk_group"] in ("low", "intermediate", "high")
    assert "a male patient, 62 years old" in prediction["prompt"]
    time, survival = (np.array(prediction["survival_curve"][k]) for k in ("time", "survival"))
    assert time[0] == 0.0 and survival[0] == 1.0 and (np.diff(time) > 0).all()
    assert (np.diff(survival) <= 1e-12).all() and ((0.0 <= survival) & (survival <= 1.0)).all()
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    table = series.GetTableNode()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("time", "survival")
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "survival"), survival)
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "time"), time)
    assert sh.GetItemParent(sh.GetItemByDataNode(chart)) == study
    other, _ = logic.predictPrognosis({**record, "T-stage": "T1", "N-stage": "N0", "age": 40}, volumeNode=ct)
    assert other["risk_score"] != prediction["risk_score"]  # the record reaches the model
    with pytest.raises(ClinicalDataError, match="shoe size"):
        logic.predictPrognosis({"shoe size": 44})
    fields = logic.parseClinicalFields("HPV status: 1\n\nT-stage: T2 \n")
    assert fields == {"HPV status": "1", "T-stage": "T2"}
    with pytest.raises(Exception, match="line 2"):
        logic.parseClinicalFields("HPV status: 1\nsmoker")

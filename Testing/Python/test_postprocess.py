"""Post-processing as a model asks for it: the largest piece of a one-piece organ, and a far too small mask
emptied with a warning (an organ asked on a scan of another body region)."""
from __future__ import annotations

import numpy as np
import pytest

from PromptSegLib.segment.postprocess import (AIR_FACTOR, AIR_MARGIN_CM2, ImplausibleResultWarning, air_limit_cm2,
                                              largest_component, own_side, postprocess, touching)

from conftest import SHARED, needs_shared


def blobs() -> np.ndarray:
    """(2, 20, 20, 20) probabilities: a 6^3 block (0.9) and a 2^3 stray piece (0.8) in each channel."""
    p = np.full((2, 20, 20, 20), 0.1, np.float32)
    p[:, 2:8, 2:8, 2:8] = 0.9
    p[:, 15:17, 15:17, 15:17] = 0.8
    return p


def test_largest_component_keeps_the_big_piece_and_low_probabilities():
    p = blobs()
    postprocess(p, ["mandible", "liver"], 0.5, voxel_ml=1.0, largest=["mandible"])
    assert (p[0] >= 0.5).sum() == 216 and p[0, 15, 15, 15] == 0 and p[0, 0, 0, 0] == pytest.approx(0.1)
    assert (p[1] >= 0.5).sum() == 224  # not asked for the liver: both pieces stay
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_touching_keeps_the_pieces_a_seed_overlaps_and_else_the_largest():
    mask = blobs()[0] >= 0.5
    seed = np.zeros_like(mask)
    seed[16, 16, 16] = True
    assert touching(mask, seed).sum() == 8 and touching(mask, seed)[15, 15, 15]
    seed[5, 5, 5] = True
    assert touching(mask, seed).sum() == 224
    assert (touching(mask, np.zeros_like(mask)) == largest_component(mask)).all()
    assert not touching(np.zeros_like(mask), seed).any()


def test_a_mask_far_smaller_than_the_organ_ever_is_emptied_with_a_warning():
    p = blobs()
    with pytest.warns(ImplausibleResultWarning, match="left parotid: 0.2 mL found"):
        postprocess(p, ["left parotid", "mandible"], 0.5, voxel_ml=0.001, largest=["left parotid"],
                    plausible_ml={"left parotid": 5.0, "mandible": 0.1})
    assert not (p[0] >= 0.5).any() and (p[1] >= 0.5).sum() == 224


def test_pieces_in_a_far_wider_body_than_their_organ_ever_had_are_removed():
    body = np.full(20, 250.0)
    p = blobs()
    postprocess(p, ["left parotid", "liver"], 0.5, voxel_ml=1.0, widest_body_cm2={"left parotid": 300.0},
                body_cm2=body)
    assert (p[0] >= 0.5).sum() == 224  # a head-sized body: both pieces kept
    body[2:8] = 700.0  # the big piece lies in an abdomen-sized body (or the shoulders): removed, the other kept
    postprocess(p, ["left parotid", "liver"], 0.5, voxel_ml=1.0, largest=["left parotid"],
                widest_body_cm2={"left parotid": 300.0}, body_cm2=body)
    assert (p[0] >= 0.5).sum() == 8 and p[0, 15, 15, 15] >= 0.5  # removed before the largest piece was chosen
    assert (p[1] >= 0.5).sum() == 224  # the liver has no such bound: kept
    p = blobs()
    body[:] = 700.0  # the whole scan is wider than any head: emptied with a warning
    with pytest.warns(ImplausibleResultWarning, match="left parotid: found where the body's cross-section is 700 cm², "
                                                      "2.3 times"):
        postprocess(p, ["left parotid"], 0.5, voxel_ml=1.0, widest_body_cm2={"left parotid": 300.0}, body_cm2=body)
    assert not (p[0] >= 0.5).any()
    p = blobs()
    postprocess(p, ["left parotid"], 0.5, voxel_ml=1.0, widest_body_cm2={"left parotid": 300.0})  # no CT areas
    assert (p[0] >= 0.5).sum() == 224
    p = blobs()  # on a box of the input grid: the body areas are those of the box's slices
    postprocess(p[:, 2:], ["left parotid"], 0.5, voxel_ml=1.0, widest_body_cm2={"left parotid": 300.0},
                body_cm2=np.r_[np.full(4, 250.0), np.full(6, 700.0), np.full(14, 250.0)], origin=(4, 0, 0))
    assert (p[0] >= 0.5).sum() == 8  # the box's slices 0-5 are the input's 4-9: the big piece is in the wide body


def test_pieces_over_far_more_enclosed_air_than_their_organ_ever_had_are_removed():
    """The lungs under a parotid: a piece whose middle slice encloses more air than the air bound
    (twice the most in training, and at least 50 cm² more) is removed; the airway's few cm² are not."""
    assert air_limit_cm2(10.0) == 10.0 + AIR_MARGIN_CM2 and air_limit_cm2(200.0) == AIR_FACTOR * 200.0
    air = np.full(20, 5.0)
    p = blobs()
    postprocess(p, ["left parotid"], 0.5, voxel_ml=1.0, most_air_cm2={"left parotid": 20.0}, air_cm2=air)
    assert (p[0] >= 0.5).sum() == 224  # a neck's airway: both pieces kept
    air[2:8] = 69.0  # just below the bound (70 cm²): kept
    postprocess(p, ["left parotid"], 0.5, voxel_ml=1.0, most_air_cm2={"left parotid": 20.0}, air_cm2=air)
    assert (p[0] >= 0.5).sum() == 224
    air[2:8] = 250.0  # lungs under the big piece: removed, the small one kept
    postprocess(p, ["left parotid", "liver"], 0.5, voxel_ml=1.0, most_air_cm2={"left parotid": 20.0}, air_cm2=air)
    assert (p[0] >= 0.5).sum() == 8 and (p[1] >= 0.5).sum() == 224  # the liver has no such bound
    p = blobs()
    air[:] = 250.0  # every piece over the lungs: emptied, and the warning says why
    with pytest.warns(ImplausibleResultWarning, match="left parotid: found where the body encloses 250 cm² of air"):
        postprocess(p, ["left parotid"], 0.5, voxel_ml=1.0, most_air_cm2={"left parotid": 20.0}, air_cm2=air,
                    widest_body_cm2={"left parotid": 300.0}, body_cm2=np.full(20, 250.0))
    assert not (p[0] >= 0.5).any()


@needs_shared("openkbp_hn_ct", "validation", "pt_201")
def test_own_side_keeps_the_parotid_of_the_side_asked_on_a_real_ct():
    """Both real parotids of an OpenKBP patient as one mask: the left side keeps exactly the left parotid."""
    import SimpleITK as sitk

    folder = SHARED / "openkbp_hn_ct" / "validation" / "pt_201"
    image = sitk.ReadImage(str(folder / "ct.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "oars.nii.gz")))
    both = (label == 3) | (label == 4)
    assert np.array_equal(own_side(both, image, "left"), label == 4)
    assert np.array_equal(own_side(both, image, "right"), label == 3)
    flipped = sitk.Flip(image, [True, False, False])  # same anatomy, x axis stored the other way round
    both_flipped = both[:, :, ::-1]
    assert np.array_equal(own_side(both_flipped, flipped, "left"), (label == 4)[:, :, ::-1])


def test_a_piece_with_no_anchor_where_training_always_had_one_goes_unless_the_scan_ends_first():
    """A parotid-like target anchored to a mandible-like one (1 mm voxels, the array's first axis along LPS z), its
    training truth always 35 mm into the anchor from below and 15 mm from above (reach with the 20 mm margin:
    -15 and 5 mm): kept beside its anchor, removed with a warning where the scan holds no anchor that near, kept
    where the anchor could lie beyond the scan's end."""
    import SimpleITK as sitk

    from PromptSegLib.segment.postprocess import anchor_window

    image = sitk.Image(30, 30, 100, sitk.sitkInt16)  # z of voxel k: k mm
    anchor = np.zeros((100, 30, 30), bool)
    anchor[30:50] = True
    p = np.zeros((1, 100, 30, 30), np.float32)
    p[0, 40:60, 5:10, 5:10] = 0.9  # beside the anchor: its bottom 40 <= 59 - 15, its top 49 >= 40 - 5
    p[0, 70:95, 5:10, 5:10] = 0.9  # above it: the anchor's bottom 30 <= 94 - 15, but its top 49 < 70 - 5
    window = anchor_window(anchor, image, "mandible", -35.0, -15.0)
    assert window.extent_mm == (30.0, 49.0) and window.reach_mm == (-15.0, 5.0) and window.scan_mm == (0.0, 99.0)
    postprocess(p, ["left parotid"], 0.5, voxel_ml=0.001, image=image, anchors={"left parotid": window})
    assert (p[0, 40:60, 5:10, 5:10] >= 0.5).all() and not (p[0, 70:95] >= 0.5).any()
    p[0, 40:60] = 0.0
    p[0, 70:95, 5:10, 5:10] = 0.9
    with pytest.warns(ImplausibleResultWarning, match="left parotid: no mandible found where every training scan"):
        postprocess(p, ["left parotid"], 0.5, voxel_ml=0.001, image=image, anchors={"left parotid": window})
    assert not p.any()
    none = anchor_window(np.zeros_like(anchor), image, "mandible", -35.0, -15.0)
    p[0, 0:3, 5:10, 5:10] = 0.9  # at the scan's bottom: an anchor below the scan could reach 5 mm below it
    p[0, 40:60, 5:10, 5:10] = 0.9  # inside: no anchor found, none could lie beyond the scan: removed
    postprocess(p, ["left parotid"], 0.5, voxel_ml=0.001, image=image, anchors={"left parotid": none})
    assert (p[0, 0:3, 5:10, 5:10] >= 0.5).all() and not (p[0, 40:60] >= 0.5).any()
    # an anchor cut by the scan's bottom may reach below it: 2 mm below, as a piece 5-13 mm needs (13 - 15)
    p[:] = 0.0
    p[0, 5:14, 5:10, 5:10] = 0.9
    anchor[:] = False
    anchor[0:20] = True
    postprocess(p, ["left parotid"], 0.5, voxel_ml=0.001, image=image,
                anchors={"left parotid": anchor_window(anchor, image, "mandible", -35.0, -15.0)})
    assert (p[0, 5:14, 5:10, 5:10] >= 0.5).all()

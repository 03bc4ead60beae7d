"""The organ prior of a fill from drawn slices (PromptSegLib.propagate.organ_prior): the bundled head-and-neck
organ model on OpenKBP pt_212, a held-out patient (neither model trained on it; no choice looked at it)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PromptSegLib.errors import Cancelled, ModelError, PromptSegError
from PromptSegLib.metrics import dice
from PromptSegLib.propagate.multislice import fill_from_slices
from PromptSegLib.notes import collecting_notes
from PromptSegLib.propagate.organ_prior import (LOW_AGREEMENT, MIN_AGREEMENT, MODEL, SMALL_PIXELS, WEIGHT, WEIGHT_ONE,
                                                OrganPrior, apply_prior, drawn_on_grid, least_agreement, organ_prior,
                                                prior_applies, prior_box, prior_or_none, shows_air, vote_weight)
from PromptSegLib.propagate.propagator import Propagator
from PromptSegLib.segment.inference import Segmenter

from conftest import SHARED, needs_shared

PT_212 = SHARED / "openkbp_hn_ct" / "validation" / "pt_212"


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(MODEL, device="cpu", threads=1)


@pytest.fixture(scope="module")
def propagator():
    return Propagator(None, threads=1)


def organ_case(patient: str, value: int) -> tuple[sitk.Image, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """An OpenKBP validation patient of shared/ (held out): its CT (SimpleITK, HU), the CT's array ``(Z, Y, X)``
    float32, the organ labelled ``value`` in ``oars.nii.gz`` (bool ``(Z, Y, X)``) and the voxel size (mm, Z Y X)."""
    folder = SHARED / "openkbp_hn_ct" / "validation" / patient
    image = sitk.ReadImage(str(folder / "ct.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "oars.nii.gz"))) == value
    return image, sitk.GetArrayFromImage(image).astype(np.float32), truth, tuple(reversed(image.GetSpacing()))


def plain_and_guided(propagator: Propagator, array: np.ndarray, drawn: dict[int, np.ndarray],
                     spacing: tuple[float, float, float], prior: OrganPrior) -> tuple[np.ndarray, np.ndarray]:
    """The fill's masks from ``drawn`` without and with the ``prior``."""
    plain = fill_from_slices(propagator, array, drawn, spacing=spacing).mask
    return plain, fill_from_slices(propagator, array, drawn, spacing=spacing, prior=prior).mask


@pytest.fixture(scope="module")
def parotid():
    """pt_212's CT (SimpleITK, HU), its array ``(Z, Y, X)``, its right parotid (bool ``(Z, Y, X)``), the voxel size
    (mm, Z Y X) and the protocol's two drawn slices (at 1/4 and 3/4 of the parotid's extent, 30 mm apart)."""
    image, array, truth, spacing = organ_case("pt_212", 3)
    return image, array, truth, spacing, protocol_slices(truth, 2)


def protocol_slices(truth: np.ndarray, count: int) -> list[int]:
    """The benchmark's drawn slices: ``count`` along axis 0, at (i + 0.5) / count of the structure's extent."""
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    return sorted({int(present[0] + np.floor((i + 0.5) * len(present) / count)) for i in range(count)})


@needs_shared("openkbp_hn_ct")
def test_two_drawn_slices_of_a_parotid_find_the_organ_and_the_prior_fills_better(segmenter, propagator, parotid):
    image, array, truth, spacing, indices = parotid
    drawn = {j: truth[j] for j in indices}
    prior = organ_prior(segmenter, image, drawn)
    # measured: "left parotid" (the model's raw probabilities, without its own-side rule, confuse the sides),
    # Dice 0.811 with the drawn slices
    assert prior is not None and prior.target.endswith("parotid") and prior.agreement >= MIN_AGREEMENT
    assert prior.probability.shape == array[prior.box].shape
    assert all(prior.box[0].start <= j < prior.box[0].stop for j in indices)
    plain = fill_from_slices(propagator, array, drawn, spacing=spacing)
    guided = fill_from_slices(propagator, array, drawn, spacing=spacing, prior=prior)
    assert guided.prior is prior and plain.prior is None
    np.testing.assert_array_equal(guided.mask[indices], truth[indices])
    # every slice that holds the structure is drawn or written (the effect records the written ones)
    assert set(np.nonzero(guided.mask.any(axis=(1, 2)))[0]) <= set(indices) | set(guided.written)
    # measured 0.826 without the prior, 0.868 with it
    assert dice(guided.mask, truth) > dice(plain.mask, truth) + 0.03
    with pytest.raises(PromptSegError, match="weight"):  # refused before any filling
        fill_from_slices(propagator, array, drawn, spacing=spacing, prior=prior, prior_weight=1.0)


@needs_shared("openkbp_hn_ct")
def test_the_prior_stays_out_where_it_cannot_help(segmenter, parotid):
    image, array, truth, spacing, indices = parotid
    a, b = indices
    # nothing drawn; two drawn slices 3 mm apart (the fill alone is better there): no model run
    assert organ_prior(segmenter, image, {a: np.zeros_like(truth[a])}) is None
    assert organ_prior(segmenter, image, {a: truth[a], a + 1: truth[a + 1]}) is None
    # the parotid's drawn shapes moved 60 mm along the slices' rows, off the organ: no target of the model matches them
    shift = int(round(60 / spacing[1]))
    moved = {j: np.roll(truth[j], -shift, axis=0) for j in indices}
    assert organ_prior(segmenter, image, moved) is None


@needs_shared("openkbp_hn_ct")
def test_from_one_drawn_slice_a_spinal_cord_runs_on_along_the_organ_model(segmenter, propagator):
    """pt_212's spinal cord drawn on its middle slice: the network loses a cord a few 4 mm pixels wide within a
    few slices; the organ model carries it on."""
    image, array, truth, spacing = organ_case("pt_212", 2)
    middle = middle_slice(truth)
    drawn = {middle: truth[middle]}
    prior = organ_prior(segmenter, image, drawn)
    assert prior is not None and prior.target == "spinal cord"
    plain, guided = plain_and_guided(propagator, array, drawn, spacing, prior)
    np.testing.assert_array_equal(guided[middle], truth[middle])
    # measured 0.077 without the prior (5 slices of the truth's 74), 0.700 with it (57)
    assert dice(guided, truth) > 0.6 > dice(plain, truth) + 0.4
    assert guided.any(axis=(1, 2)).sum() > 3 * plain.any(axis=(1, 2)).sum()


def middle_slice(truth: np.ndarray) -> int:
    """The middle of the slices along axis 0 that hold ``truth``."""
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    return int(present[0] + len(present) // 2)


@needs_shared("openkbp_hn_ct")
@needs_shared("lung_ct_gtv")
def test_from_one_drawn_slice_a_lower_agreement_is_enough_but_not_for_a_structure_the_model_does_not_know(
        segmenter, propagator):
    """pt_202's spinal cord, drawn on its middle slice, agrees with the model's spinal cord at Dice 0.63: too little
    for two drawn slices, enough for one, where the fill alone loses the cord. A lung tumour the model has no target
    for agrees with none of them (best 0.10), and its fill stays the network's own."""
    image, array, truth, spacing = organ_case("pt_202", 2)
    middle = middle_slice(truth)
    drawn = {middle: truth[middle]}
    prior = organ_prior(segmenter, image, drawn)
    assert prior is not None and prior.target == "spinal cord"
    assert LOW_AGREEMENT <= prior.agreement < MIN_AGREEMENT  # measured 0.632
    assert organ_prior(segmenter, image, drawn, min_agreement=MIN_AGREEMENT) is None
    plain, guided = plain_and_guided(propagator, array, drawn, spacing, prior)
    # measured 0.056 without the prior (4 slices of the truth's 76), 0.733 with it (57 slices)
    assert dice(guided, truth) > 0.65 > 0.15 > dice(plain, truth)

    folder = SHARED / "lung_ct_gtv" / "nifti"
    ct = sitk.ReadImage(str(folder / "image" / "phantom.nii.gz"))
    tumour = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(folder / "mask" / "mask.nii.gz")), ct,
                                                  sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    middle = middle_slice(tumour)
    assert organ_prior(segmenter, ct, {middle: tumour[middle]}) is None
    forced = organ_prior(segmenter, ct, {middle: tumour[middle]}, min_agreement=0.0)
    assert forced is not None and forced.agreement < LOW_AGREEMENT - 0.3  # measured 0.102


@needs_shared("openkbp_hn_ct")
def test_a_structure_drawn_a_few_pixels_small_takes_the_prior_at_the_lower_agreement(segmenter, propagator):
    """pt_201's spinal cord on the protocol's two drawn slices, 3 pixels each: a pixel moves Dice by a third, and the
    model's cord agrees at 0.71, under the threshold of larger structures."""
    image, array, truth, spacing = organ_case("pt_201", 2)
    drawn = {j: truth[j] for j in protocol_slices(truth, 2)}
    assert all(v.sum() < SMALL_PIXELS for v in drawn.values())
    assert least_agreement(drawn) == LOW_AGREEMENT and least_agreement(drawn, small_pixels=0) == MIN_AGREEMENT
    prior = organ_prior(segmenter, image, drawn)
    assert prior is not None and prior.target == "spinal cord"
    assert LOW_AGREEMENT <= prior.agreement < MIN_AGREEMENT  # measured 0.714
    plain, guided = plain_and_guided(propagator, array, drawn, spacing, prior)
    assert dice(guided, truth) > dice(plain, truth) + 0.2  # measured 0.509 without the prior, 0.792 with it


@needs_shared("openkbp_hn_ct")
def test_close_drawn_slices_of_a_mandible_that_change_pieces_take_the_prior(segmenter, propagator):
    image, array, truth, spacing = organ_case("pt_213", 7)
    indices = protocol_slices(truth, 4)
    drawn = {j: truth[j] for j in indices}
    # 18 mm apart, under MIN_SPACING_MM; the rami and the arch: 8, 7, 3 and 1 pieces
    assert not prior_applies(drawn, spacing[0], pieces=False) and prior_applies(drawn, spacing[0])
    prior = organ_prior(segmenter, image, drawn)
    assert prior is not None and prior.target == "mandible"
    plain, guided = plain_and_guided(propagator, array, drawn, spacing, prior)
    # measured 0.818 without the prior, 0.878 with it
    assert dice(guided, truth) >= dice(plain, truth) + 0.03 and dice(guided, truth) >= 0.85


def test_from_one_drawn_slice_the_prior_s_vote_weighs_more():
    """Where the fill and the prior disagree, a probability of 0.7 outvotes the fill only from one drawn slice."""
    slices = np.zeros((5, 6, 6), bool)
    slices[:, 2:4, 2:4] = True
    one, two = {2: slices[2]}, {0: slices[0], 4: slices[4]}
    assert vote_weight(one) == WEIGHT_ONE > WEIGHT == vote_weight(two) == vote_weight({**two, 2: slices[2] & False})
    probability = np.zeros(slices.shape, np.float32)
    probability[1:4, 1:5, 1:5] = 0.7  # a larger organ than the fill's
    prior = OrganPrior("organ", 0.9, (slice(0, 5), slice(0, 6), slice(0, 6)), probability)
    # 0.2 * 0 + 0.8 * 0.7 >= 0.5 adds the ring; 0.4 * 0 + 0.6 * 0.7 < 0.5 does not
    assert apply_prior(slices, prior, one)[1].sum() == 16
    assert apply_prior(slices, prior, one, weight=WEIGHT)[1].sum() == 4
    assert apply_prior(slices, prior, two)[1].sum() == 4


def test_the_prior_votes_off_the_drawn_slices_keeps_them_and_what_lies_outside_its_box():
    mask = np.zeros((6, 8, 8), bool)
    mask[1:5, 2:5, 2:5] = True
    probability = np.zeros((6, 6, 6), np.float32)  # the box (0:6, 1:7, 1:7)
    probability[:, 1:4, 1:4] = 0.1  # fairly sure: absent (weight 0.6: kept where 0.4 + 0.6 p >= 0.5, p >= 1/6)
    probability[3, 1:4, 1:4] = 0.2  # not sure: the fill's voxels kept
    probability[1:3, 4, 1:4] = 0.9  # sure: present, a piece on slices 1-2 beside the drawn slice's pixels
    probability[4, 5, 5] = 0.9  # sure, but a piece of its own
    probability[1, 1:4, 1:4] = 0.0  # on the drawn slice: the user's
    prior = OrganPrior("brain stem", 0.9, (slice(0, 6), slice(1, 7), slice(1, 7)), probability)
    drawn = {1: mask[1].copy()}
    out = apply_prior(mask, prior, drawn, axis=0, weight=WEIGHT)
    np.testing.assert_array_equal(out[1], mask[1])
    assert not out[2, 2:5, 2:5].any() and not out[4, 2:5, 2:5].any()
    np.testing.assert_array_equal(out[3], mask[3])
    np.testing.assert_array_equal(out[:, 0], mask[:, 0])  # outside the box
    # a sure piece joins only where it holds a drawn pixel
    assert not out[2, 5].any() and not out[4, 6, 6]
    touching = {1: drawn[1].copy()}
    touching[1][5, 3] = True
    joined = apply_prior(mask, prior, touching, axis=0, weight=WEIGHT)
    assert joined[2, 5, 2:5].all() and not joined[4, 6, 6]
    np.testing.assert_array_equal(joined[1], mask[1])
    with pytest.raises(PromptSegError, match="weight"):
        apply_prior(mask, prior, drawn, weight=1.0)


def test_what_the_prior_adds_stays_in_the_fill_s_range_short_of_an_erased_slice_along_any_axis():
    # one drawn slice (index 5) and a sure piece of the prior running through slices 2..17: slice 8 was erased,
    # and the fill's range ends at 15
    for axis in (0, 1, 2):
        shape = [20, 20, 20]
        mask = np.zeros(shape, bool)
        probability = np.zeros(shape, np.float32)
        region = [slice(8, 12)] * 3
        region[axis] = slice(2, 18)
        probability[tuple(region)] = 0.9
        drawn_mask = np.zeros(shape, bool)
        region[axis] = slice(5, 6)
        drawn_mask[tuple(region)] = True
        mask |= drawn_mask
        drawn = {5: np.take(drawn_mask, 5, axis=axis), 8: np.zeros((20, 20), bool)}
        prior = OrganPrior("spinal cord", 0.9, (slice(0, 20),) * 3, probability)
        out = apply_prior(mask, prior, drawn, axis=axis, within=(0, 15))
        along = np.nonzero(out.any(axis=tuple(i for i in range(3) if i != axis)))[0].tolist()
        assert along == [2, 3, 4, 5, 6, 7], (axis, along)
        np.testing.assert_array_equal(np.take(out, 5, axis=axis), drawn[5])
        # no erased slice: the piece runs on to the end of the fill's range
        out = apply_prior(mask, prior, {5: drawn[5]}, axis=axis, within=(0, 15))
        assert np.nonzero(out.any(axis=tuple(i for i in range(3) if i != axis)))[0].tolist() == list(range(2, 16))


def test_a_prior_that_cannot_be_had_is_noted_and_the_fill_goes_on_without_it():
    image = sitk.Image(16, 16, 16, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 3.0))
    square = np.zeros((16, 16), bool)
    square[6:10, 6:10] = True

    def broken():
        raise ModelError("promptseg-hn-oars: weights.safetensors is missing")

    with collecting_notes() as notes, pytest.warns(UserWarning, match="without the organ model"):
        assert prior_or_none(broken, image, {8: square}) is None
    assert notes == ["filled without the organ model: promptseg-hn-oars: weights.safetensors is missing"]

    def cancelled():
        raise Cancelled("fill cancelled")

    with pytest.raises(Cancelled):
        prior_or_none(cancelled, image, {8: square})
    # two drawn slices 6 mm apart: the prior does not apply, and the model is not even loaded
    loaded = []
    assert prior_or_none(lambda: loaded.append(True), image, {6: square, 8: square}) is None and not loaded
    assert prior_applies({6: square, 8: square}, 3.0, min_spacing_mm=6.0)
    two = square.copy()
    two[:, two.shape[1] // 2] = False  # the same square cut in two pieces
    assert prior_applies({6: square, 8: two}, 3.0) and not prior_applies({6: square, 8: two}, 3.0, pieces=False)
    assert not prior_applies({6: np.zeros_like(square)}, 3.0)


def test_a_ct_shows_air_an_mr_does_not(chest_ct_path, mni_t1_path):
    assert shows_air(sitk.GetArrayFromImage(sitk.ReadImage(str(chest_ct_path))))
    assert not shows_air(sitk.GetArrayFromImage(sitk.ReadImage(str(mni_t1_path))))
    assert not shows_air(np.zeros((0, 4, 4)))


def test_the_crop_holds_the_drawn_slices_and_the_reach_with_a_model_window_of_context():
    drawn = {20: np.zeros((100, 100), bool), 40: np.zeros((100, 100), bool)}
    drawn[20][40:50, 45:55] = True
    drawn[40][42:52, 45:55] = True
    box = prior_box((80, 100, 100), (3.0, 2.0, 2.0), drawn, axis=0)
    # along the axis 20..40, then half the 20-slice spacing and a slice more at each end: 9..51, 43 slices of
    # 3 mm, grown on both sides to the 141 mm of context: 47 slices
    assert (box[0].start, box[0].stop) == (7, 54)
    assert box[1].stop - box[1].start == 71 and box[1].start <= 40 and box[1].stop >= 52
    # from one drawn slice (a fill that runs on until the structure ends): centred on it, 47 slices of 3 mm
    one = prior_box((80, 100, 100), (3.0, 2.0, 2.0), {40: drawn[40]}, axis=0)
    assert (one[0].start, one[0].stop) == (40 - 23, 40 + 24) and one[1].stop - one[1].start == 71
    with pytest.raises(PromptSegError, match="a drawn slice"):
        prior_box((80, 100, 100), (3.0, 2.0, 2.0), {20: np.zeros((100, 100), bool)}, axis=0)


def test_a_crop_kept_to_one_window_grows_only_up_to_it_in_the_plane():
    drawn = {20: np.zeros((120, 120), bool), 40: np.zeros((120, 120), bool)}
    drawn[20][30:90, 30:90] = True  # 60 pixels of 2 mm: 120 mm, under one window (141 mm: 71 pixels)
    drawn[40][30:90, 30:90] = True
    grown = prior_box((80, 120, 120), (3.0, 2.0, 2.0), drawn, axis=0, one_window=False)
    kept = prior_box((80, 120, 120), (3.0, 2.0, 2.0), drawn, axis=0, one_window=True)
    assert [grown[i].stop - grown[i].start for i in (1, 2)] == [90, 90]  # half its size wider: two windows
    assert [kept[i].stop - kept[i].start for i in (1, 2)] == [71, 71]
    assert all(kept[i].start <= 30 and kept[i].stop >= 90 for i in (1, 2))
    assert kept[0] == grown[0]  # along the axis nothing changes
    wide = {k: np.zeros((160, 160), bool) for k in drawn}  # 120 pixels (240 mm), wider than a window: its own box
    wide[20][20:140, 20:140] = wide[40][20:140, 20:140] = True
    box = prior_box((80, 160, 160), (3.0, 2.0, 2.0), wide, axis=0, one_window=True)
    assert [(box[i].start, box[i].stop) for i in (1, 2)] == [(20, 140), (20, 140)]


@needs_shared("openkbp_hn_ct")
def test_the_fill_command_takes_the_prior_on_a_ct_unless_told_not_to(tmp_path, parotid, capsys):
    from PromptSegLib.cli.main import main

    image, _, truth, _, indices = parotid
    drawn = np.zeros(truth.shape, np.uint8)
    drawn[indices] = truth[indices]
    mask = sitk.GetImageFromArray(drawn)
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "drawn.nii.gz"))
    filled = {}
    for choice in ("auto", "off"):
        out = tmp_path / f"{choice}.nii.gz"
        assert main(["fill", str(PT_212 / "ct.nii.gz"), "--mask", str(tmp_path / "drawn.nii.gz"), "--organ-prior",
                     choice, "-o", str(out), "-q"]) == 0
        said = capsys.readouterr().out
        assert ("guided by the organ model's" in said) == (choice == "auto") and "filled from 2 drawn" in said
        filled[choice] = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    # as the library measured above: 0.868 with the prior, 0.826 without
    assert dice(filled["auto"], truth) > dice(filled["off"], truth) + 0.03


def hinted_segmenter(segmenter: Segmenter, weight: float) -> Segmenter:
    """The organ model with a drawn-slice input (``NetworkConfig.hints``) whose weights are all ``weight``."""
    import dataclasses

    import torch

    from PromptSegLib.models.folder import Model
    from PromptSegLib.models.network import DuPLUSNet

    config = segmenter.model.config
    config = dataclasses.replace(config, network=dataclasses.replace(config.network, hints=True))
    network = DuPLUSNet(config.network)
    network.load_state_dict(segmenter.model.network.state_dict(), strict=False)
    torch.nn.init.constant_(network.hint.weight, weight)
    return Segmenter(Model(config, network.eval()), device="cpu", threads=1)


@needs_shared("openkbp_hn_ct")
def test_drawn_slices_reach_the_model_grid_one_plane_each_and_only_across_its_z(parotid):
    from PromptSegLib.preprocessing.preprocess import model_grid

    image, _, truth, spacing, drawn_at = parotid
    crop = image[:, :, drawn_at[0] - 5:drawn_at[-1] + 6]
    drawn = {k - (drawn_at[0] - 5): truth[k] for k in drawn_at}
    grid = model_grid(crop, 3.0)
    hint = drawn_on_grid(crop, drawn, 0, grid)
    planes = np.nonzero(hint[1].any(axis=(1, 2)))[0]
    assert len(planes) == 2 and hint[1][planes].all()
    pixel_mm2 = spacing[1] * spacing[2]
    for plane, index in zip(planes, sorted(drawn, reverse=True)):  # the CT's z runs against the grid's
        assert abs(hint[0, plane].sum() * 9.0 / (drawn[index].sum() * pixel_mm2) - 1.0) < 0.25
        z_mm = crop.TransformIndexToPhysicalPoint((0, 0, index))[2]
        assert abs(grid.TransformIndexToPhysicalPoint((0, 0, int(plane)))[2] - z_mm) <= 1.5
    assert drawn_on_grid(crop, {30: truth[drawn_at[0]][:, 30]}, 2, grid) is None  # sagittal: not learnt


@needs_shared("openkbp_hn_ct")
def test_a_model_that_takes_drawn_slices_gets_them_once_it_agrees_without(segmenter, parotid):
    image, _, truth, _, drawn_at = parotid
    drawn = {k: truth[k] for k in drawn_at}
    plain = organ_prior(segmenter, image, drawn)
    unchanged = organ_prior(hinted_segmenter(segmenter, 0.0), image, drawn)
    guided = organ_prior(hinted_segmenter(segmenter, 0.05), image, drawn)
    assert plain.target == unchanged.target == guided.target  # (a parotid: a crop has no midline to tell the side)
    assert plain.agreement == unchanged.agreement == guided.agreement  # chosen without the hint
    assert np.abs(unchanged.probability - plain.probability).max() <= 1.5 / 255
    assert np.abs(guided.probability - plain.probability).max() > 0.1
    with pytest.raises(ValueError, match="a hint must be shaped"):
        segmenter.segment(image, "CT", "head and neck", ["right parotid"], hint=np.zeros((2, 4, 4, 4), np.float32))

"""DuPLUS preprocessing on real images: intensity rules, the isotropic model grid, and its inverse."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptSegLib.errors import InputImageError
from PromptSegLib.metrics import dice
from PromptSegLib.preprocessing.axis_aligned import linear_on_axes
from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.preprocessing.preprocess import (BODY_HU, BODY_MARGIN_MM, enclosed_air_cm2,
                                                   model_grid, prepare, to_original_box)
from PromptSegLib.text.modality import canonical_modality

from conftest import segment_mask


def test_ct_rule_clips_to_window_and_standardises(chest_ct):
    array = sitk.GetArrayFromImage(chest_ct)
    rule = IntensityRule.fit(array, "CT")
    assert (rule.low, rule.high) == (-990.0, 500.0)
    out = rule.apply(array)
    np.testing.assert_allclose([out.mean(), out.std()], [0.0, 1.0], atol=1e-3)
    assert out.max() == pytest.approx((500 - rule.mean) / rule.std, rel=1e-5)
    assert array.max() > 500 and array.min() < -990  # the clip did something on this scan


def test_mr_rule_uses_percentiles(mni_t1_path):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(mni_t1_path))).astype(np.float32)
    rule = IntensityRule.fit(array, "MR")
    assert rule.low == pytest.approx(np.percentile(array, 2))
    assert rule.high == pytest.approx(np.percentile(array, 98))
    out = rule.apply(array)
    np.testing.assert_allclose([out.mean(), out.std()], [0.0, 1.0], atol=1e-3)


def test_modality_aliases():
    assert [canonical_modality(m) for m in ("ct", "MRI", "pt", "PET")] == ["CT", "MR", "PET", "PET"]
    with pytest.raises(InputImageError, match="unknown modality"):
        canonical_modality("ultrasound")


def test_model_grid_is_isotropic_identity_and_covers_the_input(chest_ct):
    grid = model_grid(chest_ct, 1.5)
    assert grid.GetSpacing() == (1.5, 1.5, 1.5)
    np.testing.assert_allclose(grid.GetDirection(), np.eye(3).ravel())
    # chest CT: 128 x 3.047 mm, 128 x 3.047 mm, 34 x 10 mm
    np.testing.assert_array_equal(grid.GetSize(), np.ceil(np.array([390.0, 390.0, 340.0]) / 1.5).astype(int))
    # the LPS direction of the input is (-1, -1, 1): its first voxel lies at the grid's far corner in x and y
    corner = np.array(grid.GetOrigin()) + (np.array(grid.GetSize()) - 1) * 1.5
    first = np.array(chest_ct.GetOrigin())
    assert abs(corner[0] - first[0]) < 1.6 and abs(corner[1] - first[1]) < 1.6


def test_prepare_then_inverse_recovers_a_real_mask(chest_ct, chest_segmentation):
    truth = segment_mask(chest_segmentation, "left lung")
    prepared = prepare(chest_ct, "CT", 1.5)
    mask_image = sitk.GetImageFromArray(truth.astype(np.float32))
    mask_image.CopyInformation(chest_ct)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(mask_image, prepared.grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    back, box = to_original_box(on_grid, (0, 0, 0), prepared)
    assert back.shape == truth.shape and box == tuple(slice(0, n) for n in truth.shape)  # the grid covers it all
    assert dice(back >= 0.5, truth) > 0.97
    inner = tuple(slice(n // 4, n // 2) for n in on_grid.shape)  # a block: the same values where it reaches
    part, part_box = to_original_box(on_grid[inner], tuple(s.start for s in inner), prepared)
    assert 0 < part.size < back.size
    centre = tuple(slice(s.start + 2, s.stop - 2) for s in part_box)  # away from the block's edge
    local = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(centre, part_box))
    np.testing.assert_allclose(part[local], back[centre], atol=1e-6)


def test_prepare_handles_oblique_input(chest_ct):
    image = sitk.Image(chest_ct)
    angle = np.deg2rad(25)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection((rotation @ np.array(chest_ct.GetDirection()).reshape(3, 3)).ravel().tolist())
    prepared = prepare(image, "CT", 4.0)
    np.testing.assert_allclose(prepared.grid.GetDirection(), np.eye(3).ravel())
    back, _ = to_original_box(np.ones(prepared.array.shape, np.float32), (0, 0, 0), prepared)
    assert back.shape == sitk.GetArrayViewFromImage(image).shape
    assert back.min() > 0.99  # every input voxel lies inside the model grid


def test_bad_spacing(chest_ct):
    with pytest.raises(InputImageError, match="spacing"):
        prepare(chest_ct, "CT", 0)


def test_shared_ct_rule_is_the_z_score_of_all_voxels(chest_ct):
    array = sitk.GetArrayFromImage(chest_ct)
    halves = [array[:17], array[17:]]
    shared = IntensityRule.fit_many(halves, "CT")
    whole = IntensityRule.fit(array, "CT")
    assert (shared.mean, shared.std) == pytest.approx((whole.mean, whole.std), rel=1e-5)
    # a fixed rule normalises a crop exactly as the whole scan: the field of view no longer matters
    np.testing.assert_allclose(shared.apply(halves[0]), whole.apply(array)[:17], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        IntensityRule.fit_many(halves, "MR")


def test_ct_body_box_holds_every_body_voxel_and_leaves_the_air_out(chest_ct, mni_t1_path):
    """The windows of a CT look only inside the body box: it holds every voxel above -500 HU, grown by the
    margin; on the chest CT padded with 60 mm of air on every side the air beyond the margin is left out; an MR
    has no box."""
    pad = [int(round(60 / s)) for s in chest_ct.GetSpacing()]
    padded = sitk.ConstantPad(chest_ct, pad, pad, -1000.0)
    prepared = prepare(padded, "CT", 3.0)
    hu = sitk.GetArrayFromImage(sitk.Resample(padded, prepared.grid, sitk.Transform(), sitk.sitkLinear, -1000.0))
    box = prepared.body
    assert box is not None
    inside = np.zeros(hu.shape, bool)
    inside[box] = True
    assert not (hu[~inside] > BODY_HU).any()
    margin = int(np.ceil(BODY_MARGIN_MM / 3.0))
    hits = np.argwhere(hu > BODY_HU)
    for axis, cut in enumerate(box):
        assert (cut.start, cut.stop) == (hits[:, axis].min() - margin, hits[:, axis].max() + margin + 1)
    assert inside.sum() < 0.7 * inside.size
    assert prepare(sitk.ReadImage(str(mni_t1_path)), "MR", 3.0).body is None


def test_the_air_the_body_encloses_is_the_lungs_on_a_chest_ct(chest_ct, chest_segmentation):
    """Per axial slice of the chest CT, the enclosed air (cm²) is the area of slicerio's hand-made lung segments
    within 5 % wherever the lungs cover 100 cm² or more; above the lungs it is a few cm² (the airway); the air
    around the body, here 60 mm of padding, is not counted."""
    air = enclosed_air_cm2(chest_ct)
    lungs = segment_mask(chest_segmentation, "left lung") | segment_mask(chest_segmentation, "right lung")
    lung_cm2 = lungs.sum(axis=(1, 2)) * chest_ct.GetSpacing()[0] * chest_ct.GetSpacing()[1] / 100.0
    big = lung_cm2 >= 100.0
    assert big.sum() >= 20
    assert np.all(np.abs(air[big] / lung_cm2[big] - 1.0) < 0.05)
    assert air[lung_cm2 == 0].max() < 20.0
    pad = [int(round(60 / s)) for s in chest_ct.GetSpacing()[:2]] + [0]
    np.testing.assert_allclose(enclosed_air_cm2(sitk.ConstantPad(chest_ct, pad, pad, -1000.0)), air)


def _sagittal(image: sitk.Image) -> sitk.Image:
    """The same voxels at the same places, stored as a sagittal series: its array axes are the axial array's
    (x reversed, z, y); its direction is a signed permutation, not a diagonal."""
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 0, 1))[::-1]))
    columns = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    out.SetSpacing((spacing[1], spacing[2], spacing[0]))
    out.SetDirection(np.stack([columns[:, 1], columns[:, 2], -columns[:, 0]], axis=1).ravel().tolist())
    out.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0, 0)))
    return out


@pytest.mark.parametrize("layout", ["axial, flipped x and y", "sagittal"])
def test_mapping_back_in_torch_gives_what_simpleitk_gives(chest_ct, chest_segmentation, monkeypatch, layout):
    """Parallel axes take the separable torch path; its values are SimpleITK's (float32 to 1e-4, uint8 a step
    apart at most, at under 0.1 % of the voxels), on a real mask's model-grid map and a block of it."""
    from PromptSegLib.preprocessing import preprocess

    image = chest_ct if layout.startswith("axial") else _sagittal(chest_ct)
    assert preprocess.signed_permutation(image.GetDirection()) is not None  # the torch path is taken
    truth = segment_mask(chest_segmentation, "left lung")
    prepared = prepare(image, "CT", 2.0)
    mask_image = sitk.GetImageFromArray(truth.astype(np.float32))
    mask_image.CopyInformation(chest_ct)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(mask_image, prepared.grid, sitk.Transform(), sitk.sitkLinear, 0.0))
    inner = tuple(slice(n // 5, n - n // 4) for n in on_grid.shape)
    cases = [(on_grid, (0, 0, 0), sitk.sitkFloat32), (on_grid[inner] * 255 + 0.5, tuple(s.start for s in inner),
                                                        sitk.sitkUInt8)]
    for values, start, pixel_type in cases:
        fast, fast_box = to_original_box(values, start, prepared, pixel_type)
        with monkeypatch.context() as patch:
            patch.setattr(preprocess, "signed_permutation", lambda direction: None)
            slow, slow_box = to_original_box(values, start, prepared, pixel_type)
        assert fast_box == slow_box and fast.shape == slow.shape and fast.dtype == slow.dtype
        if pixel_type == sitk.sitkFloat32:
            assert slow.max() > 0.99 and np.abs(fast - slow).max() < 1e-4
        else:
            steps = np.abs(fast.astype(int) - slow.astype(int))
            assert slow.max() == 255 and steps.max() <= 1 and (steps > 0).mean() < 1e-3
    back = to_original_box(on_grid, (0, 0, 0), prepared)[0]
    if layout == "sagittal":  # the same anatomy as on the axial series
        back = np.transpose(back[::-1], (1, 2, 0))
    assert dice(back >= 0.5, truth) > 0.95


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_linear_on_axes_leaves_zeros_wherever_a_point_lies_outside_the_source(dtype):
    """Points beyond the source on any axis (ITK's rule: outside [-0.5, n - 0.5)) get 0, the others trilinear
    interpolation with the edge's value beyond it (scipy's order-1 ``nearest``), on increasing and decreasing
    indices; an axis with no point inside gives zeros."""
    from scipy.ndimage import map_coordinates

    values = np.random.default_rng(3).random((5, 6, 7)).astype(np.float32) * (250 if dtype == torch.uint8 else 1)
    axes = [np.linspace(-1.2, 5.3, 9), np.linspace(-0.7, 6.1, 8), np.linspace(7.4, -0.9, 10)]
    out = linear_on_axes(torch.from_numpy(values), axes, dtype).numpy()
    points = np.stack(np.meshgrid(*axes, indexing="ij"))
    expected = map_coordinates(values, points, order=1, mode="nearest")
    inside = np.ones(out.shape, bool)
    for axis, (coordinates, size) in enumerate(zip(axes, values.shape)):
        shape = [1, 1, 1]
        shape[axis] = -1
        inside &= ((coordinates >= -0.5) & (coordinates < size - 0.5)).reshape(shape)
    assert 0 < inside.sum() < inside.size
    expected = np.where(inside, expected, 0.0)
    if dtype == torch.uint8:
        assert np.abs(out.astype(int) - np.trunc(expected).astype(int)).max() <= 1
        assert (out[~inside] == 0).all() and out[inside].min() > 0
    else:
        assert np.allclose(out, expected, atol=1e-5)
    nowhere = [axes[0], np.array([-3.0, 6.0]), axes[2]]
    assert not linear_on_axes(torch.from_numpy(values), nowhere, dtype).numpy().any()

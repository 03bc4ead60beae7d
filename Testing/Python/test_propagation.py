"""Slice propagation: the training-sample rules, propagation mechanics (user-fixed slices, range, cancel,
SSIM re-prompting, memory), bad inputs, the model folder, the commands, and the bundled checkpoint's Dice
on held-out real volumes (the floor its model card states)."""
from __future__ import annotations

import json
import threading
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk

from PromptSegLib.cli.main import main
from PromptSegLib.errors import Cancelled, InputImageError, ModelError, PromptSegError
from PromptSegLib.propagate.card import TEST_FLOORS
from PromptSegLib.propagate.data import LabelledVolume, load_volume
from PromptSegLib.train.datasets import load_spec
from PromptSegLib.propagate.evaluation import dice_by_distance, largest_slice
from PromptSegLib.propagate.geometry import take_slice
from PromptSegLib.propagate.model import (BUNDLED_PROPAGATION_MODEL, PropagationModel, load_propagation_model,
                                          save_propagation_model)
from PromptSegLib.propagate.net import PromptUNet2D, PropagationNetConfig
from PromptSegLib.propagate.propagator import Propagator, RegionContrast, kept_contrast, propagate, region_contrast
from PromptSegLib.propagate.samples import SampleGenerator, corrupt_prompt
from PromptSegLib.propagate.training import calibrate_threshold, choose_threshold, refresh_card, train_propagation

from conftest import REPO, SHARED, needs_shared

SPEC = REPO / "Resources" / "Training" / "propagation.json"
needs_data = needs_shared("sts_pet_ct_mr")


# ------------------------------------------------------------------------------------------------ helpers
def ball_volume(shape=(40, 48, 48), name="balls") -> LabelledVolume:
    """Two labelled ellipsoids; the image is the label drawn in intensities over a gentle background ramp."""
    z, y, x = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    label[((z - 20) / 12.0) ** 2 + ((y - 20) / 9.0) ** 2 + ((x - 18) / 8.0) ** 2 <= 1] = 1
    label[((z - 22) / 8.0) ** 2 + ((y - 30) / 6.0) ** 2 + ((x - 32) / 7.0) ** 2 <= 1] = 2
    image = (1000.0 * (label > 0) + 2.0 * x).astype(np.float32)
    return LabelledVolume(name, image, label, {"a": [1], "b": [2]})


class CopyForward(Propagator):
    """A stand-in network: the prompt mask carried over unchanged, vanishing on constant (blank) slices."""

    def __init__(self):
        self.model = PropagationModel.untrained(seed=0)
        self.config = self.model.config
        self.calls = 0

    def predict_boxes(self, q, p, m):
        self.calls += 1
        return m if q.any() else np.zeros_like(m)


def cylinder(slices=30, side=40) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.indices((slices, side, side))
    mask = (y - side / 2) ** 2 + (x - side / 2) ** 2 <= 64
    image = (np.sin(x / 3.0) * 50 + 500 * mask + y).astype(np.float32)
    return image, mask


@pytest.fixture(scope="module")
def bundled() -> Propagator:
    if not BUNDLED_PROPAGATION_MODEL.is_dir():
        pytest.skip("no bundled propagation model")
    return Propagator(None, threads=1)


# --------------------------------------------------------------------------------------- training samples
def test_samples_follow_the_rules():
    volume = ball_volume()
    generator = SampleGenerator([volume], v=3, size=32, seed=1, end_fraction=0.0)
    cropped = 0
    for _ in range(200):
        s = generator()
        assert 1 <= abs(s.prompt_index - s.query_index) <= 3
        assert s.axis in (0, 1, 2) and 1 <= len(s.units) <= 4 and len(set(s.units)) == len(s.units)
        query_mask = take_slice(volume.mask(s.units), s.axis, s.query_index)
        prompt_mask = take_slice(volume.mask(s.units), s.axis, s.prompt_index)
        assert (query_mask & prompt_mask).any(), "query and prompt masks must overlap"
        assert 0.0 <= s.dropped_fraction <= 0.3
        for array in (s.query, s.prompt_image, s.prompt_mask, s.target):
            assert array.shape == (32, 32) and array.dtype == np.float32
        assert 0.0 <= s.query.min() and s.query.max() <= 1.0
        cropped += s.cropped
    assert 0.6 <= cropped / 200 <= 0.8  # 70 % crops
    assert {len(generator().units) for _ in range(100)} == {1, 2}  # both structures get merged sometimes
    assert {generator().axis for _ in range(60)} == {0, 1, 2}


def test_past_the_end_samples_have_an_empty_target_next_to_the_structure():
    volume = ball_volume()
    generator = SampleGenerator([volume], v=3, size=32, seed=2, end_fraction=1.0)
    for _ in range(50):
        s = generator()
        slices = volume.presence[s.axis][s.units[0]]
        assert len(s.units) == 1 and s.target.sum() == 0 and s.prompt_index in slices
        assert s.query_index not in slices
        assert 1 <= min(abs(s.query_index - slices[0]), abs(s.query_index - slices[-1])) <= 3
        assert 1 <= abs(s.query_index - s.prompt_index) <= 3
    mixed = SampleGenerator([volume], v=3, size=32, seed=2)  # default: 10 %
    assert 0.03 <= np.mean([mixed().target.sum() == 0 for _ in range(300)]) <= 0.2


def test_past_the_end_samples_of_a_structure_on_the_volume_edge_stay_inside_it():
    label = np.zeros((20, 32, 32), np.uint8)
    label[19, 10:20, 10:20] = 1  # one slice thick, on the last slice: a prompt 1-2 slices "inside" would leave
    image = (1000.0 * label + np.indices(label.shape)[2]).astype(np.float32)
    generator = SampleGenerator([LabelledVolume("edge", image, label, {"a": [1]})], v=3, size=32, seed=0,
                                end_fraction=1.0)
    samples = [generator() for _ in range(30)]
    assert all(s.target.sum() == 0 and 0 <= s.prompt_index < 20 for s in samples)


def test_synchronized_augmentation_keeps_image_and_mask_aligned():
    volume = ball_volume()
    generator = SampleGenerator([volume], v=2, size=48, seed=3)
    for _ in range(40):
        s = generator()
        bright = s.query > 0.5  # the structure is the bright part of the image
        union = take_slice(volume.label > 0, s.axis, s.query_index)
        if union.sum() > take_slice(volume.mask(s.units), s.axis, s.query_index).sum():
            continue  # another structure shares the slice: brightness is the union, not the target
        if s.target.sum() < 20:
            continue  # past a structure's end or at its tip: the slice's normalised brightness is background
        assert (bright == (s.target > 0.5)).mean() > 0.97
        # the prompt mask (after corruption, which only drops pixels by default) stays inside the bright part
        inside = (s.prompt_image > 0.5)[s.prompt_mask > 0.5]
        assert inside.size == 0 or inside.mean() > 0.95
    grown = SampleGenerator([volume], v=2, size=48, seed=3, grow_fraction=1.0)
    added = [s.dropped_fraction for s in (grown() for _ in range(40))]
    assert max(added) <= 0.0 and min(added) < -0.05  # every prompt gained pixels


def test_prompt_corruption_drops_or_adds_the_asked_fraction_of_foreground():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), np.float32)
    mask[5:25, 10:30] = 1
    for fraction in (0.0, 0.1, 0.3):
        for _ in range(5):
            out, dropped = corrupt_prompt(mask, fraction, rng)
            assert np.all(out <= mask)
            assert mask.sum() - out.sum() == int(np.floor(fraction * mask.sum()))
            assert dropped == pytest.approx((mask.sum() - out.sum()) / mask.sum())
            grown, added = corrupt_prompt(mask, fraction, rng, grow=True)
            assert np.all(grown >= mask)  # the mask is kept whole, pixels only join it
            assert grown.sum() - mask.sum() == int(np.floor(fraction * mask.sum()))
            assert added == pytest.approx(-(grown.sum() - mask.sum()) / mask.sum())
            assert ndimage.label(grown)[1] == 1  # added next to the mask, never as islands
    kinds = set()
    for _ in range(40):  # an even margin, or one bulge on one side
        grown, _ = corrupt_prompt(mask, 0.2, rng, grow=True)
        sides = [(grown[:5] > 0).any(), (grown[25:] > 0).any(), (grown[:, :10] > 0).any(), (grown[:, 30:] > 0).any()]
        kinds.add(sum(sides))
    assert 4 in kinds and min(kinds) <= 2


def test_network_shapes_and_fusion():
    import torch

    net = PromptUNet2D(PropagationNetConfig((4, 8, 16)))
    x = torch.rand(2, 1, 32, 32)
    assert net(x, x, (x > 0.5).float()).shape == (2, 1, 32, 32)
    assert len(net.image_encoder.blocks) == len(net.prompt_encoder.blocks) == 3
    assert net.prompt_encoder.blocks[0][0].in_channels == 2 and net.image_encoder.blocks[0][0].in_channels == 1


# ------------------------------------------------------------------------------------------------ mechanics
def test_propagates_up_then_down_within_range():
    image, mask = cylinder()
    seeded = np.zeros_like(mask)
    seeded[12] = mask[12]
    result = propagate(CopyForward(), image, seeded, 12, "axial", start=5, stop=20)
    assert result.written == list(range(13, 21)) + list(range(11, 4, -1))
    assert np.array_equal(result.mask[5:21], mask[5:21])
    assert not result.mask[:5].any() and not result.mask[21:].any()
    assert not seeded[13].any(), "the input mask is never modified"


def test_other_axes():
    image, mask = cylinder()
    seeded = np.zeros_like(mask)
    seeded[:, 20] = mask[:, 20]
    # the stand-in network carries the mask past the cylinder's sides: the stopping rule (tested on its own) off
    result = propagate(CopyForward(), image, seeded, 20, "coronal", min_contrast=0)
    assert sorted(result.written) == [j for j in range(40) if j != 20]
    assert np.array_equal(result.mask[:, 5], mask[:, 20]) and np.array_equal(result.mask[:, 20], mask[:, 20])


def test_user_fixed_slices_are_never_overwritten_and_propagation_restarts_there():
    image, mask = cylinder()
    seeded = np.zeros_like(mask)
    seeded[10] = mask[10]
    first = propagate(CopyForward(), image, seeded, 10).mask
    corrected = np.zeros_like(mask[0])
    corrected[18:23, 18:23] = True  # the user redraws slice 16 smaller
    fixed = {10: mask[10], 16: corrected, 25: np.zeros_like(corrected)}
    result = propagate(CopyForward(), image, first, 16, fixed=fixed)
    assert np.array_equal(result.mask[16], corrected) and np.array_equal(result.mask[10], mask[10])
    assert not result.mask[25].any()
    assert 10 not in result.written and 25 not in result.written and 16 not in result.written
    assert all(np.array_equal(result.mask[j], corrected) for j in range(11, 25))  # restarted from slice 16
    assert np.array_equal(result.mask[:10], first[:10]), "beyond a fixed slice nothing changes"
    assert "fixed slice" in result.stopped[+1] and "fixed slice" in result.stopped[-1]


def test_stops_when_the_mask_vanishes():
    image, mask = cylinder()
    image[22:] = 7.0  # blank slices: the stand-in network returns nothing there
    seeded = np.zeros_like(mask)
    seeded[15] = mask[15]
    result = propagate(CopyForward(), image, seeded, 15)
    assert max(result.written) == 21 and "vanished at slice 22" in result.stopped[+1]
    assert not result.mask[22:].any()


def test_stops_where_the_structure_fades_when_it_was_visible():
    image, mask = cylinder()
    ends = image - 500 * mask * (np.arange(30) >= 20)[:, None, None]  # the structure ends at slice 19
    seeded = np.zeros_like(mask)
    seeded[10] = mask[10]
    result = propagate(CopyForward(), ends, seeded, 10)  # the stand-in network carries the mask on regardless
    assert max(result.written) == 19 and "faded at slice 20" in result.stopped[+1]
    assert not result.mask[20:].any() and np.array_equal(result.mask[:20], mask[:20])
    assert max(propagate(CopyForward(), ends, seeded, 10, min_contrast=0).written) == 29  # the rule off
    faint = image - 495 * mask * (np.arange(30) >= 20)[:, None, None] - 495 * mask  # barely visible anywhere
    assert max(propagate(CopyForward(), faint, seeded, 10).written) == 29, "a faint structure cannot be seen to fade"


def test_region_contrast():
    image = np.zeros((20, 20), np.float32)
    image[5:10, 5:10] = 10.0
    image += np.random.default_rng(0).normal(0, 1, image.shape).astype(np.float32)
    bright = np.zeros((20, 20), bool)
    bright[5:10, 5:10] = True
    contrast = region_contrast(image, bright)
    assert 9 < contrast.inside - contrast.around < 11 and contrast.d > 3
    assert region_contrast(-image, bright).d == pytest.approx(-contrast.d)
    assert region_contrast(image, np.zeros_like(bright)) is None
    assert region_contrast(image, np.ones_like(bright)) is None  # no ring around the whole slice
    assert region_contrast(np.ones_like(image), bright) == (1.0, 1.0, 0.0)
    assert region_contrast(bright * 2.0, bright) == (2.0, 0.0, np.inf)
    # a region keeps the prompt's contrast if it stands out from its own ring or from the prompt slice's ring
    reference = RegionContrast(10.0, 0.0, 3.0)
    assert kept_contrast(RegionContrast(10.0, 0.0, 3.0), reference) == 1.0
    assert kept_contrast(RegionContrast(10.0, 9.0, 0.1), reference) == 1.0  # too small a mask: its ring is inside
    assert kept_contrast(RegionContrast(25.0, 20.0, 2.0), reference) == 2.5  # brighter slice: contrast kept
    assert kept_contrast(RegionContrast(1.0, 0.5, 0.1), reference) == 0.1  # faded
    dark = RegionContrast(-10.0, 0.0, -3.0)  # a structure darker than its surroundings (lung on CT)
    assert kept_contrast(RegionContrast(-10.0, -9.0, -0.1), dark) == 1.0
    assert kept_contrast(RegionContrast(-1.0, 0.0, -0.1), dark) == 0.1


def test_choose_threshold_keeps_the_near_prompt_dice():
    scores = {0.5: {"+-5": 0.90, "+-10": 0.85, "whole": 0.60}, 0.6: {"+-5": 0.91, "+-10": 0.85, "whole": 0.66},
              0.7: {"+-5": 0.89, "+-10": 0.86, "whole": 0.70}}
    assert choose_threshold(scores, 0.5) == 0.6
    assert choose_threshold({0.5: scores[0.5]}, 0.5) == 0.5
    with pytest.raises(PromptSegError, match="not among"):
        choose_threshold(scores, 0.4)


def test_ssim_drop_reprompts_from_the_buffer():
    image, mask = cylinder(slices=12)
    image[5] = np.random.default_rng(0).normal(0, 300, image[5].shape)  # one slice unlike its neighbours
    seeded = np.zeros_like(mask)
    seeded[0] = mask[0]
    # the noise hides the cylinder on slice 5: the stopping rule would end propagation there
    assert 6 in propagate(CopyForward(), image, seeded, 0, ssim_threshold=0.6, min_contrast=0).reprompts
    assert propagate(CopyForward(), image, seeded, 0, ssim_threshold=-1.0, min_contrast=0).reprompts == []


def test_cancel_leaves_the_mask_unchanged_and_progress_reports():
    image, mask = cylinder()
    seeded = np.zeros_like(mask)
    seeded[10] = mask[10]
    before = seeded.copy()
    cancel, seen = threading.Event(), []

    def progress(fraction, message):
        seen.append(fraction)
        if len(seen) == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        propagate(CopyForward(), image, seeded, 10, progress=progress, cancel=cancel)
    assert np.array_equal(seeded, before)
    seen.clear()
    propagate(CopyForward(), image, seeded, 10, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_memory_does_not_grow_with_the_number_of_slices():
    held, extra = [], []
    for slices in (20, 200):
        image, mask = cylinder(slices=slices, side=64)
        seeded = np.zeros_like(mask)
        seeded[slices // 2] = mask[slices // 2]
        tracemalloc.start()
        result = propagate(CopyForward(), image, seeded, slices // 2)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(result.written) == slices - 1
        held.append(result.max_slices_held)
        extra.append(peak - result.mask.nbytes)  # beyond the output itself
    assert held[0] == held[1] <= 5
    assert extra[1] < extra[0] + 256 * 1024, f"working memory grew with the volume: {extra}"


def test_bad_inputs():
    image, mask = cylinder()
    propagator = CopyForward()
    with pytest.raises(PromptSegError, match="holds no mask"):
        propagate(propagator, image, mask, 5, fixed={5: np.zeros_like(mask[5])})  # the user erased it
    empty = np.zeros_like(mask)
    with pytest.raises(PromptSegError, match="holds no mask"):
        propagate(propagator, image, empty, 5)
    for outside in (-1, 30, 100):
        with pytest.raises(PromptSegError, match="outside the volume"):
            propagate(propagator, image, mask, outside)
    with pytest.raises(InputImageError, match="3D"):
        propagate(propagator, image[0], mask[0], 0)
    with pytest.raises(InputImageError, match="does not match"):
        propagate(propagator, image, mask[:, :-1], 5)
    with pytest.raises(PromptSegError, match="axis"):
        propagate(propagator, image, mask, 5, axis="oblique")
    with pytest.raises(PromptSegError, match="range"):
        propagate(propagator, image, mask, 5, start=8, stop=20)
    with pytest.raises(PromptSegError, match="threshold 1.5"):
        propagate(propagator, image, mask, 5, threshold=1.5)
    with pytest.raises(PromptSegError, match="min_contrast"):
        propagate(propagator, image, mask, 5, min_contrast=-0.1)


# --------------------------------------------------------------------------------------------- model folder
def test_model_folder_round_trip_and_tampering(tmp_path):
    model = PropagationModel.untrained()
    folder = save_propagation_model(tmp_path / "prop", model, "# card\n")
    loaded = load_propagation_model(folder)
    assert loaded.config.to_dict() == model.config.to_dict()
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "promptseg-propagation-model"
    (folder / "config.json").write_text(json.dumps({**config, "input_size": 64}))
    with pytest.raises(ModelError, match="sha256"):
        load_propagation_model(folder)
    from PromptSegLib.models.folder import load_model

    fresh = save_propagation_model(tmp_path / "prop2", model, "# card\n")
    with pytest.raises(ModelError, match="not a PromptSeg DuPLUS"):
        load_model(fresh)


@needs_data
def test_train_propagation_writes_a_model_with_card(tmp_path):
    spec = {"datasets": [{"name": "sts_pet", "modality": "PET", "labels": {"1": "GTV"}, "cases": [
        {"id": f"STS_00{i}", "split": "val" if i == 3 else "train",
         "image": str(SHARED / f"sts_pet_ct_mr/nifti/STS_00{i}/PET_image.nii.gz"),
         "label": str(SHARED / f"sts_pet_ct_mr/nifti/STS_00{i}/PET_mask.nii.gz")} for i in (1, 2, 3)]}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    folder = train_propagation(tmp_path / "spec.json", tmp_path / "model", steps=2, widths=(4, 8), batch_size=2,
                               input_size=32, command="promptseg train-propagation spec.json -o model")
    model = load_propagation_model(folder)
    assert model.config.training["steps"] == 2 and model.config.network.widths == (4, 8)
    card = (folder / "README.md").read_text()
    assert "promptseg train-propagation spec.json -o model" in card and "STS_003" in card and "| all | 1 |" in card
    chosen = calibrate_threshold(folder, tmp_path / "spec.json", candidates=(0.6,), per_dataset=1, command="calib")
    calibrated = load_propagation_model(folder)  # config.json and SHA256SUMS replaced together
    assert calibrated.config.threshold == chosen in (0.5, 0.6)
    assert calibrated.config.training["threshold_calibration"]["cases"] == ["sts_pet/STS_001"]
    refresh_card(folder, tmp_path / "spec.json")
    assert f"Probability threshold {chosen:g} (was 0.5)" in (folder / "README.md").read_text()


@needs_data
def test_train_propagation_resumes_from_its_checkpoint_in_a_later_session(tmp_path):
    """The shared training loop: checkpoints in the work folder, ``resume`` continues the step count and the
    card counts both sessions; a session's time budget stops it with its steps kept."""
    spec = {"datasets": [{"name": "sts_pet", "modality": "PET", "labels": {"1": "GTV"}, "cases": [
        {"id": "STS_001", "image": str(SHARED / "sts_pet_ct_mr/nifti/STS_001/PET_image.nii.gz"),
         "label": str(SHARED / "sts_pet_ct_mr/nifti/STS_001/PET_mask.nii.gz")}]}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    settings = dict(widths=(4, 8), batch_size=2, input_size=32, evaluate=False, work_dir=tmp_path / "work",
                    checkpoint_every=1)
    train_propagation(tmp_path / "spec.json", tmp_path / "model", steps=2, **settings)
    assert (tmp_path / "work" / "checkpoint.pt").is_file()
    spent = train_propagation(tmp_path / "spec.json", tmp_path / "model", steps=4, minutes=0.0, resume=True,
                              **settings)  # no time: no step
    assert load_propagation_model(spent).config.training["steps"] == 2
    folder = train_propagation(tmp_path / "spec.json", tmp_path / "model", steps=4, resume=True, **settings)
    rows = (tmp_path / "work" / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4]
    model = load_propagation_model(folder)
    assert model.config.training["steps"] == 4
    assert [(s["from"], s["to"]) for s in model.config.training["sessions"]] == [(0, 2), (2, 4)]
    assert "2 sessions (resumed from checkpoints): steps 1-2" in (folder / "README.md").read_text()


# ---------------------------------------------------------------------------------------- real data, CLI
def held_out(dataset_name: str, case_id: str) -> LabelledVolume:
    dataset = next(d for d in load_spec(SPEC, as_written=True) if d.name == dataset_name)
    case = next(c for c in dataset.cases if c.id == case_id)
    assert case.split == "val"
    return load_volume(dataset, case)


@needs_data
@pytest.mark.parametrize("where, dataset, case, values", [
    ("STS_030 CT (GTV)", "sts_ct", "STS_030", [1]),
    ("BRATS pat0006 FLAIR (whole tumour)", "brats_flair", "pat0006", [1, 2, 3, 4]),
    ("TotalSegmentator DICOM CT (liver)", "ts_ct_organs", "ts_ct_dicom", [5])])
def test_bundled_model_dice_on_held_out_volumes(bundled, where, dataset, case, values):
    key, floor = TEST_FLOORS[where]
    volume = held_out(dataset, case)
    truth = np.isin(volume.label, values)
    k = largest_slice(truth)
    seeded = np.zeros_like(truth)
    seeded[k] = truth[k]
    result = propagate(bundled, volume.image, seeded, k)
    assert dice_by_distance(result.mask, truth, k)[key] >= floor
    assert f"Dice {key} of at least {floor} on held-out {where}" in (BUNDLED_PROPAGATION_MODEL / "README.md").read_text()


@needs_data
def test_propagate_command_writes_a_segmentation(tmp_path, bundled, capsys):
    folder = SHARED / "sts_pet_ct_mr" / "nifti" / "STS_030"
    truth = sitk.ReadImage(str(folder / "CT_mask.nii.gz"))
    array = sitk.GetArrayFromImage(truth)
    k = largest_slice(array > 0)
    drawn = np.zeros_like(array)
    drawn[k] = array[k]
    prompt = sitk.GetImageFromArray(drawn)
    prompt.CopyInformation(truth)
    sitk.WriteImage(prompt, str(tmp_path / "drawn.nii.gz"))
    out = tmp_path / "gtv.seg.nrrd"
    code = main(["propagate", str(folder / "CT_image.nii.gz"), "--mask", str(tmp_path / "drawn.nii.gz"),
                 "--slice", str(k), "--axis", "axial", "-o", str(out), "-q"])
    assert code == 0 and out.is_file()
    from PromptSegLib.export.segfile import read_segments

    masks = read_segments(out, sitk.ReadImage(str(folder / "CT_image.nii.gz")))
    result = next(iter(masks.values()))
    assert dice_by_distance(result, array > 0, k)["+-10"] >= TEST_FLOORS["STS_030 CT (GTV)"][1]
    # a user-corrected slice kept with --keep: left as drawn, and propagation upwards stops there
    drawn[k + 3] = array[k + 3]
    kept = sitk.GetImageFromArray(drawn)
    kept.CopyInformation(truth)
    sitk.WriteImage(kept, str(tmp_path / "kept.nii.gz"))
    assert main(["propagate", str(folder / "CT_image.nii.gz"), "--mask", str(tmp_path / "kept.nii.gz"),
                 "--slice", str(k), "--keep", str(k + 3), "-o", str(tmp_path / "kept_out.nii.gz"), "-q"]) == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "kept_out.nii.gz"))) > 0
    assert np.array_equal(written[k + 3], array[k + 3] > 0) and not written[k + 4:].any()
    assert main(["propagate", str(folder / "CT_image.nii.gz"), "--mask", str(tmp_path / "drawn.nii.gz"),
                 "--slice", "0", "-o", str(tmp_path / "x.nii.gz"), "-q"]) == 2
    assert "holds no mask" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
    assert main(["propagate", str(folder / "CT_image.nii.gz"), "--mask", str(tmp_path / "drawn.nii.gz"),
                 "--slice", "9999", "-o", str(tmp_path / "x.nii.gz"), "-q"]) == 2
    assert "outside the volume" in capsys.readouterr().err


@pytest.mark.parametrize("grow", [0.0, 0.3])
def test_the_card_says_what_this_models_own_training_record_says(grow):
    """The card's hardware, torch version, steps, time and volumes come from the model's training record, not
    from text written for an earlier model ("trained briefly on a CPU", its measured counts)."""
    from dataclasses import replace

    from PromptSegLib.propagate.card import model_card

    config = load_propagation_model(BUNDLED_PROPAGATION_MODEL).config
    training = {**config.training, "hardware": "NVIDIA H200", "torch": "9.9.9", "steps": 1234, "seconds": 600.0,
                "grow_fraction": grow, "cases": {"a": {"train": 30, "val": 3}, "b": {"train": 12}}}
    card = model_card(replace(config, training=training), [], "promptseg train-propagation x", 600.0, "", [])
    assert "on NVIDIA H200" in card and "torch 9.9.9" in card
    assert "Trained for 1234 steps (10 min) on 42 training volumes." in card
    assert "CPU" not in card and "40 of 52" not in card

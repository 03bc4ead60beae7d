"""Results held one target at a time, each inside its own box as 1/255 steps (issue 15), give what the whole-grid
path gave: every target's model-grid map resampled onto the whole input grid and post-processed there, as
``Segmenter.segment`` did before. Checked with the bundled models on real CTs they were not trained on."""
from __future__ import annotations

import warnings

import numpy as np
import SimpleITK as sitk

from PromptSegLib.metrics import dice
from PromptSegLib.preprocessing.preprocess import body_areas_cm2, enclosed_air_cm2, prepare, resample_to
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.segment.postprocess import ImplausibleResultWarning, postprocess
from PromptSegLib.segment.probability import ProbabilityMap
from PromptSegLib.text.vocabulary import side_of

from conftest import SHARED, needs_shared

HN_CT = SHARED / "openkbp_hn_ct" / "validation" / "pt_235" / "ct.nii.gz"
ABDOMEN_CT = SHARED / "totalsegmentator_example" / "ct_3mm" / "example_ct.nii.gz"
HN_ORGANS = ["brain stem", "spinal cord", "right parotid", "left parotid", "esophagus", "larynx", "mandible"]
ABDOMEN_ORGANS = ["liver", "spleen", "left kidney", "right kidney", "aorta"]


def whole_grid_path(segmenter: Segmenter, image: sitk.Image, region: str,
                    targets: list[str]) -> tuple[np.ndarray, list[str]]:
    """float32 ``(T, Z, Y, X)`` probabilities as ``segment`` made them before: all targets on the whole input
    grid, then post-processed together; and the warnings it gave."""
    config = segmenter.model.config
    modality, queries, context = segmenter.check_request("CT", region, targets)
    prepared = prepare(image, modality, config.spacing_mm, segmenter.intensity_rule(modality))
    channels = []
    for channel in segmenter.predict_on_model_grid(prepared, modality, context, queries).numpy():
        moving = sitk.GetImageFromArray(channel)
        moving.CopyInformation(prepared.grid)
        channels.append(sitk.GetArrayFromImage(resample_to(moving, image)))
    probabilities = np.clip(np.stack(channels), 0.0, 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        postprocess(probabilities, [q.name for q in queries], config.threshold,
                    float(np.prod(image.GetSpacing())) / 1000.0, config.largest_component, config.plausible_ml,
                    {q.name: side_of(q.target) for q in queries if q.name in config.own_side and side_of(q.target)},
                    image, config.widest_body_cm2, body_areas_cm2(image) if config.widest_body_cm2 else None, (0, 0, 0),
                    None, config.most_air_cm2, enclosed_air_cm2(image) if config.most_air_cm2 else None)
    return probabilities, sorted(str(w.message) for w in caught if w.category is ImplausibleResultWarning)


def assert_same_result(segmenter: Segmenter, image: sitk.Image, region: str,
                       targets: list[str]) -> tuple[list[float], list[str]]:
    """The new path against the whole-grid path (float32 sums): each voxel's probability within a 1/255 step
    (under 1 % of them beyond half a step) but for a few in 10^5 (the float16 sums move a probability by up to
    about 0.003, so a voxel at the threshold can join or leave a piece that post-processing keeps or removes),
    masks with Dice >= 0.999, the same warnings. Returns each target's Dice, the warnings."""
    expected, expected_warnings = whole_grid_path(segmenter, image, region, targets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segmenter.segment(image, "CT", region, targets)
    assert sorted(str(w.message) for w in caught if w.category is ImplausibleResultWarning) == expected_warnings
    scores = []
    for index, name in enumerate(targets):
        old = expected[index] >= result.threshold
        scores.append(dice(result.mask(index), old))
        assert scores[-1] >= 0.999, (name, scores[-1])
        error = np.abs(result.probability(index) - expected[index])
        assert (error > 1 / 255 + 1e-6).mean() < 1e-5 and (error > 0.5 / 255 + 1e-6).mean() < 0.01, name
    return scores, expected_warnings


@needs_shared("openkbp_hn_ct", "validation", "pt_235")
def test_head_and_neck_organs_as_the_whole_grid_path_gave_them():
    """Seven organs on a head-and-neck CT the model never saw (largest piece, own side and plausible size all
    at work), with the region check on: the mandible given a training width far below this head's, so that
    both paths empty it with the same warning."""
    segmenter = Segmenter("promptseg-hn-oars", device="cpu")
    image = sitk.ReadImage(str(HN_CT))
    segmenter.model.config.widest_body_cm2 = {name: 1000.0 for name in HN_ORGANS} | {"mandible": 50.0}
    segmenter.model.config.anchored = {}  # newer than the whole-grid path (and the emptied mandible would take
    # the organs anchored to it along: test_postprocess, test_hn_model)
    scores, said = assert_same_result(segmenter, image, "head and neck", HN_ORGANS)
    assert len(scores) == 7 and len(said) == 1 and said[0].startswith("mandible: found where the body's")


@needs_shared("totalsegmentator_example", "ct_3mm")
def test_default_model_on_an_abdominal_ct_as_the_whole_grid_path_gave_it():
    """The bundled starter on the TotalSegmentator CT resampled to 0.78 x 0.78 x 1.5 mm, as scanners write it
    (its model grid is coarser than the input: each target's map is cut and resampled inside its box)."""
    ct = sitk.ReadImage(str(ABDOMEN_CT))
    spacing = (0.78, 0.78, 1.5)
    size = [int(n * s / t) for n, s, t in zip(ct.GetSize(), ct.GetSpacing(), spacing)]
    image = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), spacing, ct.GetDirection(),
                          -1024.0, sitk.sitkInt16)
    segmenter = Segmenter(None, device="cpu")
    scores, _ = assert_same_result(segmenter, image, "abdomen", ABDOMEN_ORGANS)
    assert len(scores) == len(ABDOMEN_ORGANS)


def test_a_map_rounds_to_steps_and_thresholds_like_its_floats():
    rng = np.random.default_rng(0)
    values = rng.random((20, 30, 40), dtype=np.float32)
    values[:5] = 0.0
    stored = ProbabilityMap.from_array(values)
    assert stored.box[0] == slice(5, 20) and stored.values.dtype == np.uint8
    assert np.abs(stored.dense() - values).max() <= 0.5 / 255 + 1e-7
    np.testing.assert_array_equal(stored.at_least(0.5), values >= 0.5)  # 0.5 is exactly half a step
    for threshold in (0.3, 0.77):
        np.testing.assert_array_equal(stored.at_least(threshold), stored.dense() >= threshold)
    assert stored.at_least(0.0).all()
    shifted = ProbabilityMap.from_array(values[5:], values.shape, (5, 0, 0))  # the same map given as its box
    assert shifted.box == stored.box and np.array_equal(shifted.values, stored.values)

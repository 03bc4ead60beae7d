"""Whole-volume inference mechanics on the real chest CT with a tiny untrained model (no quality claims)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptSegLib.errors import Cancelled, InputImageError, PromptError
from PromptSegLib.segment.inference import window_count


def test_result_is_on_the_input_grid(tiny_segmenter, chest_ct):
    result = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["left lung", "R lung"])
    assert result.probabilities.shape == (2, 34, 128, 128)
    assert result.probabilities.dtype == np.float32
    assert 0.0 <= result.probabilities.min() and result.probabilities.max() <= 1.0
    assert [q.name for q in result.queries] == ["left lung", "right lung"]
    assert result.context == "A computed tomography of the thorax"
    assert result.reference is chest_ct


def test_windows_past_a_short_scan_are_padded_as_the_model_was_trained(tiny_model_folder, chest_ct):
    """Ten 10 mm slices are fewer than a window holds: ``replicate`` repeats the end slices (a scan cut
    short), ``constant`` fills with the image minimum; the model's config decides, so the two differ."""
    from PromptSegLib.models.folder import load_model
    from PromptSegLib.segment.inference import Segmenter

    short = chest_ct[:, :, 12:22]
    results = {}
    for padding in ("replicate", "constant"):
        model = load_model(tiny_model_folder)
        model.config.padding = padding
        results[padding] = Segmenter(model, device="cpu").segment(short, "CT", "thorax", ["liver"]).probabilities
    assert np.abs(results["replicate"] - results["constant"]).max() > 1e-3


def test_target_prompt_switches_the_output(tiny_segmenter, chest_ct):
    result = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["left lung", "liver"])
    # results carry probabilities in steps of 1/255; this untrained model's two targets are a step or more
    # apart on 18 % of the voxels (mean difference 0.0024 on the model grid)
    assert (result.probability(0) != result.probability(1)).mean() > 0.1


def assert_same_steps(a: np.ndarray, b: np.ndarray) -> None:
    """Probabilities kept in 1/255 steps agree: equal, but for a voxel one step off where the network's float
    sums, added in another order, fall on the other side of a step's boundary (at most 1e-5 of the voxels; once 1
    of 557056, on the 2-core AMD EPYC)."""
    difference = np.abs(a - b)
    assert difference.max() <= 1 / 255 + 1e-6
    assert (difference > 1e-5).mean() <= 1e-5


def test_targets_do_not_change_each_other(tiny_segmenter, chest_ct):
    alone = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["aorta"]).probabilities[0]
    many = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["liver", "aorta", "spleen"]).probabilities[1]
    assert_same_steps(alone, many)


def test_windows_batched_or_one_by_one_give_the_same_probabilities(tiny_segmenter, chest_ct):
    one = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["liver"], sw_batch_size=1).probabilities
    two = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["liver"]).probabilities  # default: 2 per call
    three = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["liver"], sw_batch_size=3).probabilities
    assert_same_steps(one, two)
    assert_same_steps(one, three)


def test_progress_is_reported_and_cancel_stops(tiny_segmenter, chest_ct):
    seen = []
    tiny_segmenter.segment(chest_ct, "CT", "thorax", ["aorta"], progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 4
    flag = threading.Event()

    def cancel_midway(fraction, message):
        if fraction > 0.3:
            flag.set()

    with pytest.raises(Cancelled):
        tiny_segmenter.segment(chest_ct, "CT", "thorax", ["aorta"], progress=cancel_midway, cancel=flag)


def test_bad_prompts(tiny_segmenter, chest_ct):
    with pytest.raises(PromptError, match="nearest known: liver"):
        tiny_segmenter.segment(chest_ct, "CT", "thorax", ["livr"])
    with pytest.raises(PromptError, match="not trained for: pancreas"):
        tiny_segmenter.segment(chest_ct, "CT", "thorax", ["pancreas"])
    with pytest.raises(PromptError, match="no target"):
        tiny_segmenter.segment(chest_ct, "CT", "thorax", [])
    with pytest.raises(PromptError, match="region"):
        tiny_segmenter.segment(chest_ct, "CT", None, ["aorta"])


def test_untrained_target_on_request_and_raw_texts(tiny_segmenter, chest_ct):
    result = tiny_segmenter.segment(chest_ct, "CT", None, ["pancreas"], allow_untrained=True,
                                    target_texts=["A CT image of the aorta"], context_text="A CT of the chest")
    assert [q.name for q in result.queries] == ["pancreas", "aorta"]
    assert result.context == "A CT of the chest"


def test_modality_without_input_block(tiny_segmenter, chest_ct):
    with pytest.raises(InputImageError, match="no PET input"):
        tiny_segmenter.segment(chest_ct, "PET", "thorax", ["aorta"])


def test_windows_and_weights_are_monais():
    """The window positions (and so their count) and the Gaussian weights, computed without MONAI, are exactly
    MONAI's, including windows that fill a whole axis and overlaps from 0 to 0.9."""
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from PromptSegLib.segment.windows import gaussian_weights, window_slices

    for shape, roi, overlap in [((65, 65, 57), (64, 64, 57), 0.25), ((32, 100, 31), (32, 64, 31), 0.25),
                                ((200, 256, 256), (64, 64, 64), 0.25), ((244, 214, 264), (96, 96, 96), 0.25),
                                ((97, 300, 48), (96, 48, 48), 0.5), ((130, 130, 130), (32, 48, 64), 0.9),
                                ((100, 100, 100), (48, 48, 48), 0.0)]:
        interval = _get_scan_interval(shape, roi, 3, (overlap,) * 3)
        assert window_slices(shape, roi, overlap) == dense_patch_slices(shape, roi, interval), shape
        assert window_count(shape, roi, overlap) == len(dense_patch_slices(shape, roi, interval)), shape
    for roi in [(96, 96, 96), (48, 64, 64), (5, 7, 128)]:
        expected = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125, device="cpu", dtype=torch.float32)
        assert torch.equal(gaussian_weights(roi, torch.device("cpu")), expected), roi


def test_segmenting_does_not_import_monai(tiny_model_folder, chest_ct_path):
    """MONAI's import took 4.3 s of an 86 s request; inference computes its windows itself."""
    import subprocess
    import sys

    code = ("import sys, SimpleITK as sitk; from PromptSegLib.segment.inference import Segmenter; "
            f"r = Segmenter({str(tiny_model_folder)!r}, device='cpu').segment("
            f"sitk.ReadImage({str(chest_ct_path)!r}), 'CT', 'thorax', ['liver']); "
            "assert r.mask(0).shape == (34, 128, 128); print(sorted(m for m in sys.modules if m.startswith('monai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("shape, padding", [((70, 90, 100), "replicate"), ((40, 90, 66), "constant"),
                                            ((40, 50, 100), "replicate")])
def test_sliding_windows_sum_what_monai_sums(chest_ct, shape, padding):
    """Each target's map summed on its own gives MONAI's sliding-window mean: same windows, same Gaussian
    weights, the same padding of a volume smaller than a window; float16 sums stay within 0.003."""
    from monai.inferers import sliding_window_inference

    from PromptSegLib.segment.windows import sliding_windows

    image = torch.from_numpy(sitk.GetArrayFromImage(chest_ct).astype(np.float32))
    volume = ((torch.nn.functional.interpolate(image[None, None], size=shape, mode="trilinear")[0, 0] + 1000) / 500)
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 5, padding=2), torch.nn.Sigmoid()).eval()
    with torch.inference_mode():
        fill = {"cval": -2.0} if padding == "constant" else {}
        expected = sliding_window_inference(volume[None, None], (48, 64, 64), 2, network, overlap=0.25,
                                            mode="gaussian", padding_mode=padding, **fill)[0]
        exact = sliding_windows(volume, (48, 64, 64), 0.25, network, 3, 2, padding, -2.0)
        half = sliding_windows(volume, (48, 64, 64), 0.25, network, 3, 2, padding, -2.0, torch.float16)
    for target, (want, got, rough) in enumerate(zip(expected, exact, half)):
        assert got.shape == want.shape == shape and half[target].dtype == torch.float16
        assert torch.allclose(got, want, atol=1e-6), target
        assert (rough.float() - want).abs().max() < 3e-3 and (want.max() - want.min()) > 0.1


def test_closer_look_changes_only_the_box(tiny_segmenter, chest_ct):
    from PromptSegLib.segment.refine import closer_look, crop_box

    result = tiny_segmenter.segment(chest_ct, "CT", "thorax", ["aorta", "liver"])
    result.threshold = float(np.quantile(result.probabilities[0], 0.995))  # a small "target" for the test
    before = result.probabilities.copy()
    box = crop_box(result.mask(0), chest_ct, 15.0)
    refined = closer_look(tiny_segmenter, chest_ct, result, "CT", indices=[0], spacing_factor=0.5)
    assert refined == [0]
    outside = np.ones(before.shape[1:], bool)
    outside[box] = False
    np.testing.assert_array_equal(result.probabilities[0][outside], before[0][outside])
    np.testing.assert_array_equal(result.probabilities[1], before[1])
    assert not np.array_equal(result.probabilities[0][box], before[0][box])


def test_air_around_a_ct_is_background_and_costs_no_windows(tiny_segmenter, chest_ct):
    """The chest CT padded with 90 mm of air on each side in-plane: the windows stay inside the body box, so
    the padded scan takes no more windows than the original, and the air beyond the box is background (0)."""
    import SimpleITK as sitk

    pad = [int(round(90 / s)) for s in chest_ct.GetSpacing()[:2]] + [0]
    padded = sitk.ConstantPad(chest_ct, pad, pad, -1000.0)
    counts = []
    for image in (chest_ct, padded):
        seen = []
        result = tiny_segmenter.segment(image, "CT", "thorax", ["liver"], progress=lambda f, m: seen.append(m))
        counts.append(int(next(m for m in reversed(seen) if m.startswith("window")).split()[-1]))
    assert counts[1] == counts[0]
    probabilities = result.probabilities[0]
    assert (probabilities[:, :, : pad[0] - 6] == 0).all() and (probabilities[:, :, -pad[0] + 6:] == 0).all()


def test_bfloat16_on_a_cpu_without_its_kernels_runs_float32(monkeypatch):
    """Where oneDNN has no bfloat16 kernels (no AVX512 or AMX) bfloat16 would run reference convolutions for many
    minutes: float32 runs instead, with a warning."""
    from PromptSegLib.segment.inference import check_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="running float32 instead"):
        assert check_precision("bfloat16", torch.device("cpu")) == "float32"
    assert check_precision("bfloat16") == "bfloat16"  # a request checked before a device is chosen
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert check_precision("bfloat16", torch.device("cpu")) == "bfloat16"


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="no bfloat16 kernels on this CPU (AVX512 or AMX): float32 would run instead")
def test_bfloat16_runs_the_network_in_bfloat16_close_to_float32(chest_ct):
    """``precision="bfloat16"`` (the bundled starter on the middle of the real chest CT): the probabilities move,
    by little."""
    from PromptSegLib.errors import PromptSegError
    from PromptSegLib.segment.inference import Segmenter

    middle = chest_ct[32:96, 48:112, :]
    maps = {p: Segmenter(None, device="cpu", precision=p).segment(middle, "CT", "thorax", ["vertebral column"])
            .probability(0) for p in ("float32", "bfloat16")}
    difference = np.abs(maps["float32"] - maps["bfloat16"])
    assert difference.max() > 0.0 and difference.mean() < 0.01
    with pytest.raises(PromptSegError, match="unknown precision"):
        Segmenter(None, device="cpu", precision="float16")

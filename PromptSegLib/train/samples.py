"""Training samples: crops of prepared cases, centred on each target equally often (:class:`CentreSampler`), their
augmentation (a short field of view, rotation and scaling, intensity). Arrays are ``(z, y, x)`` on the model
grid."""
from __future__ import annotations

import numpy as np

from PromptSegLib.train.augmentation import jitter_intensity, limit_field_of_view
from PromptSegLib.train.datasets import PreparedCase


class CentreSampler:
    """Draws what each training crop is centred on, for the cases of one dataset: with probability
    ``foreground_ratio`` a target drawn uniformly among those present in any case, then a case where it is
    present; otherwise any case, and a random centre.

    Each target is thus the centre of as many crops as any other, whatever share of the patients it is
    delineated in: OpenKBP's esophagus, contoured in about a third of them, was the centre of about 5 % of the
    foreground crops when a case was drawn first and then one of its targets, the brain stem (nearly every
    patient) of about 17 %; drawn target first, each of the seven gets 1/7. A target made of many label values
    (the vertebrae) still counts once."""

    def __init__(self, cases: list[PreparedCase], foreground_ratio: float):
        self.cases = cases
        self.foreground_ratio = foreground_ratio
        dataset = cases[0].dataset
        values = [set(np.unique(case.label).tolist()) for case in cases]
        holding = {t: [i for i, present in enumerate(values) if not present.isdisjoint(dataset.values_of(t))]
                   for t in sorted(dataset.targets)}
        self.holding = [(t, found) for t, found in holding.items() if found]
        """(target, indices of the cases where it is present), for the targets present in any case."""

    def draw(self, rng: np.random.Generator) -> tuple[PreparedCase, str | None]:
        """``(case, target)``: the crop is centred on a voxel of ``target``, or anywhere when it is ``None``."""
        if self.holding and rng.random() < self.foreground_ratio:
            target, found = self.holding[rng.integers(len(self.holding))]
            return self.cases[found[rng.integers(len(found))]], target
        return self.cases[rng.integers(len(self.cases))], None


def crop(case: PreparedCase, patch: tuple[int, int, int], target: str | None,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``patch``-sized crop of image and label, centred on a random voxel of ``target`` (one of the case's
    present targets; see :class:`CentreSampler`), or anywhere in the volume when ``target`` is ``None``.

    Out-of-volume parts repeat the edge voxels of image and label (``replicate`` padding, as inference pads
    its windows): a scan that stops short looks as if it went on, not as if the body ended there.
    """
    shape = np.array(case.label.shape)
    size = np.array(patch)
    if target is not None:
        points = case.points(target)
        centre = points[rng.integers(len(points))]
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = np.clip(centre - size // 2, np.minimum(0, shape - size), np.maximum(0, shape - size))
    src = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, shape))
    pad = [(sl.start - s, s + n - sl.stop) for sl, s, n in zip(src, start, size)]
    return (np.pad(case.input.array[src], pad, mode="edge").astype(np.float32, copy=False),
            np.pad(case.label[src], pad, mode="edge"))


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A short field of view (``limit_field_of_view``) with probability 0.2; rotation (+-15 deg) and scaling
    (+-15%) with probability 0.3; brightness, contrast and gamma.

    No mirroring: left and right are targets of their own.
    """
    from monai.transforms import RandAffine

    if rng.random() < 0.2:
        image, label = limit_field_of_view(image, label, rng)
    if rng.random() < 0.3:
        affine = RandAffine(prob=1.0, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
                            padding_mode="border")
        affine.set_random_state(int(rng.integers(2**31)))
        affine.randomize()
        image = affine(image[None], mode="bilinear", randomize=False)[0].numpy()
        label = affine(label[None].astype(np.float32), mode="nearest", randomize=False)[0].numpy().astype(label.dtype)
    image = jitter_intensity(image, rng)
    return np.ascontiguousarray(image, dtype=np.float32), label

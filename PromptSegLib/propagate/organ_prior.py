"""A 3D organ prior for the fill from drawn slices.

Where the drawn slices lie far apart, neither interpolation nor the 2D network sees how an organ changes between
them, or where it ends beyond them. A PromptSeg segmentation model that knows the organ does. The prior runs such
a model (by default the bundled head-and-neck organ model) on a crop around the drawn slices, with no
post-processing (a crop has not the patient's midline or body), and keeps the model target whose mask agrees best
with the drawn slices. Where that agreement is high enough, the fill's mask ``F`` and the target's probability
``p`` vote on each voxel off the drawn slices: in where ``(1 - w) F + w p >= 0.5`` (``w``: :func:`vote_weight`), so
the prior trims the fill where it is fairly sure the organ is absent, and adds what it is sure of, as long as it
touches the drawn organ and lies in the fill's range (not past an erased slice).

Chosen on the 61 organs of the 12 validation patients of ``hn_oars.json`` (K = 2, 3, 4, 6, 8 drawn slices, the
protocol of ``Testing/benchmarks/bench_propagation.py``), with the model's whole-volume probabilities (ad hoc): see
each constant. Then checked with this module, ``choose_fill_reach.py --prior-weights none 0.6 --groups openkbp
--counts 1 2 3 4 6 8``: mean Dice 0.465 -> 0.701 from one drawn slice, 0.766 -> 0.830 at K = 2, 0.820 -> 0.855
at 3, 0.844 -> 0.861 at 4, 0.888 -> 0.893 at 6, 0.908 -> 0.913 at 8 (ITK's Fill between slices 0.093 ... 0.786);
at K = 2 37 organs higher, 8 lower (by 0.06 at most); the spinal cords (K = 1 0.072 -> 0.549, K = 2 0.649 ->
0.815) and the mandibles (0.439 -> 0.819, 0.695 -> 0.851) gain most, the larynges not at all. From one drawn slice
or of a small structure a lower agreement takes the prior (:data:`LOW_AGREEMENT`): K = 1 0.701 -> 0.741; from one
drawn slice the prior's vote weighs more (:data:`WEIGHT_ONE`): 0.754.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PromptSegLib.errors import Cancelled, PromptSegError
from PromptSegLib.notes import note
from PromptSegLib.preprocessing.preprocess import model_grid
from PromptSegLib.propagate.geometry import set_slice, take_slice

if TYPE_CHECKING:
    from PromptSegLib.segment.inference import CancelFlag, Segmenter

MODEL = "promptseg-hn-oars"
"""The model that gives the prior (catalogue name or folder)."""

MIN_AGREEMENT = 0.75
"""The least Dice of the model's mask with two or more drawn slices for its target to be used. Whole-volume
probabilities, K = 2: 0.7 0.807, 0.75 0.809, 0.8 0.805 (at 0.75 50 of the 61 organs pass; the larynges and esophagi
mostly not). Checked with this module (ad hoc, K = 2, the prior's crop): 0.7 0.8300, 0.75 0.8299, 0.8 0.8235."""

LOW_AGREEMENT = 0.6
"""The least Dice with the drawn slices from a single drawn slice, or from drawn slices of a small structure
(:data:`SMALL_PIXELS`). From one slice the fill alone loses long and thin organs within a few slices (the 61
validation organs' spinal cords 0.07), so a prior that agrees less still helps: chosen by
``Testing/benchmarks/choose_fill_reach.py --prior-agreements 0.75 0.6 0.5 --groups openkbp --counts 1``, 0.701,
0.741, 0.742. On CT structures the model does not know (12 sarcoma GTVs of the propagation spec's training split,
the lung GTV and six abdominal organs of the TotalSegmentator example CT) the best target agreed at 0.34 at most
(the aorta, as esophagus), and a prior taken there lowered the fill to Dice 0.03-0.21 (ad hoc), so the threshold
stays well above that; 0.5 scored within 0.001 of 0.6."""

SMALL_PIXELS = 10.0
"""A structure drawn with fewer pixels than this on its non-empty drawn slices (their mean) is small: a pixel's shift
moves its Dice by 0.1-0.4, so it takes the prior from :data:`LOW_AGREEMENT`. (Spinal cords and esophagi on OpenKBP's
4 mm pixels: 2-9 pixels.) Chosen by ``Testing/benchmarks/choose_fill_reach.py --prior-small-pixels 0 10 --groups
openkbp openkbp_more --counts 2 3 4``, mean Dice over K and the groups 0.847 (none small) -> 0.849: the 61 validation
organs changed in one place (a spinal cord at K = 4, +0.099), the 69 organs of 12 other training-split patients
(``openkbp_more``, which the organ model trained on) at K = 2 0.814 -> 0.825 (five higher, by 0.07-0.37: esophagi,
a spinal cord, a brain stem), at K = 3 0.852 -> 0.854 (four higher, one lower by 0.001), at K = 4 0.867 -> 0.866
(one higher, two esophagi lower by 0.017 and 0.023). An ad hoc look first: below Dice 0.75 at K = 2, the small
structures that took a prior gained (six of six, +0.07 to +0.37) and the larger ones mostly lost (10 of 11)."""

MIN_SPACING_MM = 20.0
"""The prior is used only where the drawn slices' median spacing is at least this (mm), unless they change pieces
(:data:`PIECES`): with close drawn slices the fill alone is better. Whole-volume probabilities, mean over K and
organs: always 0.8564 (at K = 6 0.881 against the fill's 0.888), 10 mm 0.8634, 20 mm 0.8657, 30 mm 0.8621; the fill
alone 0.8453."""

PIECES = True
"""Take the prior from close drawn slices too (under :data:`MIN_SPACING_MM`) where they hold different numbers of
pieces (a mandible's two rami and its arch): there the fill's interpolation between them fails (a mandible at K = 4
0.714-0.841 without the prior, 0.797-0.902 with it), however close they lie. Checked first with the model's crops of
the 130 organs of ``choose_fill_reach.py``'s groups ``openkbp`` and ``openkbp_more`` (ad hoc): mean Dice over
K = 2, 3, 4, 6, 8 and the groups 0.8708 -> 0.8726, the mandibles at K = 4 0.828 -> 0.858, K = 6 0.852 -> 0.887,
K = 8 0.896 -> 0.910 (lower at K = 4 than at K = 3 before), a parotid whose deep lobe is drawn apart a little
lower at K = 6 and 8 (the left parotids -0.004), nothing else changed. Chosen with this module by
``Testing/benchmarks/choose_fill_reach.py --prior-pieces false true --groups openkbp openkbp_more --counts 2 3 4 6 8``:
0.8712 -> 0.8730 over the 130 organs and K (the groups 0.871 -> 0.873 each; K = 4 0.864 -> 0.869, K = 6 0.895 ->
0.899); the mandibles 0.856 -> 0.873 (K = 4 0.828 -> 0.861, K = 6 0.852 -> 0.888), the parotids 0.891 -> 0.889; of
59 changes 40 higher, the largest fall a parotid's (pt_182, 0.939 -> 0.880 at K = 8); the brain stems, spinal
cords, esophagi and larynges unchanged."""

WEIGHT = 0.6
"""The prior's share ``w`` of each voxel's vote with two or more drawn slices. Whole-volume probabilities, 20 mm: 0.6
0.8657, 0.7 0.8654 (K = 2: 0.818, 0.812). Checked with this module's crops, ``Testing/benchmarks/choose_fill_reach.py
--prior-weights 0.6 0.7 0.8 --groups openkbp openkbp_more --counts 2 3 4 6 8``: 0.8730, 0.8735, 0.8731 (at K = 2
0.828, 0.830, 0.830; at K = 8 0.915, 0.914, 0.912), so 0.6 stays."""

WEIGHT_ONE = 0.8
"""The prior's share of the vote with one drawn slice, where the fill alone has less to say. Chosen by
``Testing/benchmarks/choose_fill_reach.py --prior-weights 0.6 0.8`` and ``0.7 0.9`` (``--groups openkbp openkbp_more
--counts 1``), mean Dice of the groups 0.742, 0.752, 0.755, 0.752 (the validation organs alone 0.741, 0.750, 0.754,
0.752); at 0.8 against 0.6 the spinal cords (19 of 23 higher, +0.045 on average), mandibles (+0.030) and esophagi
(+0.031) gain, the parotids and larynges lose a little (-0.003 to -0.008 on average, at most 0.05)."""

AIR_HU = -500.0
"""A volume whose lowest value is at or below this shows air in Hounsfield units: a CT (:func:`shows_air`)."""

CONTEXT_MM = 141.0
"""The crop is at least this long along each axis where the image allows: just under one window of the model (48
voxels of its 3 mm grid, 144 mm), a whole window of context around the organ. A crop of 144 mm could round to 49
voxels, and two windows along that axis; a crop of 141 mm is one."""

ONE_WINDOW = True
"""In the plane the crop grows by a quarter of the drawn box on each side, but only as far as :data:`CONTEXT_MM`
(one model window): a drawn box under that is one window wide, not two, which halves or quarters the model's
work for a wide structure (a mandible, a large tumour). Chosen by ``Testing/benchmarks/choose_fill_reach.py
--prior-crop grown window --groups openkbp openkbp_more --counts 1 2 3 4 6 8`` (2026-12-06): mean Dice over K and
the groups 0.8534 with the crop grown, 0.8532 kept to one window (within 0.001, for less work); only the mandibles
(18, -0.0008 on average over K: at K = 2 -0.005, at K = 4 +0.009) and four spinal-cord fills changed."""


@dataclass(frozen=True)
class OrganPrior:
    """The model target that agrees with the drawn slices, and its probabilities around them.

    Attributes:
        target: the model's target name; agreement: Dice of its mask with the drawn slices.
        box: index slices ``(Z, Y, X)`` of the crop on the image array.
        probability: float32 ``box``-shaped probabilities in [0, 1].
    """

    target: str
    agreement: float
    box: tuple[slice, slice, slice]
    probability: np.ndarray

    @property
    def summary(self) -> str:
        """What a fill tells its user of the prior it took."""
        return f"guided by the organ model's {self.target} (Dice {self.agreement:.2f} with the drawn slices)"


def shows_air(image: np.ndarray) -> bool:
    """Whether an intensity array looks like a CT in HU (its lowest value is air, :data:`AIR_HU` or below), where
    the organ model's CT input applies. MR and PET intensities do not go that low."""
    return image.size > 0 and float(np.nanmin(image)) <= AIR_HU


def prior_box(shape: tuple[int, int, int], spacing: tuple[float, float, float], drawn: dict[int, np.ndarray],
              axis: int, context_mm: float = CONTEXT_MM, one_window: bool = ONE_WINDOW) -> tuple[slice, slice, slice]:
    """The crop around the drawn structure: its drawn pixels' box, longer at each end along ``axis`` by half a
    median drawn-slice spacing and a slice (how far the fill may reach, ``multislice.REACH``; from one drawn slice,
    which reaches as far as the image shows, by half of ``context_mm``) and half its size wider in the plane (with
    ``one_window`` no wider than ``context_mm`` thereby, :data:`ONE_WINDOW`), then at least ``context_mm`` long
    along each axis, inside ``shape``. ``spacing``: mm along the array's axes; ``drawn``: at least one non-empty
    slice. Near the image's edge the crop moves inwards to keep its length."""
    full = sorted(k for k, v in drawn.items() if v.any())
    if not full:
        raise PromptSegError("an organ prior needs a drawn slice that holds the structure")
    stack = np.any([v for k, v in drawn.items() if k in full], axis=0)
    rows, cols = np.nonzero(stack.any(axis=1))[0], np.nonzero(stack.any(axis=0))[0]
    extra = (int(np.ceil(0.5 * float(np.median(np.diff(full))))) + 1 if len(full) >= 2
             else int((context_mm / spacing[axis] - 1) // 2))
    low = [full[0] - extra, rows[0], cols[0]]
    high = [full[-1] + extra + 1, rows[-1] + 1, cols[-1] + 1]
    plane = [i for i in range(3) if i != axis]
    order = [axis] + plane  # low/high are (along the axis, first plane axis, second plane axis)
    box = [None] * 3
    for (lo, hi), i in zip(zip(low, high), order):
        least = int(np.ceil(context_mm / spacing[i]))
        if i != axis:
            grow = (hi - lo) // 4
            if one_window:
                grow = min(grow, max(least - (hi - lo), 0) // 2)
            lo, hi = lo - grow, hi + grow
        if hi - lo < least:  # centred, or moved off the image's edge
            lo = max(0, min(lo - (least - (hi - lo)) // 2, shape[i] - least))
            hi = lo + least
        lo, hi = max(lo, 0), min(hi, shape[i])
        box[i] = slice(int(lo), int(hi))
    return tuple(box)


def _plane(box: tuple[slice, ...], axis: int) -> tuple[slice, slice]:
    """The box's index slices across ``axis``: those of a 2D slice along it."""
    return tuple(box[i] for i in range(3) if i != axis)


def _drawn_in_box(drawn: dict[int, np.ndarray], box: tuple[slice, ...], axis: int) -> dict[int, np.ndarray]:
    """The ``drawn`` slices (index along ``axis`` -> 2D mask) that lie in ``box``, as bool masks of the box's own
    plane, by their index along ``axis`` in the box."""
    along, plane = box[axis], _plane(box, axis)
    return {k - along.start: np.asarray(v, bool)[plane] for k, v in drawn.items() if along.start <= k < along.stop}


def _dice_on_drawn(mask: np.ndarray, drawn: dict[int, np.ndarray], axis: int, box: tuple[slice, ...]) -> float:
    """Dice of a ``box``-shaped ``mask`` with the drawn slices (drawn pixels outside the box count as missed)."""
    both = found = wanted = 0
    plane = _plane(box, axis)
    for k, v in drawn.items():
        wanted += int(np.count_nonzero(v))
        if box[axis].start <= k < box[axis].stop:
            m = take_slice(mask, axis, k - box[axis].start)
            both += int(np.count_nonzero(m & v[plane]))
            found += int(np.count_nonzero(m))
    return 2.0 * both / (found + wanted) if found + wanted else 0.0


def prior_applies(drawn: dict[int, np.ndarray], step_mm: float, min_spacing_mm: float = MIN_SPACING_MM,
                  pieces: bool = PIECES) -> bool:
    """Whether a fill from ``drawn`` slices (index -> bool 2D mask) may take a prior: one non-empty drawn slice, or
    two or more whose median spacing is at least ``min_spacing_mm``, or (``pieces``) that hold different numbers of
    pieces (:data:`PIECES`); ``step_mm``: the slice spacing (mm)."""
    full = sorted(k for k, v in drawn.items() if np.any(v))
    if len(full) < 2:
        return len(full) == 1
    if float(np.median(np.diff(full))) * step_mm >= min_spacing_mm:
        return True
    return pieces and len({ndimage.label(drawn[k])[1] for k in full}) > 1


def _drawn_sizes(drawn: dict[int, np.ndarray]) -> list[int]:
    """Pixel counts of the non-empty ``drawn`` slices."""
    return [int(np.count_nonzero(v)) for v in drawn.values() if np.any(v)]


def least_agreement(drawn: dict[int, np.ndarray], small_pixels: float = SMALL_PIXELS) -> float:
    """The least Dice of a model target with the ``drawn`` slices (index -> bool 2D mask) for the prior to be taken:
    :data:`LOW_AGREEMENT` from one non-empty slice or where they hold fewer than ``small_pixels`` pixels on average,
    else :data:`MIN_AGREEMENT`."""
    sizes = _drawn_sizes(drawn)
    return LOW_AGREEMENT if len(sizes) == 1 or float(np.mean(sizes)) < small_pixels else MIN_AGREEMENT


def drawn_on_grid(crop: sitk.Image, drawn: dict[int, np.ndarray], axis: int, grid: sitk.Image) -> np.ndarray | None:
    """The drawn slices as a network's hint (``network.HINT_CHANNELS``) on a model ``grid`` (an axis-aligned empty
    image, ``preprocess.model_grid``): each drawn plane on the one plane of the grid nearest to it, its mask
    resampled in the plane (nearest voxel). ``drawn``: index along ``axis`` of ``crop``'s array -> bool 2D mask.

    Returns float32 ``(2, Z, Y, X)`` on ``grid``'s array, or ``None`` where the drawn planes do not lie across the
    grid's first array axis (its z): the hints were learnt on axial planes only (``train.drawn.drawn_hint``)."""
    normal = np.array(crop.GetDirection()).reshape(3, 3)[:, 2 - axis]
    if abs(abs(normal[2]) - 1.0) > 1e-3:
        return None
    size = tuple(reversed(grid.GetSize()))
    hint = np.zeros((2, *size), np.float32)
    for index, plane in drawn.items():
        point = [0.0, 0.0, 0.0]
        point[2 - axis] = float(index)
        physical = crop.TransformContinuousIndexToPhysicalPoint(point)
        z = int(round(grid.TransformPhysicalPointToContinuousIndex(physical)[2]))
        if not 0 <= z < size[0]:
            continue
        tiled = sitk.GetImageFromArray(np.repeat(np.expand_dims(plane.astype(np.uint8), axis),
                                                 crop.GetSize()[2 - axis], axis=axis))
        tiled.CopyInformation(crop)
        on_plane = sitk.Resample(tiled, grid[:, :, z:z + 1], sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                 sitk.sitkUInt8)  # onto that one plane of the grid
        hint[0, z] = sitk.GetArrayViewFromImage(on_plane)[0]
        hint[1, z] = 1.0
    return hint


def organ_prior(segmenter: Segmenter, image: sitk.Image, drawn: dict[int, np.ndarray], axis: int = 0,
                modality: str = "CT", region: str | None = "head and neck", min_agreement: float | None = None,
                min_spacing_mm: float = MIN_SPACING_MM, pieces: bool = PIECES, one_window: bool = ONE_WINDOW,
                progress: Callable[[float, str], None] | None = None,
                cancel: CancelFlag | None = None) -> OrganPrior | None:
    """The prior for a fill from ``drawn`` slices, or ``None`` where it does not apply (:func:`prior_applies`) or
    no model target agrees with the drawn slices at Dice ``min_agreement`` or more (``None``:
    :func:`least_agreement`). From one drawn slice the fill propagates until the structure ends; the prior applies
    there too. A model whose network takes drawn slices (``NetworkConfig.hints``) is asked twice: without them,
    for the agreement (which they would make a foregone conclusion), then with them (:func:`drawn_on_grid`) for the
    agreeing target's probabilities.

    Args:
        segmenter: a segmenter of :data:`MODEL` or another model; every one of its targets is tried.
        image: the volume the fill works on; its array ``(Z, Y, X)`` is the fill's image.
        drawn: slice index along ``axis`` -> bool 2D mask the user drew.
        modality, region: the model's input block and context prompt.
        progress: ``(fraction, message)`` callback; cancel: object with ``is_set()``.

    Raises:
        Cancelled: the cancel flag was set. The segmenter's errors (a modality the model lacks...).
    """
    spacing = tuple(reversed(image.GetSpacing()))
    if not prior_applies(drawn, spacing[axis], min_spacing_mm, pieces):
        return None
    box = prior_box(tuple(reversed(image.GetSize())), spacing, drawn, axis, one_window=one_window)
    crop = image[box[2], box[1], box[0]]
    targets = segmenter.model.config.targets
    result = segmenter.segment(crop, modality, region, targets, postprocessing=False, progress=progress,
                               cancel=cancel)
    agreements = [_dice_on_drawn(result.mask(i), drawn, axis, box) for i in range(len(targets))]
    best = int(np.argmax(agreements))
    if min_agreement is None:
        min_agreement = least_agreement(drawn)
    if agreements[best] < min_agreement:
        return None
    probability = result.probability(best)
    if segmenter.model.config.network.hints:
        hint = drawn_on_grid(crop, _drawn_in_box(drawn, box, axis), axis,
                             model_grid(crop, segmenter.model.config.spacing_mm))
        if hint is not None:
            guided = segmenter.segment(crop, modality, region, [targets[best]], postprocessing=False,
                                       progress=progress, cancel=cancel, hint=hint)
            probability = guided.probability(0)
    return OrganPrior(targets[best], agreements[best], box, probability)


def prior_or_none(load: Callable[[], Segmenter], image: sitk.Image, drawn: dict[int, np.ndarray], axis: int = 0,
                  progress: Callable[[float, str], None] | None = None,
                  cancel: CancelFlag | None = None) -> OrganPrior | None:
    """:func:`organ_prior` for a fill that can go on without it: the model is loaded (``load()``) only where the
    prior applies, and a model or input error is noted (:func:`~PromptSegLib.notes.note`) and gives ``None``
    instead of failing the fill. Raises ``Cancelled`` when the cancel flag is set."""
    if not prior_applies(drawn, image.GetSpacing()[2 - axis]):
        return None
    try:
        return organ_prior(load(), image, drawn, axis, progress=progress, cancel=cancel)
    except Cancelled:
        raise
    except PromptSegError as error:
        note(f"filled without the organ model: {error}")
        return None


def check_weight(weight: float) -> None:
    """Refuse a prior's weight outside [0, 1) (at 1 the fill would have no say)."""
    if not 0.0 <= weight < 1.0:
        raise PromptSegError(f"the prior's weight must be in [0, 1), not {weight}")


def vote_weight(drawn: dict[int, np.ndarray]) -> float:
    """The prior's share of the vote for a fill from ``drawn`` slices (index -> bool 2D mask): :data:`WEIGHT_ONE`
    from one non-empty slice, else :data:`WEIGHT`."""
    return WEIGHT_ONE if len(_drawn_sizes(drawn)) == 1 else WEIGHT


def apply_prior(mask: np.ndarray, prior: OrganPrior, drawn: dict[int, np.ndarray], axis: int = 0,
                weight: float | None = None, within: tuple[int, int] | None = None) -> np.ndarray:
    """The fill's bool ``(Z, Y, X)`` ``mask`` with each voxel off the drawn slices voted on by the fill and the
    prior's probability ``p``: in where ``(1 - weight) mask + weight p >= 0.5`` (``None``: :func:`vote_weight`).

    Where the prior alone carries a voxel in, it must lie in a piece of ``p >= 0.5`` that holds a drawn pixel, on
    a slice in ``within`` (first and last slice index along ``axis``, inclusive: the fill's range; ``None``: any);
    pieces do not cross a drawn empty slice (one the user erased). Outside the prior's box and on the drawn
    slices, ``mask`` is kept."""
    weight = vote_weight(drawn) if weight is None else weight
    check_weight(weight)
    along = prior.box[axis]
    rows = _drawn_in_box(drawn, prior.box, axis)
    inside, p = mask[prior.box], prior.probability.copy()
    drawn_box = np.zeros_like(inside)
    for j, v in rows.items():
        set_slice(drawn_box, axis, j, v)
        if not v.any():
            set_slice(p, axis, j, np.zeros_like(v, dtype=p.dtype))  # an erased slice: nothing crosses it
    voted = (1.0 - weight) * inside + weight * p >= 0.5
    pieces, _ = ndimage.label(p >= 0.5)
    added = np.isin(pieces, np.unique(pieces[drawn_box & (pieces > 0)]))
    if within is not None:
        outside = [j for j in range(inside.shape[axis]) if not within[0] <= j + along.start <= within[1]]
        for j in outside:
            set_slice(added, axis, j, np.zeros_like(take_slice(added, axis, j)))
    voted &= inside | added
    for j in rows:  # the drawn slices: the user's
        set_slice(voted, axis, j, take_slice(inside, axis, j))
    out = mask.copy()
    out[prior.box] = voted
    return out

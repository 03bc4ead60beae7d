"""Fill a structure from several drawn slices: refined interpolation between them, propagation beyond them.

The user draws some slices of a structure (any number, along one axis); :func:`fill_from_slices` fills the
rest and never changes a drawn slice.

- Between two drawn slices ``a < b`` (a *gap*) the result uses both: each slice starts from the shape-based
  interpolation of the two drawn masks (:func:`~PromptSegLib.propagate.shape_prior.interpolated_distance`, shapes
  aligned on their centroids, the area interpolated and grown by the size profile's bulge, ``BULGE``), placed on
  the structure's centre tracked through the image from both drawn slices
  (:func:`~PromptSegLib.propagate.tracking.tracked_centres`: a curved spinal cord leaves the straight line between
  the drawn centroids), and the network refines that shape in one step from the
  neighbouring slice (:func:`bridge`). Measured on held-out sarcomas, chains carried from each side and blended
  by distance drift in long gaps on CT (worse than interpolation alone), so the interpolation leads and the
  network moves its boundary by under a pixel (``INTERPOLATION_WEIGHT``, ``INTERPOLATION_RAMP``).
- Beyond the outermost drawn slices :func:`~PromptSegLib.propagate.propagator.propagate` carries the outermost ones
  outwards, at most ``REACH`` drawn-slice spacings, and stops at the structure's ends as it does from one
  slice; where the image cannot show an end (the network carries a mask on through similar tissue), the size
  profile fitted to the drawn slices (:func:`~PromptSegLib.propagate.shape_prior.fit_profile`) caps each slice's size,
  and its end ends the direction; where a reach bounds the fill instead, a slice may keep the nearest drawn slice's
  size, tapering to nothing at the expected end (``CAP``, ``TAPER``). Drawn slices spread along the structure tell
  the profile how long it is at least (``ENDS_BEYOND``). A structure the drawn slices show as a tube
  (``TUBE_ASPECT``: the spinal cord, a few pixels wide, which the network loses within a few slices) is carried
  instead as its outermost drawn shape moved along the anatomy, registered slice by slice
  (:func:`~PromptSegLib.propagate.tracking.carried_shape`), half a drawn-slice spacing (``TUBE_REACH``).
- A drawn *empty* slice (the user erased a slice) bounds the fill: nothing is filled past it from either side.
- Nothing is filled where the image lies outside the drawn pixels' intensities (``INTENSITY_RANGE``,
  :func:`drawn_range`).
- Given an organ prior (:mod:`~PromptSegLib.propagate.organ_prior`: a 3D model that knows the drawn organ), the
  prior and the fill vote on each voxel off the drawn slices, within the fill's range; what the prior adds is not
  held to the drawn intensity range (as chosen on validation organs).

Arrays are ``(Z, Y, X)``; ``axis`` 0/1/2 as in :mod:`PromptSegLib.propagate.propagator`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from PromptSegLib.errors import Cancelled, InputImageError, PromptSegError
from PromptSegLib.propagate.geometry import box_to_slice, set_slice, take_slice
from PromptSegLib.propagate.organ_prior import OrganPrior, apply_prior, check_weight
from PromptSegLib.propagate.propagator import (FADE_CONTRAST, ProgressCallback, PropagationResult, Propagator,
                                               propagate, resolve_axis, slice_range, vanishing_pixels)
from PromptSegLib.propagate.shape_prior import (drawn_aspect, equivalent_radius, fit_profile, interpolated_distance,
                                               shrink_to_radius)
from PromptSegLib.propagate.shape_prior import signed_distance as signed_distance_of
from PromptSegLib.propagate.tracking import carried_shape, tracked_centres

INTERPOLATION_WEIGHT = 0.75
"""Share of the interpolated shape in a gap slice's probability (the rest: the network's refinement); with
``INTERPOLATION_RAMP`` the network can move the interpolated boundary by 2/3 pixel either way. Checked on the
validation groups of ``ENDS_BEYOND`` by ``Testing/benchmarks/choose_fill_reach.py --interpolation-weight 0.5 0.75 1
--threads 2`` (mean Dice over K = 2, 3, 4, 6, 8 and the groups): 0.5 0.825, 0.75 0.825 (higher by under 0.001),
1 (interpolation alone) 0.820. The network's share helps most where the drawn slices lie far apart: at K = 2
0.666 / 0.661 / 0.654, at K = 8 0.939 / 0.944 / 0.942. Interpolation alone fails where a shape changes its
pieces: one patient's mandible (pt_21), whose two rami join into an arch, at K = 8 0.879 / 0.854 / 0.744. Checked
again with ``BULGE`` at 1.5 (``--interpolation-weight 0.5 0.625``, 0.75 from the ``BULGE`` run): 0.8294, 0.8307,
0.8306; kept, as 0.625 is higher by under 0.001."""
TRACK = True
"""Between two drawn slices, place the interpolated shape on the structure's centre tracked through the image
(:func:`~PromptSegLib.propagate.tracking.tracked_centres`) rather than on the line between the drawn centroids.
Chosen by ``Testing/benchmarks/choose_fill_reach.py --track false true`` on its validation groups (61 OpenKBP
organs, 12 glioblastomas, 11 hippocampi; the bundled model): mean Dice over K = 2, 3, 4, 6, 8 and the groups
0.823 without, 0.825 with; at K = 2 0.652 / 0.661 (spinal cords 0.460 / 0.500, hippocampi 0.673 / 0.693); no
group's mean over K lower (organs 0.822 / 0.822, glioblastomas 0.815 / 0.815, hippocampi 0.831 / 0.838)."""
BULGE = 1.5
"""Share of the size profile's bulge (:meth:`~PromptSegLib.propagate.shape_prior.SizeProfile.excess_area`) added to
the area interpolated between two drawn slices. A straight line between the drawn areas cuts the middle of a
rounded structure: in the gap between the protocol's two drawn slices (K = 2) the true volume was, as a median,
1.51x the straight line's for 12 glioblastomas, 1.35x for 11 hippocampi and 1.02x for 61 OpenKBP organs
(validation groups of ``ENDS_BEYOND``; ``Testing/benchmarks/fill_gap_errors.py``). With two drawn slices the
profile is the ellipsoid whose ends lie ``ENDS_BEYOND`` spacings beyond them; with more, its curvature follows the
drawn sizes (a tube's stays near none). Above 1 the share makes up for the network's part of each slice, which pulls the
boundary back. Chosen by ``Testing/benchmarks/choose_fill_reach.py --bulge 0 0.5 1`` and ``--bulge 1.5 2``
(``--threads 2``) on those groups, mean Dice over K = 2, 3, 4, 6, 8 and the groups: 0.8250, 0.8275, 0.8294,
0.8306, 0.8308; at K = 2 0.661, 0.670, 0.677, 0.682, 0.684. 1.5 was kept, the smallest value within 0.001 of the
best: from 1 on the organs lose (0.8228, 0.8222, 0.8206) while the glioblastomas (0.8146 at 0 -> 0.8210 at 1.5) and
hippocampi (0.8378 -> 0.8486) gain; at K = 2 the glioblastomas rise from 0.578 to 0.605, past ITK's Fill between
slices (0.583)."""
INTENSITY_RANGE: tuple[float, float] | None = (1.0, 0.1)
"""``(percentile, margin)``: a filled pixel is kept only where the image lies within the drawn pixels' intensity
range, from their ``percentile`` to their ``100 - percentile`` percentile, widened on each side by ``margin`` times
its width (as Slicer's "Editable intensity range", set from what the user drew); ``None``: no such range.
Chosen by ``Testing/benchmarks/choose_fill_reach.py --intensity-range none 2:0.05 2:0.1 1:0.1 --threads 2`` on its
validation groups, mean Dice over K = 2, 3, 4, 6, 8 and the groups: none 0.8309, (2, 0.05) 0.8401, (2, 0.1)
0.8401, (1, 0.1) 0.8395; the widest range was kept, within 0.001 of the best, as the only one that does not lower
the organs (0.8233 without a range, 0.8197 / 0.8226 / 0.8243) while the glioblastomas (0.8209 -> 0.8357) and the
hippocampi (0.8486 -> 0.8584) gain; at K = 2 0.683 -> 0.698 (glioblastomas 0.605 -> 0.630, hippocampi 0.730 ->
0.751). From one drawn slice (``--counts 1``): 0.492 -> 0.513. On CT the organs' soft tissue shares its
intensities with its neighbours, so the range leaves them mostly as they were (spinal cords and parotids a little
higher, brain stems and esophagi a little lower)."""
BATCH = 8
"""Slices refined per network call."""
INTERPOLATION_RAMP = 2.0
"""Half-width (pixels) of the ramp that turns the interpolated signed distance into a probability."""
REACH = 0.5
"""How far the fill goes beyond the outermost drawn slices when two or more are drawn, in median spacings of
the drawn slices (``None``: as far as the stopping rule and the size profile allow). A user who drew slices
across a structure has drawn near its ends; a structure that runs on into similar tissue (the brain stem into
the spinal cord) otherwise fills far past its end, and a short tumour gets whole slices where it has ended.
Chosen by ``Testing/benchmarks/choose_fill_reach.py --reach 0 0.25 0.5 0.75 --threads 2`` on the validation
groups of ``ENDS_BEYOND`` (61 OpenKBP organs, 12 glioblastomas, 11 hippocampi, each group weighing the same),
mean Dice over K = 2, 3, 4, 6, 8 and the groups: 0 (no fill beyond) 0.791, 0.25 0.814, 0.5 0.810, 0.75 0.803;
organs alone 0.770, 0.816, 0.820, 0.807 (an earlier choice on the organs alone, K = 2, 4, 8: no limit 0.749,
1 spacing 0.788, 0.5 spacing 0.804). Checked again on 2026-12-05, with ``TRACK`` (``--reach 0.25 0.5 1``): 0.825,
0.822, 0.811; at K = 2 the organs gain from 0.5 (0.712 -> 0.730: brain stem +0.039, larynx +0.035, mandible
+0.031, spinal cord +0.009) and the glioblastomas and hippocampi lose (-0.018, -0.017), and no measure of the
drawn slices (their span over the largest drawn radius, the outer radii over it, the spacing over it) picked the
structures that gain (mean gain within 0.01 in every range of each). Checked again with ``BULGE`` at 1.5
(``--reach 0.375 0.45``, 0.25 from the ``BULGE`` run): 0.8306, 0.8299, 0.8294; the organs gain (0.8222 -> 0.8292,
0.8299; at K = 2 0.710 -> 0.727, 0.728), the glioblastomas (0.8210 -> 0.8154) and hippocampi (0.8486 -> 0.8450,
0.8431) lose. With one drawn slice there is no spacing and the limit does not apply. Checked again on 2026-12-06
with ``CAP`` "drawn" tapering to the expected end (``TAPER``), ``--reach 0.25 0.5``: 0.8451, 0.8470 (organs 0.8388
-> 0.8452, at K = 2 0.746 -> 0.766: all 9 brain stems, all 9 mandibles and 4 of 6 larynges higher, the parotids
+0.016; the glioblastomas unchanged, whose last slice the taper leaves out; the hippocampi 0.8615 -> 0.8610), so
the fill now goes half a spacing, to where the cap's taper ends."""
TUBE_ASPECT: float | None = 5.0
"""With two or more drawn slices, a structure whose :func:`~PromptSegLib.propagate.shape_prior.drawn_aspect` (half
the length the drawn slices imply over their largest radius) is at least this is a tube: beyond the outermost
drawn slices its drawn shape is moved along the anatomy (:func:`~PromptSegLib.propagate.tracking.carried_shape`)
instead of being propagated by the network, up to the fill's range limits (``TUBE_REACH``); ``None``: never. From one
drawn slice in the middle of 11 validation spinal cords (a few pixels wide), the network kept Dice 0.52 with the
truth 3-5 slices away and 0.33 6-8 slices away, one chain of registrations 0.64 (4-6) and 0.53 (7-9) (ad hoc).
Chosen by ``Testing/benchmarks/choose_fill_reach.py --tube-aspect 3 5 --threads 2`` on the validation groups of
``ENDS_BEYOND``, against none (the bundled model's run of ``--models``), mean Dice over K = 2, 3, 4, 6, 8 and the
groups: none 0.840, 3 0.841, 5 0.841 (5 higher by under 0.001; organs 0.824, 0.829, 0.830); at 5 only the spinal
cords changed (all 11 higher at K = 2, on average +0.075 at K = 2, +0.009 at K = 8) and the esophagi (within
0.004); at 3 a mandible was carried as a tube too (pt_78: 0.539 -> 0.494 at K = 2)."""
TUBE_REACH: float | None = 0.5
"""How far the fill carries a tube (``TUBE_ASPECT``) beyond the outermost drawn slices at least, in median
drawn-slice spacings, where ``REACH`` (or a caller's ``reach``) is shorter (``None``: as ``REACH``): a tube drawn
on slices along it runs on past them as it ran between them, where a rounded structure narrows. Chosen by
``Testing/benchmarks/choose_fill_reach.py --tube-reach 0.5 0.75 --threads 2`` on the validation groups of
``ENDS_BEYOND``, against ``REACH`` (0.25, the ``TUBE_ASPECT`` run), mean Dice over K = 2, 3, 4, 6, 8 and the
groups: 0.841, 0.843, 0.842; at 0.5 all 11 spinal cords higher at K = 2 (+0.052 on average), the esophagi within
0.017, nothing else changed. Since ``REACH`` is half a spacing too (2026-12-06), it counts only where a caller's
``reach`` is shorter."""
CAP = "drawn"
"""How large a slice filled beyond the outermost drawn slices may be, where a reach bounds the fill (two or more
drawn slices): ``"drawn"``, at most the nearest drawn slice's size, tapering to nothing where the structure is
expected to end, ``ENDS_BEYOND`` median drawn-slice spacings beyond it (equivalent radius ``r * sqrt(1 - (d / e) **
TAPER)``, ``r`` the drawn slice's, ``d`` the distance from it, ``e`` the expected end's: flat near the drawn slice,
falling at the end); ``"profile"``, at most the size profile's radius (with two drawn slices an ellipsoid whose ends
lie ``ENDS_BEYOND`` spacings out). Without a reach the profile caps, as its end is what ends the fill. Structures
contoured up to a cut (a brain stem, a larynx, an esophagus) keep their size to near their ends: over the
half-spacing beyond the protocol's two drawn slices, by quarter spacing, the true area was on average 0.96, 0.93,
0.90, 0.64x the outer drawn slice's for the brain stems and 1.0-1.15x for the larynges and esophagi, where the
ellipsoid gives about 0.81, 0.58, 0.31, 0 at the quarters' outer edges (parotids 0.86, 0.69, 0.51, 0.25;
hippocampi 0.85, 0.64, 0.39, 0.12; an ad hoc measure on the validation groups of ``ENDS_BEYOND``). Chosen by
``Testing/benchmarks/choose_fill_reach.py --cap profile drawn --threads 2`` on those groups, first with the drawn
size untapered (the larger of the profile's radius and the drawn slice's) and ``REACH`` a quarter: mean Dice over
K = 2, 3, 4, 6, 8 and the groups, profile 0.8432, drawn 0.8451 (organs 0.8354 -> 0.8398, hippocampi 0.8584 -> 0.8614,
glioblastomas 0.8357 -> 0.8343); at K = 2 every brain stem (9, +0.024 on average) and larynx (6, +0.022) higher, the
parotids +0.009, all 11 hippocampi +0.008, the glioblastomas -0.005. No cap at all: 0.8447; a cap at the larger of
the profile's radius and 0.8 or 0.9 of the drawn one: 0.8443, 0.8447 (ad hoc runs). Untapered, a longer reach lost
(``--reach 0.375 0.5``: 0.842, 0.838; the glioblastomas, a few slices long, at K = 2 0.625 -> 0.591, as their last
slice got the drawn size); with the taper it gains (``REACH``)."""
TAPER = 4.0
"""Exponent of the drawn-size cap's taper (``CAP``): 2 is an ellipse's end, larger is flatter. Chosen with
``REACH`` at half a spacing (where the taper ends) on the validation groups of ``ENDS_BEYOND``, mean Dice over
K = 2, 3, 4, 6, 8 and the groups: 2 0.8461, 4 0.8470, 8 0.8469 (``choose_fill_reach.py --taper 2 8 --threads 1``, 4
from its ``--reach 0.25 0.5`` run; first found by ad hoc runs that gave the same figures); at K = 2 the organs
0.757, 0.766, 0.768, the glioblastomas 0.630, 0.626, 0.625."""
ENDS_BEYOND = 0.5
"""With two or more drawn slices, where the size profile expects the structure's ends: at least this many median
drawn-slice spacings beyond the outermost ones (:func:`~PromptSegLib.propagate.shape_prior.drawn_aspect`).
Chosen by ``Testing/benchmarks/choose_fill_reach.py --ends-beyond none 0.5 1 2 --threads 2`` on three validation
groups the model never saw, each weighing the same: the 61 OpenKBP organs above, 12 glioblastomas (TCIA
Brain-Tumor-Progression, T1c and FLAIR, 6.5 mm slices) and 11 hippocampi (MSD, 1 mm MR). Mean Dice over
K = 2, 3, 4, 6, 8 and the groups: 0.810 for every value (0.5 highest by under 0.001); at K = 2 0.629 (no span
prior), 0.633 (0.5), 0.631 (1), 0.630 (2). It helps the organs at K = 2 (0.685 -> 0.716) and costs the
glioblastomas, a few slices long (0.559 -> 0.539). Chosen with REACH at 0.5, before REACH was chosen again. Checked
again with ``CAP`` "drawn" before it tapered, ``REACH`` then a quarter (``--ends-beyond 0.5 1``; the profile's ends
then acted mainly through the bulge between the drawn slices): 0.845, 0.843 (at K = 2 the glioblastomas 0.625 ->
0.607 and the hippocampi 0.759 -> 0.743, the organs 0.748 both)."""


def drawn_slices(mask: np.ndarray, axis: int = 0) -> list[int]:
    """Indices of the slices along ``axis`` that hold any foreground of ``mask`` ``(Z, Y, X)``."""
    other = tuple(a for a in range(3) if a != axis)
    return [int(i) for i in np.nonzero(np.asarray(mask).any(axis=other))[0]]


def drawn_range(image: np.ndarray, axis: int, drawn: dict[int, np.ndarray], percentile: float, margin: float
                ) -> tuple[float, float]:
    """Intensity range of the drawn pixels of ``image`` ``(Z, Y, X)`` (slice index along ``axis`` -> bool 2D
    mask): their ``percentile`` and ``100 - percentile`` percentiles, widened on each side by ``margin`` times
    the width, in the image's units."""
    values = np.concatenate([take_slice(image, axis, k)[mask] for k, mask in drawn.items()])
    lo, hi = np.percentile(values, [percentile, 100.0 - percentile])
    return float(lo - margin * (hi - lo)), float(hi + margin * (hi - lo))


def _check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` when ``cancel`` (an object with ``is_set()``, or ``None``) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("fill cancelled; the segment is left as it was")


def _predict_batch(propagator: Propagator, queries: list[np.ndarray], prompts: list[tuple[np.ndarray, np.ndarray]]
                ) -> list[np.ndarray]:
    """One network call for several (query slice, (prompt slice, prompt mask)) pairs: their probabilities,
    each ``(H, W)`` on the slice grid."""
    boxes = [propagator.boxes(q, p, m) for q, (p, m) in zip(queries, prompts)]
    stack = lambda i: torch.from_numpy(np.stack([b[i] for b in boxes]).astype(np.float32))[:, None]  # noqa: E731
    with torch.no_grad():
        probs = torch.sigmoid(propagator.model.network(stack(0), stack(1), stack(2)))[:, 0].numpy()
    return [box_to_slice(p, b[3], b[4], q.shape) for p, b, q in zip(probs, boxes, queries)]


def bridge(propagator: Propagator, image: np.ndarray, axis: int, a: int, mask_a: np.ndarray, b: int,
           mask_b: np.ndarray, threshold: float, cancel=None, track: bool = TRACK,
           interpolation_weight: float = INTERPOLATION_WEIGHT,
           extra_areas: dict[int, float] | None = None) -> dict[int, np.ndarray]:
    """Masks of the slices strictly between drawn slices ``a < b`` (non-empty 2D masks ``mask_a``/``mask_b``).

    Each slice ``j`` starts from the shape-based interpolation of the two drawn masks (with ``track``, centred
    on the tracked centre, :func:`~PromptSegLib.propagate.tracking.tracked_centres`); the network refines it
    in one step from its neighbour on the side of the nearer drawn slice (that neighbour's image with its
    interpolated mask, or the drawn mask itself, as the prompt), and the refined probability is averaged with
    the interpolation's with ``interpolation_weight`` (``INTERPOLATION_WEIGHT``). One step from an interpolated
    prompt does not drift.
    ``cancel``: object with ``is_set()``, checked before each batch of slices. ``extra_areas``: slice index ->
    pixels added to the interpolated area there (see ``BULGE``).

    Returns:
        slice index -> bool ``(H, W)`` mask, for every slice in ``a + 1 .. b - 1``.
    """
    width = b - a
    shapes = {a: signed_distance_of(mask_a), b: signed_distance_of(mask_b)}
    centres = tracked_centres(image, axis, a, mask_a, b, mask_b) if track else {}
    for j in range(a + 1, b):
        shapes[j] = interpolated_distance(mask_a, mask_b, (j - a) / width, centre=centres.get(j),
                                          extra_area=(extra_areas or {}).get(j, 0.0))
    targets = list(range(a + 1, b))
    neighbours = [j - 1 if j - a <= b - j else j + 1 for j in targets]
    queries = [take_slice(image, axis, j).astype(np.float32) for j in targets]
    prompts = [(take_slice(image, axis, k).astype(np.float32), shapes[k] < 0) for k in neighbours]
    out = {}
    for start in range(0, len(targets), BATCH):
        _check_cancel(cancel)
        chunk = slice(start, start + BATCH)
        usable = [i for i in range(len(targets))[chunk] if prompts[i][1].any()]
        refined = dict(zip(usable, _predict_batch(propagator, [queries[i] for i in usable],
                                                  [prompts[i] for i in usable]))) if usable else {}
        for i in range(len(targets))[chunk]:
            shape = np.clip(0.5 - shapes[targets[i]] / (2 * INTERPOLATION_RAMP), 0.0, 1.0)
            network = refined.get(i, np.zeros_like(shape))
            out[targets[i]] = (1.0 - interpolation_weight) * network + interpolation_weight * shape >= threshold
    return out


def fill_from_slices(model: Propagator | str | None, image: np.ndarray, drawn: dict[int, np.ndarray],
                     axis: int | str = 0, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                     start: int | None = None, stop: int | None = None, threshold: float | None = None,
                     min_contrast: float | None = FADE_CONTRAST, reach: float | None = REACH,
                     ends_beyond: float | None = ENDS_BEYOND, track: bool = TRACK,
                     interpolation_weight: float = INTERPOLATION_WEIGHT, bulge: float = BULGE,
                     min_pixels: int | None = None, intensity_range: tuple[float, float] | None = INTENSITY_RANGE,
                     tube_aspect: float | None = TUBE_ASPECT, tube_reach: float | None = TUBE_REACH,
                     cap: str = CAP, taper: float = TAPER, prior: OrganPrior | None = None,
                     prior_weight: float | None = None, progress: ProgressCallback | None = None,
                     cancel=None) -> PropagationResult:
    """Fill a structure from the slices the user drew (see the module docstring).

    Args:
        model: a :class:`~PromptSegLib.propagate.propagator.Propagator`, a model folder, or ``None`` (bundled model).
        image: ``(Z, Y, X)`` intensities.
        drawn: slice index along ``axis`` -> bool 2D mask the user drew (empty: the structure is absent there);
            at least one non-empty.
        spacing: voxel size (mm) along the array's axes ``(Z, Y, X)``.
        start, stop: range limits (inclusive) of the slices filled beyond the outermost drawn ones.
        threshold: probability threshold (default: the model's). min_contrast: the stopping rule beyond the
            outermost drawn slices (:func:`~PromptSegLib.propagate.propagator.propagate`).
        reach: with two or more non-empty drawn slices, fill at most this many median drawn-slice spacings
            beyond the outermost ones (``REACH``; ``None``: no such limit).
        ends_beyond: with two or more, the size profile expects the structure's ends at least this many median
            drawn-slice spacings beyond the outermost ones (``ENDS_BEYOND``; ``None``: only the compact-structure
            prior :data:`~PromptSegLib.propagate.shape_prior.ASPECT`).
        track: between drawn slices, centre the interpolated shape on the tracked centre (``TRACK``).
        interpolation_weight: between drawn slices, the interpolated shape's share of each slice's probability
            (``INTERPOLATION_WEIGHT``; the rest: the network's refinement).
        bulge: between drawn slices, the share of the size profile's bulge added to the interpolated area
            (``BULGE``).
        min_pixels: beyond the outermost drawn slices, a mask of fewer pixels has vanished (``None``:
            :func:`~PromptSegLib.propagate.propagator.vanishing_pixels` of the drawn slices).
        intensity_range: ``(percentile, margin)`` of the drawn pixels' intensities outside which no pixel is
            filled (``INTENSITY_RANGE``; ``None``: any intensity).
        tube_aspect: with two or more non-empty drawn slices, a structure drawn at least this elongated is
            carried beyond the outermost ones along the anatomy, not by the network (``TUBE_ASPECT``; ``None``:
            never), then up to ``tube_reach`` median drawn-slice spacings where ``reach`` is shorter
            (``TUBE_REACH``; ``None``: ``reach``).
        cap: ``"drawn"`` or ``"profile"``, the size cap beyond the outermost drawn slices where a reach bounds the
            fill (``CAP``); taper: the drawn-size cap's exponent (``TAPER``).
        prior: an organ prior for these drawn slices (:func:`~PromptSegLib.propagate.organ_prior.organ_prior`), or
            ``None``; prior_weight: its share of each voxel's vote (:func:`~.organ_prior.apply_prior`; ``None``:
            :func:`~.organ_prior.vote_weight`).
        progress: ``(fraction, message)`` callback; cancel: object with ``is_set()``.

    Returns:
        A :class:`~PromptSegLib.propagate.propagator.PropagationResult`: ``mask`` bool ``(Z, Y, X)`` holding the drawn
        slices as given; ``written`` the slices filled; ``stopped`` why each outward direction stopped.

    Raises:
        PromptSegError: no non-empty drawn slice, a drawn slice outside the volume.
        InputImageError: not a 3D image, a drawn slice of the wrong shape.
        Cancelled: the cancel flag was set.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputImageError(f"the image is {image.ndim}D; filling needs a 3D volume")
    axis = resolve_axis(axis)
    n = image.shape[axis]
    plane = take_slice(image, axis, 0).shape
    drawn = {int(k): np.asarray(v, bool) for k, v in drawn.items()}
    for k, v in drawn.items():
        if not 0 <= k < n:
            raise PromptSegError(f"drawn slice {k} is outside the volume (slices 0..{n - 1} along axis {axis})")
        if v.shape != plane:
            raise InputImageError(f"drawn slice {k} has shape {v.shape}, the slices are {plane}")
    order = sorted(drawn)
    full = [k for k in order if drawn[k].any()]
    if not full:
        raise PromptSegError("no drawn slice holds the structure: draw it on at least one slice")
    if cap not in ("drawn", "profile"):
        raise PromptSegError(f"unknown cap {cap!r}: 'drawn' or 'profile'")
    if not taper > 0:
        raise PromptSegError(f"taper must be > 0, not {taper}")
    if prior is not None and prior_weight is not None:
        check_weight(prior_weight)
    propagator = model if isinstance(model, Propagator) else Propagator(model)
    threshold = propagator.config.threshold if threshold is None else float(threshold)
    progress = progress or (lambda fraction, message: None)
    lo, hi = slice_range(start, stop, n)
    step_mm = float(spacing[axis])
    pixel_area = float(np.prod([spacing[i] for i in range(3) if i != axis]))
    positions, radii = [k * step_mm for k in full], [equivalent_radius(drawn[k], pixel_area) for k in full]
    aspect = drawn_aspect(positions, radii, ends_beyond)
    profile = fit_profile(positions, radii, aspect=aspect)
    tube = tube_aspect is not None and len(full) >= 2 and aspect >= tube_aspect
    if tube and tube_reach is not None and reach is not None:
        reach = max(reach, tube_reach)
    drawn_spacing = float(np.median(np.diff(full))) if len(full) >= 2 else None  # slices
    if reach is not None and drawn_spacing is not None:
        beyond = int(round(reach * drawn_spacing))
        lo, hi = max(lo, full[0] - beyond), min(hi, full[-1] + beyond)
    if min_pixels is None:
        min_pixels = vanishing_pixels(int(np.count_nonzero(drawn[k])) for k in full)
    # the expected end, in slices beyond the nearest drawn one (a drawn-size cap needs one: a reach and ends)
    end = (ends_beyond * drawn_spacing
           if cap == "drawn" and reach is not None and ends_beyond is not None and drawn_spacing is not None else None)

    def limit(j: int, predicted: np.ndarray) -> np.ndarray:
        if end is None:
            radius = profile.radius(j * step_mm)
        else:
            nearest = int(np.argmin([abs(k - j) for k in full]))
            distance = abs(j - full[nearest])
            radius = radii[nearest] * math.sqrt(1.0 - (distance / end) ** taper) if distance < end else 0.0
        return shrink_to_radius(predicted, radius, pixel_area)

    out = np.zeros(image.shape, bool)
    for k, v in drawn.items():
        set_slice(out, axis, k, v)
    result = PropagationResult(out)
    # (a, b) pairs of neighbouring drawn slices, plus the open ends beyond the outermost ones
    spans = [(None, order[0])] + list(zip(order[:-1], order[1:])) + [(order[-1], None)]
    total = max(sum((b if b is not None else hi + 1) - (a if a is not None else lo - 1) - 1 for a, b in spans), 1)
    for a, b in spans:
        done = len(result.written)
        if a is not None and b is not None and drawn[a].any() and drawn[b].any():
            extra = {j: bulge * profile.excess_area(a * step_mm, b * step_mm, j * step_mm) / pixel_area
                     for j in range(a + 1, b)} if bulge else None
            for j, m in bridge(propagator, image, axis, a, drawn[a], b, drawn[b], threshold, cancel,
                               track, interpolation_weight, extra).items():
                set_slice(out, axis, j, m)
                result.written.append(j)
        else:
            # one side carries the structure outwards (up to the other drawn slice, or the range limit)
            source = a if a is not None and drawn[a].any() else b if b is not None and drawn[b].any() else None
            if source is None:
                continue
            first = lo if a is None else a + 1
            last = hi if b is None else b - 1
            first, last = (max(first, lo), min(last, hi))
            if first > last:
                continue
            direction = +1 if source == a else -1
            if tube:
                _check_cancel(cancel)
                outwards = range(source + 1, last + 1) if direction > 0 else range(source - 1, first - 1, -1)
                for j, m in carried_shape(image, axis, source, drawn[source], list(outwards)).items():
                    set_slice(out, axis, j, m)
                    result.written.append(j)
                if a is None or b is None:
                    result.stopped[direction] = "reached the end of the range (a tube, carried along the anatomy)"
            else:
                span = propagate(propagator, image, out, source, axis, start=min(first, source),
                                 stop=max(last, source), threshold=threshold, min_contrast=min_contrast,
                                 stop_at_fixed=True, min_pixels=min_pixels, fixed={source: drawn[source]},
                                 cancel=cancel, limit=limit)
                out[...] = span.mask
                result.written += span.written
                result.reprompts += span.reprompts
                if a is None or b is None:
                    result.stopped[direction] = span.stopped[direction]
        progress(min(len(result.written) / total, 1.0), f"filled {len(result.written) - done} slices")
    if intensity_range is not None:
        low, high = drawn_range(image, axis, {k: drawn[k] for k in full}, *intensity_range)
        for j in set(result.written):
            values = take_slice(image, axis, j)
            set_slice(out, axis, j, take_slice(out, axis, j) & (values >= low) & (values <= high))
    if prior is not None:
        # what the prior adds stays in the fill's range: within start/stop and the reach, short of erased slices
        below = max((k for k in order if k < full[0] and not drawn[k].any()), default=lo - 1)
        above = min((k for k in order if k > full[-1] and not drawn[k].any()), default=hi + 1)
        out[...] = apply_prior(out, prior, drawn, axis, prior_weight, (max(lo, below + 1), min(hi, above - 1)))
        result.prior = prior
        written = set(result.written)
        result.written += [j for j in np.nonzero(out.any(axis=tuple(i for i in range(3) if i != axis)))[0].tolist()
                           if j not in written and j not in drawn]
    progress(1.0, f"filled {len(result.written)} slices from {len(full)} drawn")
    return result

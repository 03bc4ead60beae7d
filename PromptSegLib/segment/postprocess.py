"""Post-processing of per-target probabilities on the input grid, as a model's config asks for it.

- **Largest connected component** (``ModelConfig.largest_component``: organs that are one piece, where
  validation showed it helps): voxels at or above the threshold outside the largest 26-connected piece are set
  to 0, so stray pieces vanish; probabilities below the threshold are kept (fusion still sees them).
- **Own side** (``ModelConfig.own_side``: targets of one side, e.g. the left parotid, where validation showed it
  helps): pieces whose centre lies on the other side of the body's midline (the median LPS x of the voxels
  brighter than the image mean) are removed.
- **Plausible size** (``ModelConfig.plausible_ml``: per target, the smallest volume in mL the training truth
  ever had): a target whose kept mask is smaller than a fraction of that is most likely not in the scan (a
  head-and-neck organ asked on an abdominal CT): it is emptied and a ``ImplausibleResultWarning`` says so.
- **Plausible body region** (``ModelConfig.widest_body_cm2``, CT only, applied first: per target, the widest
  body cross-section its training truth ever lay in, measured on the slice through the middle of the organ): a
  26-connected piece whose middle slice cuts a body more than :data:`BODY_AREA_FACTOR` times wider lies in
  another body region (a parotid found in the shoulders, or asked on an abdominal CT, whose cross-section is two
  to three times a head's) and is removed; a mask removed whole comes with a warning. Only the upper bound is
  checked: a scan cropped to a small field of view keeps its organs.
- **Air inside the body** (``ModelConfig.most_air_cm2``, CT only, applied with the body region: per target, the
  most air enclosed by the body's outline, ``preprocess.enclosed_air_cm2``, on the middle slice of its training
  truth): a piece whose middle slice encloses far more air (:func:`air_limit_cm2`: the lungs of a chest CT under
  a parotid found there) lies in another body region and is removed, with a warning when the whole mask goes.
- **Near its anchor** (``ModelConfig.anchored``, applied after the region check: per target, an anchor target and
  how far beyond the anchor's extent along the body axis its training truth ever lay): a piece with no voxel of
  the anchor's mask within that distance (plus :data:`ANCHOR_MARGIN_MM`) is removed where the scan covers that
  distance (parotids asked on a chest CT cropped through the body, which the region check cannot see, have no
  mandible near them), with a warning when the whole mask goes. A piece near the scan's end is kept: its anchor
  may lie beyond it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PromptSegLib.notes import note

MIN_VOLUME_FRACTION = 0.2
"""A mask below this fraction of the smallest training volume of its target is taken as not found."""
BODY_AREA_FACTOR = 1.25
"""A piece of a mask whose middle slice cuts a body more than this times wider than its target's widest in
training is taken as lying in another body region."""


AIR_FACTOR = 2.0
"""A piece whose middle slice encloses more than this times the most air its target had in training (and at
least :data:`AIR_MARGIN_CM2` more) is taken as lying in another body region."""
ANCHOR_MARGIN_MM = 20.0
"""Slack (mm) along the body axis beyond the farthest a target's training truth lay from its anchor: for the
masks' own errors at their ends."""
AIR_MARGIN_CM2 = 50.0
"""The least excess of enclosed air (cm²) over the most in training that removes a piece: an open mouth or a
wide airway adds a few cm², a lung adds a hundred or more."""


class ImplausibleResultWarning(UserWarning):
    """A target's mask was emptied: far smaller than the target ever is (most likely not in the scan)."""


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean ``(Z, Y, X)`` mask (an empty mask stays empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask.copy() if count else np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 26-connected pieces of a boolean ``(Z, Y, X)`` mask that overlap ``seed`` (same shape); the largest piece
    where none does (an empty mask stays empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    kept = np.unique(labels[seed & mask])
    if count and not kept.size:
        return largest_component(mask)
    return np.isin(labels, kept[kept > 0])


def physical_lps(image: sitk.Image, zyx: np.ndarray, axis: int) -> np.ndarray:
    """One LPS coordinate (mm; ``axis`` 0: x, grows to the patient's left; 2: z, grows to the head) of voxels
    given as ``(N, 3)`` array indices ``[z, y, x]``."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return image.GetOrigin()[axis] + zyx[:, ::-1].astype(np.float64) @ (direction[axis] * np.array(image.GetSpacing()))


def physical_x(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """LPS x (mm; grows to the patient's left) of voxels given as ``(N, 3)`` array indices ``[z, y, x]``."""
    return physical_lps(image, zyx, 0)


def midline_x(image: sitk.Image) -> float:
    """The body's midline as an LPS x (mm): the median x of the voxels brighter than the image mean (the body
    on a CT, whose air is darker), on every second voxel."""
    array = sitk.GetArrayViewFromImage(image)
    body = np.argwhere(array[::2, ::2, ::2] > float(array.mean())) * 2
    return float(np.median(physical_x(image, body))) if len(body) else float(
        physical_x(image, (np.array(array.shape)[None] - 1) / 2)[0])


def own_side(mask: np.ndarray, image: sitk.Image, side: str, midline: float | None = None,
             origin: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """``mask`` without the 26-connected pieces whose centre lies on the other side of the midline.

    Args:
        mask: bool ``(z, y, x)`` on ``image``'s grid, its first voxel at array index ``origin``.
        side: ``left`` or ``right`` (the patient's).
        midline: LPS x in mm (default :func:`midline_x`).
    """
    midline = midline_x(image) if midline is None else midline
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask.copy()
    centres = np.array(ndimage.center_of_mass(mask, labels, range(1, count + 1)))
    x = physical_x(image, centres + np.asarray(origin))
    keep = np.concatenate([[False], x > midline if side == "left" else x < midline])
    return keep[labels]


@dataclass(frozen=True)
class AnchorWindow:
    """Where along the body axis (LPS z, mm) an anchored target's pieces need their anchor, in one scan.

    Attributes:
        anchor: the anchor target's name.
        extent_mm: ``(lowest, highest)`` z of the anchor's mask in this scan; None when it was not found.
        reach_mm: ``(below, above)``: how far below and above the anchor's extent the target's training truth lay,
            each plus :data:`ANCHOR_MARGIN_MM`.
        scan_mm: ``(lowest, highest)`` z the scan covers.
    """

    anchor: str
    extent_mm: tuple[float, float] | None
    reach_mm: tuple[float, float]
    scan_mm: tuple[float, float]


def anchor_window(anchor_mask: np.ndarray, image: sitk.Image, anchor: str, below_mm: float, above_mm: float,
                  origin: tuple[int, int, int] = (0, 0, 0)) -> AnchorWindow:
    """The :class:`AnchorWindow` of ``anchor_mask`` (bool ``(z, y, x)`` on ``image``'s grid from array index
    ``origin``) for a target whose training truth lay up to ``below_mm`` below and ``above_mm`` above its
    anchor's (negative: it always reached that far into the anchor's extent)."""
    scan = _z_span(image, np.zeros(3, int), np.array(image.GetSize()[::-1]) - 1)
    return AnchorWindow(anchor, z_extent(anchor_mask, image, origin),
                        (below_mm + ANCHOR_MARGIN_MM, above_mm + ANCHOR_MARGIN_MM), scan)


def z_extent(mask: np.ndarray, image: sitk.Image, origin: tuple[int, int, int] = (0, 0, 0)
             ) -> tuple[float, float] | None:
    """The lowest and highest LPS z (mm) of the index box of ``mask``'s voxels (bool ``(z, y, x)`` on ``image``'s
    grid from array index ``origin``; on an axis-aligned grid, of the voxels themselves), None when empty."""
    if not mask.any():
        return None
    points = np.argwhere(mask)
    return _z_span(image, points.min(axis=0) + np.asarray(origin), points.max(axis=0) + np.asarray(origin))


def _z_span(image: sitk.Image, low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """The lowest and highest LPS z (mm) of the index box from ``low`` to ``high`` (inclusive, ``(z, y, x)``): those
    of its eight corners, whose extent along any axis of space is that of the voxels it holds."""
    corners = np.array([[(low, high)[(i >> k) & 1][k] for k in range(3)] for i in range(8)])
    z = physical_lps(image, corners, 2)
    return float(z.min()), float(z.max())


def away_from_anchor(mask: np.ndarray, image: sitk.Image, window: AnchorWindow,
                     origin: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """The 26-connected pieces of ``mask`` (bool ``(z, y, x)`` on ``image``'s grid from array index ``origin``)
    that their anchor's mask does not reach as every training truth's did: its lowest voxel at most ``reach_mm[0]``
    above the piece's highest, and its highest at least ``reach_mm[1]`` below the piece's lowest (negative: that
    far above). A piece is kept where such an anchor could lie beyond the scan's ends, and an anchor's mask that
    reaches a scan's end is taken to run on beyond it."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    away = np.zeros(count + 1, bool)
    below, above = window.reach_mm
    extent = window.extent_mm
    if extent is not None:  # cut by the scan's end, the anchor may reach farther
        extent = (-np.inf if extent[0] <= window.scan_mm[0] + 1e-3 else extent[0],
                  np.inf if extent[1] >= window.scan_mm[1] - 1e-3 else extent[1])
    for index, piece in enumerate(ndimage.find_objects(labels), start=1):
        low = np.array([s.start for s in piece]) + np.asarray(origin)
        bottom, top = _z_span(image, low, low + [s.stop - s.start - 1 for s in piece])
        lowest, highest = top + below, bottom - above  # bounds on the anchor's lowest and highest z
        near = extent is not None and extent[0] <= lowest and extent[1] >= highest
        away[index] = not near and lowest <= window.scan_mm[1] and highest >= window.scan_mm[0]
    return away[labels]


def middle_slice_area(mask: np.ndarray, body_cm2: np.ndarray) -> float | None:
    """A per-slice area (cm²) on the middle slice of ``mask`` (the median first-axis index of its voxels);
    None for an empty mask.

    Args:
        mask: bool ``(Z, Y, X)``.
        body_cm2: ``(Z,)`` an area per slice: the body's cross-section (``preprocess.body_areas_cm2``) or the
            air it encloses (``preprocess.enclosed_air_cm2``).
    """
    z = np.nonzero(mask.any(axis=(1, 2)))[0]
    if not len(z):
        return None
    per_slice = mask[z].sum(axis=(1, 2))
    middle = z[int(np.searchsorted(np.cumsum(per_slice), per_slice.sum() / 2.0))]
    return float(body_cm2[middle])


def air_limit_cm2(most_cm2: float) -> float:
    """The enclosed air (cm²) on a piece's middle slice above which it lies in another body region, for a target
    whose training truth had at most ``most_cm2``: :data:`AIR_FACTOR` times that, and at least
    :data:`AIR_MARGIN_CM2` more."""
    return max(AIR_FACTOR * most_cm2, most_cm2 + AIR_MARGIN_CM2)


def pieces_above(mask: np.ndarray, per_slice_cm2: np.ndarray, limit_cm2: float) -> np.ndarray:
    """The 26-connected pieces of ``mask`` whose middle slice (:func:`middle_slice_area`) has more than
    ``limit_cm2`` of ``per_slice_cm2``: bool, the shape of ``mask``.

    Args:
        mask: bool ``(Z, Y, X)``.
        per_slice_cm2: ``(Z,)`` an area per slice of ``mask``'s first axis (body cross-section, enclosed air).
        limit_cm2: the largest area a piece may lie in.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    out = np.zeros_like(mask, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        piece = labels[box] == index
        if middle_slice_area(piece, per_slice_cm2[box[0]]) > limit_cm2:
            out[box] |= piece
    return out


def region_checks(name: str, widest_body_cm2: dict[str, float] | None, body_cm2: np.ndarray | None,
                  most_air_cm2: dict[str, float] | None = None,
                  air_cm2: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
    """The body-region bounds that apply to target ``name``: ``(per-slice areas (Z,), limit cm²)`` pairs for
    :func:`pieces_above`, none when the model has no bound for ``name`` or the areas are not given (not CT)."""
    widest = (widest_body_cm2 or {}).get(name)
    most = (most_air_cm2 or {}).get(name)
    checks = [(body_cm2, BODY_AREA_FACTOR * widest) if widest and body_cm2 is not None else None,
              (air_cm2, air_limit_cm2(most)) if most is not None and air_cm2 is not None else None]
    return [c for c in checks if c is not None]


def out_of_region_pieces(mask: np.ndarray, name: str, widest_body_cm2: dict[str, float] | None,
                         body_cm2: np.ndarray | None, most_air_cm2: dict[str, float] | None = None,
                         air_cm2: np.ndarray | None = None) -> np.ndarray | None:
    """The pieces of target ``name``'s ``mask`` ``(Z, Y, X)`` that lie in another body region: a body more than
    :data:`BODY_AREA_FACTOR` times wider than its widest in training, or far more enclosed air than its most
    (:func:`air_limit_cm2`); bool like ``mask``, or None when neither bound applies (not CT, no bound for
    ``name``). ``body_cm2`` and ``air_cm2``: ``(Z,)`` per slice of ``mask``'s first axis."""
    checks = region_checks(name, widest_body_cm2, body_cm2, most_air_cm2, air_cm2)
    if not checks:
        return None
    out = np.zeros_like(mask, dtype=bool)
    for per_slice, limit in checks:
        out |= pieces_above(mask, per_slice, limit)
    return out


def postprocess(probabilities: np.ndarray, names: list[str], threshold: float, voxel_ml: float,
                largest: list[str] | tuple[str, ...] = (), plausible_ml: dict[str, float] | None = None,
                sides: dict[str, str] | None = None, image: sitk.Image | None = None,
                widest_body_cm2: dict[str, float] | None = None, body_cm2: np.ndarray | None = None,
                origin: tuple[int, int, int] = (0, 0, 0), midline: float | None = None,
                most_air_cm2: dict[str, float] | None = None, air_cm2: np.ndarray | None = None,
                anchors: dict[str, AnchorWindow] | None = None) -> np.ndarray:
    """Apply the model's post-processing in place.

    Args:
        probabilities: ``(T, z, y, x)``, one channel per name, on the input grid or on a box of it that holds
            every voxel at or above ``threshold``: float32 in [0, 1], or uint8 1/255 steps with ``threshold`` in
            steps too (``probability.level``).
        names: the target name of each channel.
        threshold: probability at or above which a voxel is in a target.
        voxel_ml: the volume of one voxel in mL.
        largest: targets reduced to their largest connected component.
        plausible_ml: target -> smallest volume (mL) its training truth had.
        sides: target -> ``left`` or ``right``: pieces on the other side of ``image``'s midline are removed.
        image: the input image (for ``sides``).
        widest_body_cm2: target -> the widest body cross-section (cm²) on its middle slice in training.
        body_cm2: ``(Z,)`` the input's body cross-section per slice (CT; None skips the body-width check).
        origin: the input-grid index ``(z, y, x)`` of the first voxel of ``probabilities``.
        midline: the body's midline (LPS x, mm) for ``sides``; default :func:`midline_x` of ``image``.
        most_air_cm2: target -> the most air enclosed by the body on its middle slice in training (cm²).
        air_cm2: ``(Z,)`` the input's enclosed air per slice (CT; None skips the air check).
        anchors: target -> the window its anchor's mask in this scan sets (:func:`anchor_window`; needs ``image``).

    Returns:
        ``probabilities`` (changed in place).
    """
    if midline is None and sides and image is not None:
        midline = midline_x(image)
    body_cm2 = None if body_cm2 is None else body_cm2[origin[0]:]
    air_cm2 = None if air_cm2 is None else air_cm2[origin[0]:]
    for channel, name in zip(probabilities, names):
        smallest = (plausible_ml or {}).get(name)
        window = (anchors or {}).get(name) if image is not None else None
        if not (region_checks(name, widest_body_cm2, body_cm2, most_air_cm2, air_cm2) or name in largest or smallest
                or (sides and name in sides and midline is not None) or window):
            continue  # no rule for this target: its map is left as it is, unread (78 MB on a 512x512x300 CT)
        mask = channel >= threshold
        outside = out_of_region_pieces(mask, name, widest_body_cm2, body_cm2, most_air_cm2, air_cm2) if mask.any() \
            else None
        if outside is not None and outside.any():
            channel[outside] = 0.0
            if not (channel >= threshold).any():
                note(_region_message(name, mask, widest_body_cm2, body_cm2, most_air_cm2, air_cm2),
                     ImplausibleResultWarning)
            mask = channel >= threshold
        if window and mask.any():
            away = away_from_anchor(mask, image, window, origin)
            if away.any():
                channel[away] = 0.0
                if not (channel >= threshold).any():
                    note(_anchor_message(name, window), ImplausibleResultWarning)
                mask = channel >= threshold
        if sides and name in sides and midline is not None and mask.any():
            channel[mask & ~own_side(mask, image, sides[name], midline, origin)] = 0.0
            mask = channel >= threshold
        if name in largest and mask.any():
            channel[mask & ~largest_component(mask)] = 0.0
            mask = channel >= threshold
        if smallest:
            volume = float(mask.sum()) * voxel_ml
            if 0 < volume < MIN_VOLUME_FRACTION * smallest:
                channel[mask] = 0.0
                note(f"{name}: {volume:.1f} mL found, far below its smallest size in training "
                     f"({smallest:.1f} mL): most likely not in this scan; left empty", ImplausibleResultWarning)
    return probabilities


def _anchor_message(name: str, window: AnchorWindow) -> str:
    """Why a target's whole mask was removed by its anchor ``window``."""
    return (f"{name}: no {window.anchor} found where every training scan had one beside it (this scan reaches "
            "there): most likely a scan of another body region; left empty")


def _region_message(name: str, mask: np.ndarray, widest_body_cm2: dict[str, float] | None,
                    body_cm2: np.ndarray | None, most_air_cm2: dict[str, float] | None,
                    air_cm2: np.ndarray | None) -> str:
    """Why a target's whole ``mask`` was taken as lying in another body region (the bound its middle slice
    exceeds: the body's width first, else the enclosed air)."""
    widest, most = (widest_body_cm2 or {}).get(name), (most_air_cm2 or {}).get(name)
    area = middle_slice_area(mask, body_cm2) if widest and body_cm2 is not None else None
    if area is not None and (area > BODY_AREA_FACTOR * widest or most is None or air_cm2 is None):
        return (f"{name}: found where the body's cross-section is {area:.0f} cm², {area / widest:.1f} times the "
                f"widest it had in training ({widest:.0f} cm²): most likely a scan of another body region; left empty")
    air = middle_slice_area(mask, air_cm2)
    return (f"{name}: found where the body encloses {air:.0f} cm² of air (the lungs?), against at most {most:.0f} cm² "
            "in training: most likely a scan of another body region; left empty")

"""What a clinician expects around a mask, computed (not generated) from the mask and the image.

- ``detect``: one box per connected component of a probability map, with its confidence and volume.
- ``describe``: volume, components, extent, centroid and location in patient terms, intensity (HU for CT,
  SUV for PET), sphericity, elongation, touching segments, and one readable sentence.

Masks are ``(Z, Y, X)`` arrays on ``image``'s grid; physical coordinates are ITK's LPS millimetres
(+x = patient's left, +y = posterior, +z = superior).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PromptSegLib.text.modality import canonical_modality

NUMBER_WORDS = ["No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten"]
UNITS = {"CT": "HU", "PET": "SUV", "MR": ""}


def voxel_ml(image: sitk.Image) -> float:
    """Volume of one voxel in mL."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def index_to_lps(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """``(N, 3)`` array indices ``(z, y, x)`` -> ``(N, 3)`` LPS mm."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk = np.asarray(zyx, dtype=float)[:, ::-1]
    return np.array(image.GetOrigin()) + (ijk * np.array(image.GetSpacing())) @ direction.T


@dataclass
class Detection:
    """One connected component: boxes as ``[min, max]`` voxel indices (i, j, k) and LPS mm corners."""

    target: str
    index: int
    box_ijk: list[list[int]]
    box_lps_mm: list[list[float]]
    centroid_lps_mm: list[float]
    volume_ml: float
    mean_probability: float
    max_probability: float


def detect(probabilities: np.ndarray, threshold: float, image: sitk.Image, target: str,
           min_volume_ml: float = 0.0) -> list[Detection]:
    """Connected components (26-connected) of ``probabilities >= threshold``, most confident first."""
    labels, count = ndimage.label(probabilities >= threshold, structure=np.ones((3, 3, 3)))
    detections = []
    for component, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == component
        volume = float(inside.sum()) * voxel_ml(image)
        if volume < min_volume_ml:
            continue
        values = probabilities[box][inside]
        points = np.argwhere(labels == component)
        lo, hi = points.min(axis=0), points.max(axis=0)
        corners = index_to_lps(image, np.array([[z, y, x] for z in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                                for x in (lo[2], hi[2])]))
        detections.append(Detection(
            target, 0, [lo[::-1].tolist(), hi[::-1].tolist()],
            [corners.min(axis=0).round(2).tolist(), corners.max(axis=0).round(2).tolist()],
            index_to_lps(image, points.mean(axis=0, keepdims=True))[0].round(2).tolist(),
            round(volume, 3), round(float(values.mean()), 4), round(float(values.max()), 4)))
    detections.sort(key=lambda d: (-d.max_probability, -d.volume_ml))
    for rank, detection in enumerate(detections, start=1):
        detection.index = rank
    return detections


@dataclass
class Description:
    """Attributes of one segment; ``sentence`` puts the main ones in words."""

    name: str
    volume_ml: float
    components: int
    extent_mm: list[float]
    centroid_lps_mm: list[float]
    side: str
    level: str
    depth: str
    mean_intensity: float
    std_intensity: float
    intensity_unit: str
    sphericity: float
    elongation: float
    touching: list[str]
    sentence: str

    def to_dict(self) -> dict:
        return asdict(self)


def body_mask(image: sitk.Image, modality: str) -> np.ndarray:
    """Where the patient is: CT above -500 HU, other modalities above an Otsu threshold; largest component."""
    array = sitk.GetArrayViewFromImage(image)
    if canonical_modality(modality) == "CT":
        inside = array > -500
    else:
        inside = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1)) > 0
    labels, count = ndimage.label(inside)
    if count == 0:
        return np.ones(array.shape, bool)
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def surface_area_mm2(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """Area of the marching-cubes surface of a binary mask (padded so it is closed)."""
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 1)
    vertices, faces, _, _ = marching_cubes(padded, 0.5, spacing=spacing_zyx)
    return float(mesh_surface_area(vertices, faces))


def describe(name: str, mask: np.ndarray, image: sitk.Image, modality: str, region: str = "",
             others: dict[str, np.ndarray] | None = None) -> Description:
    """Describe segment ``name`` (``mask`` on ``image``'s grid) in numbers and one sentence.

    Location: side from the centroid's x against the body's mid-line (within 1 cm: "midline"); level as the
    cranial/middle/caudal third of the body's extent in the scan; depth as anterior/posterior half.
    Sphericity = pi^(1/3) (6V)^(2/3) / A (1 for a sphere); elongation = sqrt(second / largest principal
    moment) (1 = as wide as long, small = elongated).
    """
    modality = canonical_modality(modality)
    mask = mask.astype(bool)
    unit = UNITS[modality]
    spacing_zyx = tuple(reversed(image.GetSpacing()))
    touching = [other for other, m in (others or {}).items()
                if other != name and m.shape == mask.shape and np.any(ndimage.binary_dilation(mask) & m)]
    if not mask.any():
        return Description(name, 0.0, 0, [0.0, 0.0, 0.0], [], "", "", "", float("nan"), float("nan"), unit,
                           float("nan"), float("nan"), touching, "Empty.")
    _, components = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    points = index_to_lps(image, np.argwhere(mask))
    centroid = points.mean(axis=0)
    extent = (points.max(axis=0) - points.min(axis=0) + np.abs(np.array(image.GetSpacing()))).round(1)
    body = index_to_lps(image, np.argwhere(body_mask(image, modality))[::7])
    mid, low, high = body.mean(axis=0), body.min(axis=0), body.max(axis=0)
    side = "midline" if abs(centroid[0] - mid[0]) < 10 else ("left" if centroid[0] > mid[0] else "right")
    third = (centroid[2] - low[2]) / max(high[2] - low[2], 1e-6)
    level = "upper" if third > 2 / 3 else ("lower" if third < 1 / 3 else "middle")
    depth = "posterior" if centroid[1] > mid[1] else "anterior"
    values = sitk.GetArrayViewFromImage(image)[mask].astype(np.float64)
    volume = float(mask.sum()) * voxel_ml(image)
    area = surface_area_mm2(mask, spacing_zyx)
    sphericity = float(np.pi ** (1 / 3) * (6 * volume * 1000) ** (2 / 3) / area) if area else float("nan")
    moments = np.sort(np.linalg.eigvalsh(np.cov((points - centroid).T))) if len(points) > 3 else np.ones(3)
    elongation = float(np.sqrt(moments[1] / moments[2])) if moments[2] > 0 else 1.0
    where = " ".join(w for w in (side if side != "midline" else "midline", level, region) if w)
    intensity = f"mean {values.mean():.0f} {unit}".strip() if modality == "CT" else (
        f"mean {values.mean():.2f} {unit}".strip())
    count_text = NUMBER_WORDS[components] if components < len(NUMBER_WORDS) else str(components)
    sentence = (f"{count_text} component{'s' if components != 1 else ''}, {volume:.1f} mL in total, {where}, "
                f"{intensity}" + (f", touching the {', the '.join(touching)}" if touching else "") + ".")
    return Description(name, round(volume, 2), int(components), extent.tolist(), centroid.round(1).tolist(),
                       side, level, depth, round(float(values.mean()), 2), round(float(values.std()), 2), unit,
                       round(sphericity, 3), round(elongation, 3), touching, sentence)

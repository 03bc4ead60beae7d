"""A PNG picture of a result: an axial and a coronal slice with every target's mask blended in colour."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.export.segfile import segment_color
from PromptSegLib.io.outputs import atomic_path
from PromptSegLib.preprocessing.preprocess import bounding_box, model_grid, resample_to
from PromptSegLib.segment.inference import SegmentationResult


def _cut(piece: tuple[tuple[slice, slice, slice], np.ndarray], shape: tuple[int, int, int], axis: int,
         index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a ``(Z, Y, X)`` mask of ``shape`` held as ``(box, mask[box])``."""
    box, values = piece
    out = np.zeros([n for a, n in enumerate(shape) if a != axis], bool)
    if box[axis].start <= index < box[axis].stop:
        out[tuple(s for a, s in enumerate(box) if a != axis)] = np.take(values, index - box[axis].start, axis=axis)
    return out


def _display(gray: np.ndarray, masks: list[np.ndarray], colors: list[list[float]], alpha: float) -> np.ndarray:
    """Grey slice in [0, 1] plus masks -> RGB uint8 with outlines drawn at full colour."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for mask, color in zip(masks, colors):
        color = np.array(color)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * color
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        rgb[edge] = color
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _legend(names: list[str], colors: list[list[float]], width: int) -> np.ndarray:
    """A band ``(H, width, 3)`` uint8 naming each target beside a patch of its colour, wrapped into rows."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    entries = [(name, tuple(int(round(255 * c)) for c in color)) for name, color in zip(names, colors)]
    rows, row, used = [], [], 0
    for name, color in entries:
        size = 18 + int(font.getlength(name)) + 16
        if row and used + size > width:
            rows.append(row)
            row, used = [], 0
        row.append((name, color, used))
        used += size
    rows.append(row)
    band = Image.new("RGB", (width, 20 * len(rows) + 4), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for r, entries_of_row in enumerate(rows):
        for name, color, x in entries_of_row:
            y = 4 + 20 * r
            draw.rectangle([x + 4, y + 2, x + 16, y + 14], fill=color)
            draw.text((x + 20, y + 2), name, fill=(255, 255, 255), font=font)
    return np.asarray(band, dtype=np.uint8)


def write_overlay(path: str | os.PathLike, result: SegmentationResult, alpha: float = 0.4) -> Path:
    """Write ``path`` (PNG): axial (left) and coronal (right) slices through the largest segmented area,
    shown in radiological convention (patient's right on the image's left), isotropic pixels, and a legend
    naming each target beside its colour underneath."""
    grid = model_grid(result.reference, min(result.reference.GetSpacing()))
    image = sitk.GetArrayFromImage(resample_to(result.reference, grid, sitk.sitkLinear,
                                               float(np.min(sitk.GetArrayViewFromImage(result.reference)))))
    union = np.zeros(image.shape, bool)
    pieces = []  # each target's mask on the picture's grid, cut to its box: one full-size mask at a time
    for i in range(len(result.queries)):
        mask = sitk.GetImageFromArray(result.mask(i).astype(np.uint8))
        mask.CopyInformation(result.reference)
        on_grid = sitk.GetArrayFromImage(resample_to(mask, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        box = bounding_box(on_grid) or (slice(0, 0),) * 3
        union[box] |= on_grid[box]
        pieces.append((box, on_grid[box].copy()))
    low, high = np.percentile(image, [1, 99])
    gray = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    z = int(union.sum(axis=(1, 2)).argmax()) if union.any() else image.shape[0] // 2
    y = int(union.sum(axis=(0, 2)).argmax()) if union.any() else image.shape[1] // 2
    colors = [segment_color(q) for q in result.queries]
    # LPS arrays: columns run from the patient's right to their left, which is already the radiological view
    # (patient's right on the image's left, as Slicer shows it); rows of the coronal view run inferior ->
    # superior, so flip those to put the head at the top.
    axial = _display(gray[z], [_cut(p, image.shape, 0, z) for p in pieces], colors, alpha)
    coronal = _display(gray[:, y][::-1], [_cut(p, image.shape, 1, y)[::-1] for p in pieces], colors, alpha)
    height = max(axial.shape[0], coronal.shape[0])
    pad = lambda a: np.pad(a, ((0, height - a.shape[0]), (0, 4), (0, 0)))  # noqa: E731
    picture = np.concatenate([pad(axial), pad(coronal)], axis=1)
    zoom = max(1, 320 // height)
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
    picture = np.concatenate([picture, _legend([q.name for q in result.queries], colors, picture.shape[1])])
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(tmp))
    return Path(path)

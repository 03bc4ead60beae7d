"""Planar contours of RT structure sets: tracing a 2D mask's boundaries (marching squares at level 0.5 between
pixel centres, so every pixel centre is strictly inside or outside), filling contours back with the even-odd
rule, the index-to-patient (LPS, mm) transform of a grid, and Contour Data encoded and parsed quickly."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# Segments per marching-squares case; corners tl=1, tr=2, br=4, bl=8; edges T, R, B, L. Saddles (5, 10) keep
# diagonal pixels apart; either choice classifies every pixel centre correctly.
_CASE_SEGMENTS = {1: ("LT",), 2: ("TR",), 3: ("LR",), 4: ("RB",), 5: ("LT", "RB"), 6: ("TB",), 7: ("LB",),
                  8: ("BL",), 9: ("TB",), 10: ("TR", "BL"), 11: ("RB",), 12: ("LR",), 13: ("TR",), 14: ("LT",)}


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed boundary polygons of a 2D bool mask ``(Y, X)``, as ``(N, 2)`` arrays of ``(x, y)`` pixel indices.

    Outer boundaries and holes come as separate loops (even-odd filling restores the mask); collinear
    vertices are dropped. Coordinates are multiples of 0.5.
    """
    m = np.pad(np.asarray(mask2d, dtype=bool), 1)
    ny, nx = m.shape
    case = (m[:-1, :-1] * 1 + m[:-1, 1:] * 2 + m[1:, 1:] * 4 + m[1:, :-1] * 8).astype(np.uint8)
    n_h = ny * (nx - 1)  # horizontal edges H(r, c) between m[r, c] and m[r, c+1]; vertical ones after them

    def edge_ids(edge: str, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        if edge == "T":
            return r * (nx - 1) + c
        if edge == "B":
            return (r + 1) * (nx - 1) + c
        if edge == "L":
            return n_h + r * nx + c
        return n_h + r * nx + c + 1  # "R"

    a_parts, b_parts = [], []
    for value, pairs in _CASE_SEGMENTS.items():
        r, c = np.nonzero(case == value)
        for pair in pairs:
            a_parts.append(edge_ids(pair[0], r, c))
            b_parts.append(edge_ids(pair[1], r, c))
    if not a_parts:
        return []
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    if a.size == 0:
        return []
    ids, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    a_i, b_i = inverse[: a.size], inverse[a.size:]
    neighbours = np.full((ids.size, 2), -1, dtype=np.int64)
    fill = np.zeros(ids.size, dtype=np.int64)
    for u, v in zip(a_i.tolist(), b_i.tolist()):
        neighbours[u, fill[u]] = v
        fill[u] += 1
        neighbours[v, fill[v]] = u
        fill[v] += 1
    # coordinates of each point (x, y) in unpadded pixel indices
    horizontal = ids < n_h
    xy = np.empty((ids.size, 2))
    r, c = np.divmod(ids[horizontal], nx - 1)
    xy[horizontal] = np.column_stack([c + 0.5, r]) - 1
    r, c = np.divmod(ids[~horizontal] - n_h, nx)
    xy[~horizontal] = np.column_stack([c, r + 0.5]) - 1

    visited = np.zeros(ids.size, dtype=bool)
    nb = neighbours.tolist()
    loops = []
    for start in range(ids.size):
        if visited[start]:
            continue
        loop = [start]
        visited[start] = True
        previous, current = start, nb[start][0]
        while current != start:
            loop.append(current)
            visited[current] = True
            n0, n1 = nb[current]
            previous, current = current, (n1 if n0 == previous else n0)
        loops.append(_drop_collinear(xy[loop]))
    return loops


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    doubled = np.rint(points * 2).astype(np.int64)
    before = doubled - np.roll(doubled, 1, axis=0)
    after = np.roll(doubled, -1, axis=0) - doubled
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[cross != 0]


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons (``(N, 2)`` ``(x, y)`` in pixel indices) on a ``(Y, X)`` grid, even-odd rule
    across all of them: a pixel centre is inside when a ray from it crosses the edges an odd number of times."""
    ny, nx = shape
    toggles = np.zeros((ny, nx + 1), dtype=np.int64)
    for poly in polygons:
        if len(poly) < 3:
            continue
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        low, high = np.minimum(y0, y1), np.maximum(y0, y1)
        first = np.clip(np.ceil(low), 0, ny).astype(np.int64)  # rows r with low <= r < high
        stop = np.clip(np.ceil(high), 0, ny).astype(np.int64)
        count = np.maximum(stop - first, 0)
        if not count.any():
            continue
        edge = np.repeat(np.arange(len(poly)), count)
        rows = first[edge] + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        x = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        start = np.clip(np.floor(x).astype(np.int64) + 1, 0, nx)  # pixels i > x toggle
        np.add.at(toggles, (rows, start), 1)
    return (np.cumsum(toggles, axis=1)[:, :nx] % 2).astype(bool)


def index_to_lps(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    return matrix, np.array(image.GetOrigin())


def contour_data_element(values: np.ndarray):
    """Contour Data (DS, to 1/1000 mm, each value under 16 characters) as an encoded element: pydicom's
    per-value checks would take seconds for a large structure set."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    texts = []
    for v in values.tolist():
        text = f"{v:.3f}".rstrip("0").rstrip(".")
        texts.append("0" if text in ("-0", "") else text)
    encoded = "\\".join(texts).encode("ascii")
    if len(encoded) % 2:
        encoded += b" "
    return RawDataElement(Tag(0x30060050), "DS", len(encoded), encoded, 0, False, True)


def contour_points(item) -> np.ndarray:
    """Contour Data of a contour item as ``(N, 3)`` floats, parsed without pydicom's per-value conversion."""
    element = item.get_item(0x30060050)
    value = getattr(element, "value", None)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("ascii", "replace").strip(" \x00")
        numbers = np.array([float(t) for t in text.split("\\") if t.strip()] if text else [])
    else:
        numbers = np.array([float(v) for v in item.ContourData])
    return numbers[: numbers.size // 3 * 3].reshape(-1, 3)

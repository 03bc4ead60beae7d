"""Choose how much of the tracked path between two drawn slices is kept (``tracking.BEND_TERMS``), on validation
structures: the centre error of :func:`PromptSegLib.propagate.tracking.tracked_centres` against the true centroids,
next to the straight line between the drawn centroids, by organ and gap length.

Structures: the seven organs of the 12 OpenKBP training-split patients that ``hn_oars.json`` keeps for validation
(as in ``choose_fill_reach.py``); gaps: those of the fill protocol (K drawn axial slices at (i + 0.5) / K of the
organ's extent, K = 2, 3, 4, 6, 8; both drawn slices holding the organ), each slice between them that holds it.

Usage: python Testing/benchmarks/choose_track_bend.py [--terms 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
from bench_propagation import COUNTS, ROOT, drawn_indices
from choose_fill_reach import openkbp_structures

sys.path.insert(0, str(ROOT))

from PromptSegLib.propagate import tracking  # noqa: E402

BUCKETS = ((6, "under 6"), (12, "6-11"), (24, "12-23"), (10 ** 9, "24 or more"))


def gap_errors(image: np.ndarray, truth: np.ndarray, counts) -> list[tuple[int, float, float]]:
    """``(gap length, straight-line error, tracked error)`` in pixels for each slice between two drawn ones."""
    rows = []
    for k in counts:
        drawn = drawn_indices(truth, k)
        for a, b in zip(drawn[:-1], drawn[1:]):
            if b - a < 2 or not (truth[a].any() and truth[b].any()):
                continue
            tracked = tracking.tracked_centres(image, 0, a, truth[a], b, truth[b])
            ca, cb = np.argwhere(truth[a]).mean(axis=0), np.argwhere(truth[b]).mean(axis=0)
            for j, centre in tracked.items():
                if truth[j].any():
                    true = np.argwhere(truth[j]).mean(axis=0)
                    line = ca + (cb - ca) * (j - a) / (b - a)
                    rows.append((b - a, float(np.linalg.norm(line - true)), float(np.linalg.norm(centre - true))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--terms", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    structures = list(openkbp_structures())
    print(f"{len(structures)} validation organs")
    print("| bend terms | organ | gap (slices) | slices | straight line (px) | tracked (px) |")
    print("|---|---|---|---|---|---|")
    for terms in args.terms:
        tracking.BEND_TERMS = terms
        errors = defaultdict(list)
        for name, image, truth, _ in structures:
            for gap, line, tracked in gap_errors(image, truth, [k for k in COUNTS if k > 1]):
                bucket = next(label for bound, label in BUCKETS if gap < bound)
                errors[(name.split("/", 1)[1], bucket)].append((line, tracked))
        for (organ, bucket), pairs in sorted(errors.items()):
            line, tracked = np.mean(pairs, axis=0)
            print(f"| {terms} | {organ} | {bucket} | {len(pairs)} | {line:.3f} | {tracked:.3f} |", flush=True)


if __name__ == "__main__":
    main()

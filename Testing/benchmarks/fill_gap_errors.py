"""Where a fill from two drawn slices (the protocol's K = 2) goes wrong, on the validation groups of
``choose_fill_reach.py``: per group, how the true volume between the two drawn slices compares with a straight
line between their areas (the median over structures of the gap's true volume over the line's), the share of each
structure's volume that lies beyond them, and the fill's voxels missed and added between the drawn slices and
beyond them, for each ``--bulge`` value (``multislice.BULGE``).

Usage: python Testing/benchmarks/fill_gap_errors.py [--bulge 0 1.5] [--groups openkbp pgbm hippocampus]
       [--threads 2]
"""
from __future__ import annotations

import argparse

import numpy as np
from bench_propagation import drawn_indices
from choose_fill_reach import GROUPS, SOURCES

from PromptSegLib.propagate.multislice import BULGE, fill_from_slices
from PromptSegLib.propagate.propagator import Propagator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bulge", type=float, nargs="+", default=[0.0, BULGE])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    propagator = Propagator(None, threads=args.threads)
    for group in args.groups:
        if not SOURCES[group][1].is_dir():
            print(f"left out: {group} ({SOURCES[group][1]} is absent)")
            continue
        ratios, beyond_share, errors = [], [], {b: np.zeros(4, int) for b in args.bulge}
        for _, image, truth, spacing in SOURCES[group][0]():
            a, b = drawn_indices(truth, 2)
            areas = truth.sum(axis=(1, 2)).astype(float)
            t = np.arange(a + 1, b)
            if len(t):  # (a structure two slices long has no gap)
                ratios.append(areas[t].sum() / (areas[a] + (areas[b] - areas[a]) * (t - a) / (b - a)).sum())
            beyond_share.append(1.0 - areas[a:b + 1].sum() / areas.sum())
            z = np.arange(truth.shape[0])[:, None, None]
            between, beyond = (z > a) & (z < b), (z < a) | (z > b)
            for bulge in args.bulge:
                mask = fill_from_slices(propagator, image, {a: truth[a], b: truth[b]}, spacing=spacing,
                                        bulge=bulge).mask
                missed, added = truth & ~mask, mask & ~truth
                errors[bulge] += [(missed & between).sum(), (added & between).sum(), (missed & beyond).sum(),
                                  (added & beyond).sum()]
        print(f"{group}: {len(beyond_share)} structures; between the drawn slices the true volume is {np.median(ratios):.2f}x "
              f"a straight line's (median); {np.mean(beyond_share):.0%} of a structure lies beyond them (mean)")
        for bulge, (m1, a1, m2, a2) in errors.items():
            print(f"  bulge {bulge:g}: voxels missed / added between the drawn slices {m1} / {a1}, beyond them "
                  f"{m2} / {a2}")


if __name__ == "__main__":
    main()

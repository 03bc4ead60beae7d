"""Cost of 10 targets vs 1 target on the same real CT: one backbone pass serves every target.

Target: ratio <= 1.3 (a model rerun per prompt pays 10x). Prints both times and the ratio.
Usage: python Testing/benchmarks/bench_targets.py [--size X Y Z] [--threads N]
"""
from __future__ import annotations

import argparse
import time

from common import TEN_TARGETS, default_model, real_ct_on_grid

from PromptSegLib.inference import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=3, default=(160, 160, 128))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    image = real_ct_on_grid(tuple(args.size), 1.5)
    segmenter = Segmenter(default_model(), device="cpu", threads=args.threads)
    segmenter.segment(image, "CT", "abdomen", TEN_TARGETS[:1])  # warm-up
    times = {}
    for count in (1, 10, 1):
        start = time.perf_counter()
        segmenter.segment(image, "CT", "abdomen", TEN_TARGETS[:count])
        times.setdefault(count, []).append(time.perf_counter() - start)
    one, ten = min(times[1]), min(times[10])
    print(f"volume {tuple(args.size)} voxels at 1.5 mm, device {segmenter.device}")
    print(f"1 target: {one:.2f} s   10 targets: {ten:.2f} s   ratio 10/1: {ten / one:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()

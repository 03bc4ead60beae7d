"""Cost of 1, 5, 10 and 20 targets on the same real CT, each request in its own process: one backbone pass
serves every target, and each target is mapped back to the input grid inside its own box, in 1/255 steps.

Default: a clinical 512x512x300 CT at 0.78x0.78x1.5 mm (the TotalSegmentator example CT resampled and padded
with air), the default model size (random weights, 96^3 windows at 1.5 mm), 2 threads. Prints seconds per phase
(read, resample, windows, map back, write the .seg.nrrd), the peak RSS, and each run's ratios to the 1-target
run of the same invocation; the 1-target request runs first and last, and the faster of the two is the base.
Targets (issue 15): 10 targets <= 1.2x and 20 <= 1.4x the time of 1; peak RSS <= 2 GB (10), <= 2.5 GB (20).
Usage: python Testing/benchmarks/bench_targets.py [--small] [--threads N] [--counts 1 5 10 20]
       [--precision auto|float32|bfloat16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import SimpleITK as sitk

from common import FULL_SIZE, SMALL_SIZE, TWENTY_TARGETS, phase_table, real_ct_on_grid, run_in_subprocess, timed_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="the quick 160x160x128 CT at 1.5 mm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--precision", default="auto", help="of the DuPLUS requests (promptseg segment --precision)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # IMAGE:COUNT, run in this process
    args = parser.parse_args()
    if args.case:
        path, count = args.case.rsplit(":", 1)
        print(json.dumps(timed_request(path, TWENTY_TARGETS[:int(count)], args.threads, precision=args.precision)))
        return
    size, spacing = SMALL_SIZE if args.small else FULL_SIZE
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "ct.nii.gz")
        sitk.WriteImage(real_ct_on_grid(size, spacing), path, True)
        counts = [args.counts[0], *args.counts[1:], args.counts[0]]
        runs = [run_in_subprocess(__file__, ["--case", f"{path}:{n}", "--threads", str(args.threads),
                                             "--precision", args.precision]) for n in counts]
    first, last = runs[0], runs.pop()
    runs[0] = min(first, last, key=lambda r: r["total"])
    print(f"CT {size} voxels at {spacing} mm, {args.threads} threads, precision {args.precision}, each request in "
          f"its own process; "
          f"{counts[0]}-target runs: {first['total']:.1f} s and {last['total']:.1f} s (the faster is the base)")
    print(phase_table(runs))


if __name__ == "__main__":
    main()

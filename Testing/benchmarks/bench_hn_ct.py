"""Time and peak memory of one head-and-neck CT on the CPU: the seven organs at risk in one request, against
one organ in the same run (the baseline: one backbone pass serves every target, so seven should cost little
more than one).

Each configuration runs in a fresh process so that its peak RSS is its own. The CT is an OpenKBP validation
patient from ../shared/data (128x128x128 voxels at about 4x4x2.5 mm), segmented by the model that the request
routes to (``promptseg-hn-oars`` when installed or bundled), at the model's sliding-window overlap and at each
``--overlaps`` given (the cost of the overlap ``promptseg tune`` chose, measured in the same run).
Usage: python Testing/benchmarks/bench_hn_ct.py [--patient pt_201] [--threads 2] [--overlaps 0.25]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ORGANS = ["brainstem", "spinal cord", "left parotid", "right parotid", "esophagus", "larynx", "mandible"]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "openkbp_hn_ct" / "validation"


def run_once(ct: Path, organs: list[str], threads: int, overlap: float | None) -> dict:
    """Route, load, read and segment in this process (at ``overlap``, None: the model's); return phase times (s),
    the overlap and peak RSS (GB)."""
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.models.catalogue import route_model
    from PromptSegLib.segment.inference import Segmenter

    start = time.perf_counter()
    segmenter = Segmenter(route_model("CT", "head and neck", organs), device="cpu", threads=threads)
    loaded = time.perf_counter()
    image = read_image(ct)
    read = time.perf_counter()
    result = segmenter.segment(image, "CT", "head and neck", organs, overlap=overlap)
    done = time.perf_counter()
    volumes = {q.name: float(result.mask(i).sum()) for i, q in enumerate(result.queries)}
    used = segmenter.model.config.overlap if overlap is None else overlap
    return {"model": segmenter.model.config.name, "overlap": used,
            "load_s": loaded - start, "read_s": read - loaded,
            "segment_s": done - read, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "voxels": volumes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patient", default="pt_201")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlaps", type=float, nargs="*", default=[],
                        help="sliding-window overlaps to time besides the model's own")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ct = DATA / args.patient / "ct.nii.gz"
    if args.child:
        print(json.dumps(run_once(ct, args.child, args.threads, args.overlap)))
        return
    rows = []
    for overlap in [None, *args.overlaps]:
        for label, organs in (("1 organ", ORGANS[:1]), ("7 organs", ORGANS)):
            extra = [] if overlap is None else ["--overlap", str(overlap)]
            out = subprocess.run([sys.executable, __file__, "--patient", args.patient, "--threads", str(args.threads),
                                  *extra, "--child", *organs], capture_output=True, text=True, check=True)
            rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{args.patient}: {ct} with {rows[0][1]['model']}, CPU, {args.threads} threads")
    print("| request | overlap | load model (s) | read (s) | segment (s) | peak RSS (GB) |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['overlap']:g} | {r['load_s']:.2f} | {r['read_s']:.2f} | {r['segment_s']:.2f} | "
              f"{r['peak_rss_gb']:.2f} |")
    for (_, one), (_, seven) in zip(rows[::2], rows[1::2]):
        print(f"overlap {one['overlap']:g}, ratio 7/1 organs: time {seven['segment_s'] / one['segment_s']:.2f}, "
              f"peak RSS {seven['peak_rss_gb'] / one['peak_rss_gb']:.2f}")
    if len(rows) > 2:
        print(f"7 organs, the model's overlap against {rows[3][1]['overlap']:g}: time "
              f"{rows[1][1]['segment_s'] / rows[3][1]['segment_s']:.2f}")


if __name__ == "__main__":
    main()

"""Time and peak memory of one head-and-neck CT on the CPU: the seven organs at risk in one request, against
one organ in the same run (the baseline: one backbone pass serves every target, so seven should cost little
more than one).

Each configuration runs in a fresh process so that its peak RSS is its own. The CT is an OpenKBP validation
patient from ../shared/data (128x128x128 voxels at about 4x4x2.5 mm), segmented by the model that the request
routes to (``promptseg-hn-oars`` when installed or bundled).
Usage: python Testing/benchmarks/bench_hn_ct.py [--patient pt_201] [--threads 2]
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


def run_once(ct: Path, organs: list[str], threads: int) -> dict:
    """Route, load, read and segment in this process; return phase times (s) and peak RSS (GB)."""
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.models.catalogue import route_model
    from PromptSegLib.segment.inference import Segmenter

    start = time.perf_counter()
    segmenter = Segmenter(route_model("CT", "head and neck", organs), device="cpu", threads=threads)
    loaded = time.perf_counter()
    image = read_image(ct)
    read = time.perf_counter()
    result = segmenter.segment(image, "CT", "head and neck", organs)
    done = time.perf_counter()
    volumes = {q.name: float(result.mask(i).sum()) for i, q in enumerate(result.queries)}
    return {"model": segmenter.model.config.name, "load_s": loaded - start, "read_s": read - loaded,
            "segment_s": done - read, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "voxels": volumes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patient", default="pt_201")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ct = DATA / args.patient / "ct.nii.gz"
    if args.child:
        print(json.dumps(run_once(ct, args.child, args.threads)))
        return
    results = {}
    for label, organs in (("1 organ", ORGANS[:1]), ("7 organs", ORGANS)):
        out = subprocess.run([sys.executable, __file__, "--patient", args.patient, "--threads", str(args.threads),
                              "--child", *organs], capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.patient}: {ct} with {results['7 organs']['model']}, CPU, {args.threads} threads")
    print("| request | load model (s) | read (s) | segment (s) | peak RSS (GB) |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['load_s']:.2f} | {r['read_s']:.2f} | {r['segment_s']:.2f} | {r['peak_rss_gb']:.2f} |")
    one, seven = results["1 organ"], results["7 organs"]
    print(f"ratio 7/1 organs: time {seven['segment_s'] / one['segment_s']:.2f}, "
          f"peak RSS {seven['peak_rss_gb'] / one['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    main()

"""Whole-volume CPU time and peak memory: DuPLUS (1 and 10 targets) vs a plain MONAI UNet of similar
parameter count through the same sliding-window inferer (96^3 windows, each at its faster number of windows
per network call: 2 for the UNet, 1 for DuPLUS), on a real CT resampled to 256x256x200 at 1.5 mm; and the
bundled starter model (48^3 windows at 2 mm) with its default 2 windows per call against 1.

Each measurement runs in its own process so peak RSS belongs to it. Prints times, the ratios to the UNet
baseline and to one window per call measured in the same run, and peak RSS (target: under 4 GB).
Usage: python Testing/benchmarks/bench_whole_volume.py [--size X Y Z] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run_case(kind: str, size: list[int], threads: int | None) -> dict:
    import torch
    from common import TEN_TARGETS, default_model, peak_rss_gb, real_ct_on_grid
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from PromptSegLib.inference import Segmenter
    from PromptSegLib.network import count_parameters
    from PromptSegLib.preprocess import prepare

    if threads:
        torch.set_num_threads(threads)
    image = real_ct_on_grid(tuple(size), 1.5)
    if kind == "unet":
        net = UNet(3, 1, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=1).eval()
        start = time.perf_counter()
        volume = torch.from_numpy(prepare(image, "CT", 1.5).array)[None, None]
        with torch.inference_mode():
            sliding_window_inference(volume, (96, 96, 96), 2, lambda w: torch.sigmoid(net(w)), overlap=0.25,
                                     mode="gaussian")
        parameters = count_parameters(net)
    else:
        model = None if kind.startswith("starter") else default_model()  # None: the bundled starter
        segmenter = Segmenter(model, device="cpu")
        targets = TEN_TARGETS[: 10 if kind == "duplus-10" else 1]
        start = time.perf_counter()
        segmenter.segment(image, "CT", "abdomen", targets, sw_batch_size=1 if kind == "starter-single" else None)
        model = segmenter.model
        parameters = count_parameters(model.network)
    return {"kind": kind, "seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb(), "parameters": parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 200])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.threads)))
        return
    results = {}
    for kind in ("unet", "duplus-1", "duplus-10", "starter", "starter-single"):
        command = [sys.executable, __file__, "--case", kind, "--size", *map(str, args.size)]
        command += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
        r = results[kind]
        print(f"{kind:15s} {r['parameters']:>9d} params  {r['seconds']:7.1f} s  peak RSS {r['peak_rss_gb']:.2f} GB")
    base = results["unet"]["seconds"]
    print(f"volume {args.size} voxels at 1.5 mm (real CT), CPU")
    print(f"time ratio vs MONAI UNet: DuPLUS 1 target {results['duplus-1']['seconds'] / base:.2f}, "
          f"10 targets {results['duplus-10']['seconds'] / base:.2f}")
    print(f"starter model, 1 target: 2 windows per call {results['starter']['seconds']:.1f} s, 1 per call "
          f"{results['starter-single']['seconds']:.1f} s: speed-up "
          f"{results['starter-single']['seconds'] / results['starter']['seconds']:.2f}x")
    worst = max(r["peak_rss_gb"] for r in results.values() if r["kind"] != "unet")
    print(f"DuPLUS peak RSS {worst:.2f} GB (target < 4 GB)")


if __name__ == "__main__":
    main()

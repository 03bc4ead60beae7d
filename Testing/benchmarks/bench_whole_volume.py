"""Whole-volume CPU time and peak memory of DuPLUS requests (1, 5, 10, 20 targets) beside peers run through the
same MONAI sliding-window inferer on the same CT, every measurement in its own process (peak RSS its own):

- ``unet``: a plain MONAI UNet of similar parameter count (96^3 windows at 1.5 mm, 2 per call, overlap 0.25);
- ``nnunet``: nnU-Net's default 3D U-Net (``dynamic-network-architectures``' PlainConvUNet, 6 stages, 32-320
  features) at 3 mm with 105 classes, as TotalSegmentator's fast setting: random weights, 128^3 windows,
  overlap 0.5, softmax, labels by argmax sent back to the input grid (nearest neighbour). Skipped with a note
  when the package is not installed (``pip install --no-deps dynamic-network-architectures einops``: with
  its dependencies, timm's torchvision would replace torch).
- the bundled starter (48^3 windows at 2 mm), 1 target.

Default: the clinical 512x512x300 CT at 0.78x0.78x1.5 mm of ``bench_targets.py``; ``--small``: the former
256x256x200 CT at 1.5 mm. Prints the DuPLUS phase table (read, resample, windows, map back, write), the peers'
times and peak RSS, and the ratios measured in the same run.
With ``--repeats N`` every run is made N times, in rounds whose order alternates (a machine that slows down or
speeds up during the benchmark then weighs on every kind alike); each round's ratios are printed, and the tables
take each kind's fastest run (the run least disturbed by the rest of the machine).
On a GPU (``--device cuda``) the DuPLUS requests run there; ``--warm-up`` runs each request once, untimed, in its
process before the timed run (as Slicer is after its first request: the first one also loads the GPU's kernels);
the table then adds each run's peak GPU memory. A lent GPU machine has neither SimpleITK, the text encoder nor
``../shared``: ``device_kit.py`` packs what the run needs and says how to start it there.

Usage: python Testing/benchmarks/bench_whole_volume.py [--small] [--threads N] [--counts 1 5 10 20]
       [--precision auto|float32|bfloat16] [--peers [unet nnunet starter]] [--repeats N]
       [--device cpu|cuda] [--embeddings TABLE] [--warm-up]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from common import (FULL_SIZE, TWENTY_TARGETS, interleaved_runs, peak_rss_gb, phase_table, real_ct_on_grid,
                    timed_request)

SMALL = ((256, 256, 200), (1.5, 1.5, 1.5))
PEERS = ("unet", "nnunet", "starter")


def nnunet_default(classes: int):
    """nnU-Net's default 3D full-resolution U-Net for 128^3 patches (its planner's usual plan)."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, 6, (32, 64, 128, 256, 320, 320), torch.nn.Conv3d, 3, (1, 2, 2, 2, 2, 2), 2, classes, 2,
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def run_peer(kind: str, image_path: str, threads: int) -> dict:
    """One peer (see the module docstring) in this process: seconds (reading excluded) and peak RSS."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.preprocessing.preprocess import prepare, resample_to
    from PromptSegLib.segment.inference import Segmenter

    torch.set_num_threads(threads)
    image = read_image(image_path)
    start = time.perf_counter()
    if kind in ("unet", "nnunet"):
        spacing, roi, overlap, batch = (1.5, (96,) * 3, 0.25, 2) if kind == "unet" else (3.0, (128,) * 3, 0.5, 1)
        net = (UNet(3, 1, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=1) if kind == "unet"
               else nnunet_default(105)).eval()
        prepared = prepare(image, "CT", spacing)
        volume = torch.from_numpy(prepared.array)[None, None]
        activation = torch.sigmoid if kind == "unet" else (lambda logits: torch.softmax(logits, 1))
        with torch.inference_mode():
            out = sliding_window_inference(volume, roi, batch, lambda w: activation(net(w)), overlap=overlap,
                                           mode="gaussian")
        if kind == "nnunet":
            labels = sitk.GetImageFromArray(out[0].argmax(0).to(torch.uint8).numpy())
            labels.CopyInformation(prepared.grid)
            resample_to(labels, image, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    else:
        Segmenter(None, device="cpu").segment(image, "CT", "abdomen", ["liver"])
    return {"kind": kind, "seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="the quick 256x256x200 CT at 1.5 mm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--precision", default="auto", help="of the DuPLUS requests (promptseg segment --precision)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                        help="the peers to run (default all; none when given alone)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every run (odd ones in reverse order); the tables take each kind's fastest")
    parser.add_argument("--device", default="cpu", help="of the DuPLUS requests (the peers run on the CPU)")
    parser.add_argument("--embeddings", help="an embedding table (device_kit.py) instead of the text encoder")
    parser.add_argument("--warm-up", action="store_true", help="each DuPLUS request once, untimed, before its run")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # IMAGE:KIND, KIND a peer or a target count
    args = parser.parse_args()
    if args.case:
        path, kind = args.case.rsplit(":", 1)
        run = run_peer(kind, path, args.threads) if kind in PEERS else timed_request(
            path, TWENTY_TARGETS[:int(kind)], args.threads, precision=args.precision, device=args.device,
            embeddings=args.embeddings, warm_up=args.warm_up)
        print(json.dumps(run))
        return
    size, spacing = SMALL if args.small else FULL_SIZE
    peers = [p for p in args.peers if p != "nnunet" or importlib.util.find_spec("dynamic_network_architectures")]
    kinds = [*map(str, args.counts), *peers]
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "ct.nii.gz")
        sitk.WriteImage(real_ct_on_grid(size, spacing), path, True)
        options = ["--threads", str(args.threads), "--precision", args.precision, "--device", args.device]
        options += ["--embeddings", args.embeddings] if args.embeddings else []
        options += ["--warm-up"] if args.warm_up else []
        rounds = interleaved_runs(__file__, [f"{path}:{kind}" for kind in kinds], options, args.repeats)
    rounds = {kind: rounds[f"{path}:{kind}"] for kind in kinds}
    device = rounds[str(args.counts[0])][0]["device"]
    print(f"CT {size} voxels at {spacing} mm, {args.threads} threads, each run in its own process; DuPLUS on "
          f"{device} in precision {args.precision}{', after an untimed warm-up run' if args.warm_up else ''}, the "
          "peers on the CPU in float32")
    if args.repeats > 1:
        print(f"{args.repeats} rounds, odd ones in reverse order; the tables and ratios below take each kind's "
              "fastest run. Each round on its own:")
        for index in range(args.repeats):
            runs = {kind: rounds[kind][index] for kind in kinds}
            print(f"- round {index + 1}: " + ratio_line(runs, args.counts, peers))
    runs = {kind: min(rounds[kind], key=lambda r: r["total"] if "total" in r else r["seconds"]) for kind in kinds}
    print(phase_table([runs[str(n)] for n in args.counts]))
    if "nnunet" in args.peers and "nnunet" not in peers:
        print("nnU-Net peer skipped: dynamic-network-architectures is not installed "
              "(pip install --no-deps dynamic-network-architectures einops)")
    segment = {n: segment_seconds(runs[str(n)]) for n in args.counts}
    for kind in peers:
        r = runs[kind]
        ratios = ", ".join(f"{n} targets {segment[n] / r['seconds']:.2f}x" for n in args.counts)
        print(f"{kind:15s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_gb']:.2f} GB  (the segment call, DuPLUS / "
              f"this: {ratios})")


def segment_seconds(run: dict) -> float:
    """The ``segment`` call of a DuPLUS run: resampling, windows and mapping back (no reading, no writing)."""
    return sum(run["seconds"][p] for p in ("resample", "windows", "map back"))


def ratio_line(runs: dict[str, dict], counts: list[int], peers: list[str]) -> str:
    """One round's totals, each count's ratio to the first count's, and each peer's time with the second count's
    ``segment`` call as a share of it."""
    first = runs[str(counts[0])]["total"]
    parts = [f"{n} targets {runs[str(n)]['total']:.1f} s ({runs[str(n)]['total'] / first:.2f}x)" for n in counts]
    second = counts[min(1, len(counts) - 1)]
    parts += [f"{kind} {runs[kind]['seconds']:.1f} s ({second} targets "
              f"{segment_seconds(runs[str(second)]) / runs[kind]['seconds']:.2f}x)" for kind in peers]
    return ", ".join(parts)


if __name__ == "__main__":
    main()

"""Five parts of a full-size CT request on the CPU, each against the way it was done before, in the same run:

- the network on 96^3 windows of the default architecture: glibc's default memory settings against
  ``PromptSegLib.heap`` (``reused_memory`` + ``from_heap``), wall and kernel seconds;
- the CT intensity rule on the 512x512x300 CT: one float32 copy of the whole volume, clipped (the former
  ``IntensityRule.fit``), against ``IntensityRule.fit`` a few planes at a time;
- mapping one whole-body model-grid map (1.5 mm) back onto the CT in 1/255 steps: SimpleITK's ``Resample``
  (the former path) against ``to_original_box``'s separable torch path, and how many voxels differ;
- the network's convolutions through ``PromptSegLib.models.cpu_routes`` against PyTorch's own choice
  (``modules_only``), on 96^3 windows one per call (the default architecture's size) and 48^3 windows two per
  call (the bundled models' size; two per call was their CPU default before the routes), in turns, and the
  largest difference of the decoder's features;
- deflating one 300x512x512 ``.seg.nrrd`` layer on one thread (the fastest of 3 runs): zlib at level 1 (the
  former writer) and 9 (slicerio's default) against ISA-L at ``SEG_NRRD_COMPRESSION``, and the sizes, on the seven
  organs of an OpenKBP validation patient and on a half-filled layer of smooth blobs (what an untrained model
  gives).

Usage: python Testing/benchmarks/bench_cpu_parts.py [--threads N] [--windows N]
"""
from __future__ import annotations

import argparse
import resource
import time
import zlib
from contextlib import nullcontext

import numpy as np
import SimpleITK as sitk
import torch

from common import FULL_SIZE, SHARED, real_ct_on_grid
from isal import isal_zlib
from PromptSegLib.export.segfile import SEG_NRRD_COMPRESSION
from PromptSegLib.heap import from_heap, reused_memory
from PromptSegLib.models.cpu_routes import modules_only
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocessing.intensity import CT_WINDOW_HU, IntensityRule
from PromptSegLib.preprocessing.preprocess import ModelInput, model_grid, to_original_box


def timed(work) -> tuple[float, float, object]:
    """(wall seconds, kernel seconds, result) of ``work()``."""
    kernel, wall = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
    result = work()
    return time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel, result


def windows(count: int) -> None:
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig()).eval()
    window, context = torch.randn(1, 1, 96, 96, 96), torch.zeros(384)

    def run(unit) -> None:
        with torch.inference_mode():
            for _ in range(count):
                with unit():
                    network.backbone(window, "CT", context)

    run(nullcontext)  # warm-up: the first window's pages are fresh either way
    plain = timed(lambda: run(nullcontext))
    with reused_memory():
        kept = timed(lambda: run(from_heap))
    print(f"network, {count} windows of 96^3: default {plain[0]:.1f} s ({plain[1]:.1f} s in the kernel), "
          f"memory reused {kept[0]:.1f} s ({kept[1]:.1f} s in the kernel): {plain[0] / kept[0]:.2f}x")


def routes(count: int) -> None:
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig()).eval()
    context = torch.zeros(384)
    for shape in ((1, 1, 96, 96, 96), (2, 1, 48, 48, 48)):
        window = torch.randn(shape)
        seconds: dict[str, float] = {"modules": 0.0, "routes": 0.0}
        features: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for unit in (modules_only, nullcontext):  # warm-up, each route's first call untimed
                with unit():
                    network.backbone(window, "CT", context)
            for _ in range(count):  # in turns, so that the machine's drift falls on both
                for name, unit in (("modules", modules_only), ("routes", nullcontext)):
                    with unit():
                        start = time.perf_counter()
                        features[name] = network.backbone(window, "CT", context)[0]
                        seconds[name] += time.perf_counter() - start
        difference = (features["modules"] - features["routes"]).abs().max().item()
        print(f"convolution routes, {count} x {shape[0]} window(s) of {shape[2]}^3: PyTorch's own "
              f"{seconds['modules']:.1f} s, cpu_routes {seconds['routes']:.1f} s: "
              f"{seconds['modules'] / seconds['routes']:.2f}x; features differ by at most {difference:.1e}")


def intensity_rule(image: sitk.Image) -> None:
    array = sitk.GetArrayViewFromImage(image)

    def former() -> tuple[float, float]:
        clipped = np.clip(np.asarray(array, dtype=np.float32).ravel(), *CT_WINDOW_HU)
        return float(clipped.mean()), float(clipped.std())

    old, new = timed(former), timed(lambda: IntensityRule.fit(array, "CT"))
    print(f"CT intensity rule: whole float copy {old[0]:.2f} s, a few planes at a time {new[0]:.2f} s: "
          f"{old[0] / new[0]:.2f}x (mean {old[2][0]:.3f} / {new[2].mean:.3f}, std {old[2][1]:.3f} / {new[2].std:.3f})")


def map_back(image: sitk.Image) -> None:
    grid = model_grid(image, 1.5)
    prepared = ModelInput(np.zeros(1, np.float32), grid, image)
    shape = grid.GetSize()[::-1]
    torch.manual_seed(0)
    coarse = torch.rand(1, 1, *(max(n // 8, 1) for n in shape))
    block = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")[0, 0].numpy() * 255 + 0.5

    def former() -> np.ndarray:
        moving = sitk.GetImageFromArray(block)
        moving.CopyInformation(grid)
        return sitk.GetArrayFromImage(sitk.Resample(moving, image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkUInt8))

    old, new = timed(former), timed(lambda: to_original_box(block, (0, 0, 0), prepared, sitk.sitkUInt8)[0])
    steps = np.abs(old[2].astype(np.int16) - new[2])
    print(f"mapping back one whole-body map: SimpleITK {old[0]:.2f} s, separable torch {new[0]:.2f} s: "
          f"{old[0] / new[0]:.2f}x; voxels a 1/255 step apart {(steps > 0).mean():.1e}, at most {steps.max()} steps")


def layers() -> dict[str, np.ndarray]:
    """Two 300x512x512 uint8 layers: OpenKBP pt_201's seven organs resampled (nearest) over their scan's extent,
    and seeded smooth blobs filling half of a body-sized box."""
    oars = sitk.ReadImage(str(SHARED / "openkbp_hn_ct" / "validation" / "pt_201" / "oars.nii.gz"))
    size = (512, 512, 300)
    spacing = np.array(oars.GetSpacing()) * np.array(oars.GetSize()) / np.array(size)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(oars.GetDirection())
    centre = oars.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in oars.GetSize()])
    offset = np.array(oars.GetDirection()).reshape(3, 3) @ ((np.array(size) - 1) / 2 * spacing)
    grid.SetOrigin((np.array(centre) - offset).tolist())
    organs = sitk.Resample(oars, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 1, 31, 52, 64), size=(248, 417, 512), mode="trilinear")
    blobs = np.zeros(size[::-1], np.uint8)
    blobs[20:268, 50:467] = (smooth[0, 0] > 0.5).numpy()
    return {"seven organs (OpenKBP pt_201)": sitk.GetArrayFromImage(organs), "half-filled blobs": blobs}


def deflate() -> None:
    def deflated(library, level: int, data: bytes) -> bytes:
        compressor = library.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush()

    for name, layer in layers().items():
        data, results = layer.tobytes(), []
        for library, level in ((zlib, 1), (zlib, 9), (isal_zlib, SEG_NRRD_COMPRESSION)):
            runs = [timed(lambda: deflated(library, level, data)) for _ in range(3)]
            out = runs[0][2]
            assert zlib.decompress(out, -zlib.MAX_WBITS) == data
            results.append(f"{library.__name__.split('.')[-1]} level {level} {min(r[0] for r in runs):.3f} s, "
                           f"{len(out) / 1024:.0f} KB")
        print(f"deflating one layer, {name}: " + "; ".join(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = real_ct_on_grid(*FULL_SIZE)
    print(f"CT {FULL_SIZE[0]} voxels at {FULL_SIZE[1]} mm, {args.threads} threads")
    intensity_rule(image)
    map_back(image)
    windows(args.windows)
    routes(args.windows)
    deflate()


if __name__ == "__main__":
    main()

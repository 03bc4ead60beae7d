"""Slice propagation on held-out real volumes: filling a structure from K drawn slices against "Fill between
slices", Dice vs distance from one drawn slice, stopping at structure ends, and CPU latency.

Protocol "drawn slices" (axial, held-out structures; the propagation model never trained on them):
- the user draws K axial slices of the true mask, slice ``first + floor((i + 0.5) * n / K)`` for i = 0..K-1
  (n: the structure's axial extent in slices), K = 1, 2, 3, 4, 6, 8;
- PromptSeg fills the structure from them (``PromptSegLib.propagate.multislice.fill_from_slices``: between drawn slices
  the interpolated shape refined by the network, beyond them propagation with the size profile);
- the peer is ITK morphological contour interpolation (PyPI ``itk-morphologicalcontourinterpolation``, the
  filter behind Slicer's "Fill between slices") given the same slices (with one slice it returns that slice);
- on CT (``--prior-groups``) the fill takes the organ prior (``PromptSegLib.propagate.organ_prior``: the bundled
  head-and-neck organ model, where it agrees with the drawn slices), as the Segment Editor effect does on CT;
- whole-structure Dice per group and K, and PromptSeg's time per filled slice, the organ prior's included (one
  CPU thread unless ``--threads``).
- groups: sarcoma GTV on CT and on T1 MR (STS_025..STS_030, the spec's ``val`` cases), BRATS pat0006 (FLAIR
  and T1c; whole tumour and tumour core), and the organs of the OpenKBP validation patients in
  ``shared/data/openkbp_hn_ct/validation`` (not in the propagation spec; every ``--openkbp-every``-th patient).

Also (``--distance``): Dice by distance from the largest slice and the stopping-rule table, on the spec's
held-out volumes, the one-step size bias, and the latency on a 256x256x200 CT.

Usage: python Testing/benchmarks/bench_propagation.py [--model DIR] [--prior-model DIR] [--spec JSON] [--distance]
       [--card]
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PromptSegLib.metrics import dice  # noqa: E402
from PromptSegLib.propagate.data import load_split, scored  # noqa: E402
from PromptSegLib.train.datasets import DatasetSpec, load_spec  # noqa: E402
from PromptSegLib.propagate.evaluation import (evaluate_volumes, evaluation_targets, largest_slice,  # noqa: E402
                                               summary_table)
from PromptSegLib.propagate.model import BUNDLED_PROPAGATION_MODEL  # noqa: E402
from PromptSegLib.propagate.multislice import fill_from_slices  # noqa: E402
from PromptSegLib.propagate.organ_prior import MODEL as PRIOR_MODEL, organ_prior  # noqa: E402
from PromptSegLib.propagate.propagator import FADE_CONTRAST, Propagator, propagate  # noqa: E402
from PromptSegLib.segment.inference import Segmenter  # noqa: E402

COUNTS = (1, 2, 3, 4, 6, 8)
OPENKBP = ROOT.parent / "shared" / "data" / "openkbp_hn_ct" / "validation"
OPENKBP_ORGANS = ("brainstem", "spinal cord", "right parotid", "left parotid", "esophagus", "larynx", "mandible")
PRIOR_GROUPS = ("sts_ct", "openkbp")
"""The CT groups: there the fill takes the organ prior, as the Segment Editor effect does on a CT."""
GROUPS = {"sts_ct": "sarcoma GTV, CT", "sts_mr_t1": "sarcoma GTV, T1 MR", "brats": "BRATS pat0006 (FLAIR, T1c)",
          "openkbp": "OpenKBP validation organs, CT"}


def drawn_indices(truth: np.ndarray, k: int) -> list[int]:
    """The protocol's K drawn axial slices: ``first + floor((i + 0.5) * n / K)``, i = 0..K-1 (distinct)."""
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    first, n = int(present[0]), int(present[-1] - present[0] + 1)
    return sorted({first + int(np.floor((i + 0.5) * n / k)) for i in range(k)})


def contour_interpolation():
    """ITK, which holds the peer's filter (the benchmark extra), set to one thread; a missing ITK ends the run at
    once, with the command that installs it, not after the first structure's fills."""
    try:
        import itk
    except ImportError:
        raise SystemExit('ITK is missing (the peer, "Fill between slices"): .venv/bin/python -m pip install -e '
                         '".[bench]"') from None
    # one thread: the rule here, and the multi-threaded filter corrupted the heap in our runs (malloc abort)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    return itk


def fill_between_slices(truth: np.ndarray, indices: list[int]) -> np.ndarray:
    """ITK morphological contour interpolation from the given ground-truth axial slices."""
    itk = contour_interpolation()
    drawn = np.zeros(truth.shape, np.uint8)
    drawn[indices] = truth[indices]
    if len(indices) < 2:
        return drawn.astype(bool)
    interpolator = itk.MorphologicalContourInterpolator.New(itk.GetImageFromArray(drawn))
    interpolator.SetAxis(2)  # ITK's z = numpy axis 0 (axial)
    interpolator.SetLabel(1)
    interpolator.Update()
    return itk.GetArrayFromImage(interpolator.GetOutput()).astype(bool)


def header_geometry(path: str | Path) -> tuple[tuple[float, float, float], tuple[float, ...]]:
    """Voxel size (mm) of an image file along the array axes ``(Z, Y, X)``, and its direction matrix (row-major,
    as ``sitk.Image.GetDirection``), from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(float(v) for v in reversed(reader.GetSpacing())), tuple(reader.GetDirection())


def image_of(array: np.ndarray, spacing: tuple[float, float, float], direction: tuple[float, ...]) -> sitk.Image:
    """A ``(Z, Y, X)`` array as a SimpleITK image with its spacing (mm, ``(Z, Y, X)``) and direction: what the
    organ prior's model needs to see the patient the right way up."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetDirection(direction)
    return image


def openkbp_organs(organs: np.ndarray):
    """Yield ``(organ name, bool mask (Z, Y, X))`` for each organ of an OpenKBP label array (values 1..7 as
    ``OPENKBP_ORGANS``) contoured on at least 3 slices."""
    for value, organ in enumerate(OPENKBP_ORGANS, 1):
        truth = organs == value
        if truth.any(axis=(1, 2)).sum() >= 3:
            yield organ, truth


def held_out_structures(spec: list[DatasetSpec], openkbp_every: int, groups=tuple(GROUPS), done=lambda name: False,
                        stop=lambda: False):
    """Yield ``(group, name, image (Z, Y, X), truth bool (Z, Y, X), spacing (mm, Z Y X), direction)`` for every held-out
    structure of ``groups`` (the spec's ``val`` cases; OpenKBP validation patients), skipping those ``done``
    names; nothing more is read once ``stop()`` is true."""
    from PromptSegLib.propagate.data import load_volume

    for dataset in spec:
        group = "brats" if dataset.name.startswith("brats") else dataset.name
        if group not in groups:
            continue
        for case in (c for c in dataset.cases if c.split == "val"):
            targets = scored(dataset) or {"GTV": None}
            if all(done(f"{dataset.name}/{case.id}/{t}") for t in targets):
                continue
            if stop():
                return
            volume = load_volume(dataset, case)
            for name, truth in evaluation_targets(volume, scored(dataset)).items():
                if not done(f"{volume.name}/{name}"):
                    yield group, f"{volume.name}/{name}", volume.image, truth, *header_geometry(case.image)
    if "openkbp" not in groups:
        return
    for folder in sorted(OPENKBP.glob("pt_*"))[::openkbp_every]:
        if stop():
            return
        image = sitk.ReadImage(str(folder / "ct.nii.gz"))
        organs = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "oars.nii.gz")))
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        for organ, truth in openkbp_organs(organs):
            name = f"openkbp/{folder.name}/{organ}"
            if not done(name):
                yield "openkbp", name, array, truth, tuple(reversed(image.GetSpacing())), image.GetDirection()


def drawn_slices_protocol(propagator: Propagator, image: np.ndarray, truth: np.ndarray,
                          spacing: tuple[float, float, float], counts=COUNTS,
                          direction: tuple[float, ...] | None = None, segmenter=None) -> dict[str, float]:
    """Whole-structure Dice of PromptSeg and of the peer for each K; PromptSeg's filled slices and seconds. With a
    ``segmenter`` (and the image's ``direction``) the fill takes the organ prior it gives, timed with it; the
    row says which target it took (``prior K=k``, empty where none)."""
    row = {"filled": 0, "seconds": 0.0}
    reference = image_of(image, spacing, direction) if segmenter is not None else None
    for k in counts:
        indices = drawn_indices(truth, k)
        drawn = {j: truth[j] for j in indices}
        start = time.perf_counter()
        prior = organ_prior(segmenter, reference, drawn) if segmenter is not None else None
        result = fill_from_slices(propagator, image, drawn, spacing=spacing, prior=prior)
        row["seconds"] += time.perf_counter() - start
        row["filled"] += len(result.written)
        row[f"promptseg K={k}"] = dice(result.mask, truth)
        row[f"peer K={k}"] = dice(fill_between_slices(truth, indices), truth)
        if segmenter is not None:
            row[f"prior K={k}"] = prior.target if prior is not None else ""
    return row


def drawn_slices_table(rows: list[dict], counts=COUNTS) -> str:
    """Markdown: per group and over all structures, mean Dice "PromptSeg / peer" for each K, and ms per slice."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = ["| group | structures | " + " | ".join(f"K={k}" for k in counts) + " | ms/slice |",
             "|---|---|" + "---|" * (len(counts) + 1)]
    for group in groups + ["all"]:
        chosen = [r for r in rows if group in ("all", r["group"])]
        cells = [f"{np.mean([r[f'promptseg K={k}'] for r in chosen]):.3f} / "
                 f"{np.mean([r[f'peer K={k}'] for r in chosen]):.3f}" for k in counts]
        ms = 1000 * sum(r["seconds"] for r in chosen) / max(sum(r["filled"] for r in chosen), 1)
        lines.append(f"| {GROUPS.get(group, group)} | {len(chosen)} | " + " | ".join(cells) + f" | {ms:.1f} |")
    return "\n".join(lines) + "\n"


def prior_use(rows: list[dict], counts=COUNTS) -> str:
    """Markdown: per group with an organ prior, how many structures took one at each K."""
    lines = []
    for group in dict.fromkeys(r["group"] for r in rows if any(f"prior K={k}" in r for k in counts)):
        chosen = [r for r in rows if r["group"] == group]
        used = ", ".join(f"K={k} {sum(bool(r.get(f'prior K={k}')) for r in chosen)}" for k in counts)
        lines.append(f"- {GROUPS[group]}: organ prior taken by {used} of {len(chosen)} structures")
    return "\n".join(lines) + "\n" if lines else ""


def done_checks(rows: list[dict], counts=COUNTS) -> list[str]:
    """Issue 14's criteria on the measured rows, each line starting with PASS or FAIL."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    mean = lambda key, group="all": float(np.mean([r[key] for r in rows if group in ("all", r["group"])]))  # noqa: E731
    lines = []
    for group in groups:
        worse = [k for k in counts if mean(f"promptseg K={k}", group) < mean(f"peer K={k}", group)]
        lines.append(f"{'FAIL' if worse else 'PASS'} {group}: PromptSeg >= peer at every K"
                     + (f" (not at K={worse})" if worse else ""))
        drops = [(a, b) for a, b in zip(counts[:-1], counts[1:])
                 if mean(f"promptseg K={b}", group) < mean(f"promptseg K={a}", group)]
        lines.append(f"{'FAIL' if drops else 'PASS'} {group}: more drawn slices never lower the mean Dice"
                     + (f" (lower at {drops})" if drops else ""))
        lines.append(f"{'PASS' if mean('promptseg K=2', group) >= 0.85 else 'FAIL'} {group}: mean Dice at K=2 "
                     f"{mean('promptseg K=2', group):.3f} (>= 0.85)")
    ms = 1000 * sum(r["seconds"] for r in rows) / max(sum(r["filled"] for r in rows), 1)
    lines.append(f"{'PASS' if ms <= 30 else 'FAIL'} {ms:.1f} ms per filled slice (<= 30)")
    return lines


def stopping_table(propagator: Propagator, validation: list, rows: list[dict]) -> str:
    """Markdown table: mean Dice (+-5, +-10, whole; whole per group) at the threshold before calibration and
    the model's, each with the stopping rule off and on. ``rows`` are the default run's (calibrated, rule on)."""
    config = propagator.config
    before = config.training.get("threshold_calibration", {}).get("previous", config.threshold)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = ["| threshold | stopping rule | Dice +-5 | Dice +-10 | Dice whole | " +
             " | ".join(f"whole {g}" for g in groups) + " |", "|---|---|---|---|---|" + "---|" * len(groups)]
    for threshold in dict.fromkeys((before, config.threshold)):
        for contrast in (0.0, FADE_CONTRAST):
            default = threshold == config.threshold and contrast == FADE_CONTRAST
            scored = rows if default else evaluate_volumes(propagator, validation, threshold=threshold,
                                                           min_contrast=contrast)
            means = [np.mean([r[key] for r in scored]) for key in ("+-5", "+-10", "whole")]
            means += [np.mean([r["whole"] for r in scored if r["group"] == g]) for g in groups]
            lines.append(f"| {threshold:g}{' (before)' if threshold == before != config.threshold else ''} | "
                         f"{f'on ({contrast:g})' if contrast else 'off'}{' (default)' if default else ''} | " +
                         " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def one_step_bias(propagator: Propagator, validation: list, threshold: float = 0.5) -> dict[str, float]:
    """Does the network keep the size of what it is prompted with? Each held-out structure's largest slice (the
    truth) prompts each neighbouring slice holding the structure, at ``threshold``, stopping rule off: how
    many of these one-step masks are larger than the truth, and the median relative area error (%)."""
    errors = []
    for volume, evaluate in validation:
        for truth in evaluation_targets(volume, evaluate).values():
            k = largest_slice(truth)
            seeded = np.zeros_like(truth)
            seeded[k] = truth[k]
            for q in (k - 1, k + 1):
                if 0 <= q < len(truth) and truth[q].any():
                    mask = propagate(propagator, volume.image, seeded, k, start=min(k, q), stop=max(k, q),
                                     threshold=threshold, min_contrast=None).mask
                    errors.append((mask[q].sum() - truth[q].sum()) / truth[q].sum())
    return {"steps": len(errors), "larger": int(np.sum(np.array(errors) > 0)),
            "median_error_pct": 100 * float(np.median(errors)), "threshold": threshold}


def latency(propagator: Propagator, slices: int = 200, side: int = 256) -> dict[str, float]:
    """Per-slice and whole-volume propagation time on a real CT (liver) resampled to side x side x slices."""
    from PromptSegLib.propagate.data import load_volume

    spec = load_spec(ROOT / "Resources" / "Training" / "propagation.json", as_written=True)
    organs = next(d for d in spec if d.name == "ts_ct_organs")
    volume = load_volume(organs, next(c for c in organs.cases if c.id == "ts_ct_3mm"))
    zoom = np.array([slices, side, side]) / np.array(volume.image.shape)
    image = ndimage.zoom(volume.image, zoom, order=1)
    liver = ndimage.zoom((volume.label == 5).astype(np.uint8), zoom, order=0).astype(bool)
    k = largest_slice(liver)
    seeded = np.zeros_like(liver)
    seeded[k] = liver[k]
    propagate(propagator, image[k - 3:k + 3], seeded[k - 3:k + 3], 3)  # warm-up
    start = time.perf_counter()
    result = propagate(propagator, image, seeded, k)
    total = time.perf_counter() - start
    q = torch.rand(1, 1, propagator.config.input_size, propagator.config.input_size)
    with torch.no_grad():
        for _ in range(3):
            propagator.model.network(q, q, q)
        start = time.perf_counter()
        for _ in range(20):
            propagator.model.network(q, q, q)
    net = (time.perf_counter() - start) / 20
    return {"shape": image.shape, "written": len(result.written), "total_s": total,
            "per_slice_ms": 1000 * total / max(len(result.written), 1), "network_ms": 1000 * net,
            "liver_dice": dice(result.mask, liver)}


def write_card(folder: str | Path, section: str) -> None:
    """Replace the card's benchmark section (the last one, from its heading) by ``section``; a bundled folder's
    catalogue entry (its size) follows."""
    from PromptSegLib.models.catalogue import refresh_bundled_catalogue
    from PromptSegLib.models.folder import BUNDLED_MODELS, CARD, replace_card

    card = (Path(folder) / CARD).read_text(encoding="utf-8")
    head = card.find("\n## Benchmark")
    replace_card(folder, (card if head < 0 else card[:head]).rstrip("\n") + "\n\n" + section.strip("\n") + "\n")
    if Path(folder).resolve().parent == BUNDLED_MODELS.resolve():
        refresh_bundled_catalogue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_PROPAGATION_MODEL))
    parser.add_argument("--spec", default=str(ROOT / "Resources" / "Training" / "propagation.json"))
    parser.add_argument("--openkbp-every", type=int, default=3, help="every n-th OpenKBP validation patient")
    parser.add_argument("--distance", action="store_true",
                        help="also Dice by distance, the stopping-rule table, the size bias and the 256x256 latency")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--card", action="store_true", help="replace the benchmark section of the model's card")
    parser.add_argument("--rows", nargs="+", default=[],
                        help="JSON files of measured structures: those in them are not run again (their rows are "
                             "reported); each new one is added to the first file as soon as it is measured")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--prior-groups", nargs="*", default=list(PRIOR_GROUPS), choices=list(GROUPS),
                        help="groups (CT) whose fills take the organ prior; none: no prior")
    parser.add_argument("--prior-model", default=PRIOR_MODEL,
                        help="the organ prior's model (default: the bundled one; a candidate's folder to measure "
                             "it before it is bundled)")
    parser.add_argument("--minutes", type=float, help="start no new volume after this much time (the table "
                                                      "counts the structures measured per group)")
    args = parser.parse_args()
    contour_interpolation()
    propagator = Propagator(args.model, threads=args.threads)
    segmenter = Segmenter(args.prior_model, device="cpu", threads=args.threads) if args.prior_groups else None
    spec = load_spec(args.spec, as_written=True)

    prior = f"{segmenter.model.config.name} {segmenter.model.config.version}" if segmenter else ""
    prior_of = lambda group: prior if group in args.prior_groups else ""  # noqa: E731
    # a row is reused only where it took the same prior (rows without one are measured again)
    measured = {r["structure"]: r for path in args.rows if Path(path).is_file()
                for r in json.loads(Path(path).read_text()) if r.get("prior model", "") == prior_of(r["group"])}
    deadline = time.monotonic() + 60 * args.minutes if args.minutes is not None else None
    for group, name, image, truth, spacing, direction in held_out_structures(
            spec, args.openkbp_every, args.groups, done=measured.__contains__,
            stop=lambda: deadline is not None and time.monotonic() > deadline):
        measured[name] = {"group": group, "structure": name, "prior model": prior_of(group), **drawn_slices_protocol(
            propagator, image, truth, spacing, direction=direction,
            segmenter=segmenter if group in args.prior_groups else None)}
        if args.rows:
            Path(args.rows[0]).write_text(json.dumps(list(measured.values())))
        print(f"{name}: " + " ".join(f"K={k} {measured[name][f'promptseg K={k}']:.3f}/"
                                     f"{measured[name][f'peer K={k}']:.3f}" for k in COUNTS), flush=True)
    rows = sorted((r for r in measured.values() if r["group"] in args.groups),
                  key=lambda r: list(GROUPS).index(r["group"]))
    table = drawn_slices_table(rows) + prior_use(rows)
    checks = "\n".join(done_checks(rows))
    threads = torch.get_num_threads()
    print("\nWhole-structure Dice, PromptSeg / Fill between slices, by number of drawn slices K\n" + table)
    print(checks)
    section = ("## Benchmark: filling from drawn slices against Fill between slices\n\n```\n"
               + "python " + shlex.join(["Testing/benchmarks/bench_propagation.py"] + sys.argv[1:]) + "\n```\n\n"
               f"Held-out structures (the propagation model never trained on them). The user draws K axial slices "
               f"of the true mask at (i + 0.5)/K of the structure's axial extent; PromptSeg fills the structure "
               f"from them (`PromptSegLib.propagate.multislice.fill_from_slices`; in the groups "
               f"{', '.join(args.prior_groups) or '(none)'}, on CT, with the organ prior of "
               f"`PromptSegLib.propagate.organ_prior`{' from ' + prior if prior else ''}, as the Segment Editor "
               f"effect does), the peer (ITK "
               f"morphological contour interpolation, Slicer's \"Fill between slices\") interpolates between the "
               f"same slices (with one slice it returns that slice). Mean whole-structure Dice, PromptSeg / peer; "
               f"ms per slice PromptSeg filled (all K), {threads} CPU thread{'s' if threads != 1 else ''}:\n\n{table}\n"
               f"Issue 14's criteria on these numbers:\n\n```\n{checks}\n```\n")
    if args.distance:
        validation = load_split(spec, "val")
        distance_rows = evaluate_volumes(propagator, validation)
        distance = summary_table(distance_rows)
        stopping = stopping_table(propagator, validation, distance_rows)
        bias = one_step_bias(propagator, validation)
        timing = latency(propagator)
        print("\nDice by distance from the prompt slice\n" + distance + "\n" + stopping)
        section += (f"\nOne drawn slice (the largest), Dice by distance from it (held-out):\n\n{distance}\n"
                    f"Stopping at structure ends (same protocol; the threshold before and after "
                    f"`calibrate_threshold`, the stopping rule off and on):\n\n{stopping}\n"
                    f"Size bias: one step from the prompt (each held-out structure's largest slice prompting each "
                    f"neighbour, threshold {bias['threshold']:g}, stopping rule off): the mask is larger than the "
                    f"truth in {bias['larger']} of {bias['steps']} steps; median area error "
                    f"{bias['median_error_pct']:+.1f} %.\n\n"
                    f"Latency: volume {timing['shape']} (real CT resampled, liver): {timing['written']} slices "
                    f"propagated in {timing['total_s']:.2f} s, {timing['per_slice_ms']:.1f} ms per 256x256 slice; "
                    f"network alone {timing['network_ms']:.1f} ms per {propagator.config.input_size}x"
                    f"{propagator.config.input_size} input ({threads} CPU thread{'s' if threads != 1 else ''}).\n")
    if args.card:
        write_card(args.model, section)
        print(f"wrote the benchmark section of {Path(args.model) / 'README.md'}")


if __name__ == "__main__":
    main()

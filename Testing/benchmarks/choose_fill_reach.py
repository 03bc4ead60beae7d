"""Choose how a fill from drawn slices works, on validation structures: how far it goes beyond the outermost
drawn slices, ``multislice.REACH`` (``--reach``: the fill's hard limit) or ``multislice.ENDS_BEYOND``
(``--ends-beyond``: where the size profile expects the structure's ends), each in median drawn-slice spacings,
``none`` for no such rule; or whether the interpolation between drawn slices keeps the interpolated area
(``--keep-area false true``: ``shape_prior.interpolated_distance``'s ``keep_area``); or which propagation model
fills (``--models bundled DIR ...``, each at the library's settings); or whether the shape between drawn slices
follows the structure's tracked centre (``--track false true``: ``multislice.TRACK``); or the interpolated shape's
share of a slice's probability between drawn slices, the rest the network's (``--interpolation-weight 0.5 0.75 1``:
``multislice.INTERPOLATION_WEIGHT``); or the share of the size profile's bulge added to the area interpolated
between drawn slices (``--bulge 0 0.5 1``: ``multislice.BULGE``); or the size under which a mask beyond the drawn
slices has vanished (``--min-pixels 4 drawn``: a fixed count of pixels, or ``propagator.VANISHED`` of the smallest
drawn slice's); or the drawn pixels' intensity range outside which nothing is filled (``--intensity-range none
2:0.1``: percentile and margin, ``multislice.INTENSITY_RANGE``); or from which drawn aspect a structure is carried
beyond the drawn slices as a tube (``--tube-aspect none 3 5``: ``multislice.TUBE_ASPECT``), and how far
(``--tube-reach 0.25 0.5``: ``multislice.TUBE_REACH``); or how large a slice beyond the outermost drawn slices
may be where the reach ends the fill (``--cap profile drawn``: ``multislice.CAP``), and how the drawn size tapers
there (``--taper 2 4 8``: ``multislice.TAPER``); or the organ prior's share of each voxel's vote on the CT
group (``--prior-weights none 0.6``: ``organ_prior.WEIGHT``; ``none``: no prior), and the least agreement with
the drawn slices at which it is taken (``--prior-agreements 0.75 0.6``: ``organ_prior.MIN_AGREEMENT``, and with
``--counts 1`` ``LOW_AGREEMENT``), and below how many pixels a drawn slice a structure is small and takes it from
``LOW_AGREEMENT`` (``--prior-small-pixels 0 10``: ``organ_prior.SMALL_PIXELS``), and whether close drawn slices
that hold different numbers of pieces take it (``--prior-pieces false true``: ``organ_prior.PIECES``), or whether
its crop stays one model window wide in the plane where the drawn box allows (``--prior-crop grown window``:
``organ_prior.ONE_WINDOW``), or which model gives it (``--prior-models promptseg-hn-oars DIR``:
``organ_prior.MODEL``). One is varied, the
others kept at the library's value (``--model``: the model that fills then).

Validation groups (the propagation model never trained on any of them, and none is in ``bench_propagation.py``,
whose figures stay a held-out report):
- ``openkbp``: the seven organs of the 12 OpenKBP *training-split* patients that ``hn_oars.json`` keeps for
  validation (``../open-kbp/provided-data/train-pats``, read by the project's importer);
- ``openkbp_more``: those of 12 other training-split patients (every 14th of the rest from the 4th, with a CT), for
  choices of the organ prior: the organ model trained on them (so its prior is a little better there than on new
  patients), the propagation model did not; not among the default groups;
- ``pgbm``: glioblastomas of TCIA Brain-Tumor-Progression, each study's ``MaskTumor`` on its T1 post-contrast
  and on its registered FLAIR (6.5 mm slices; tumours on at least 3 slices), from ``../nd320-pgbm/PGBM-*/STUDY/
  SERIES/*.dcm``, the DICOM files of ``fetch github:udacity/nd320-c3-3d-med-imaging``'s
  ``3d-imaging-exploratory-data-analysis/data`` (only the MaskTumor, T1post and FLAIRreg series are read);
- ``hippocampus``: the first 12 Medical Segmentation Decathlon hippocampus crops (1 mm MR, anterior and posterior
  joined) of ``fetch github:MinervaRose/nd320-c3-3d-imaging-starter``'s ``data/TrainingSet``, copied to
  ``../nd320-hippocampus/{images,labels}`` (a crop whose image the snapshot lacks is skipped).

A group whose folder is absent is left out (said on the output). Protocol as in ``bench_propagation.py`` (K drawn
axial slices at (i + 0.5) / K of the extent); each value is run for K = 2..8 or ``--counts`` (K = 1 is affected
by ``--min-pixels`` and ``--intensity-range`` alone), with the ITK peer for reference. Prints mean Dice per group
and K; the value with the highest mean over groups and K is chosen (each group weighs the same, so that 60 organs
do not outvote a dozen tumours).

Usage: python Testing/benchmarks/choose_fill_reach.py [--reach none 1 0.5 | --ends-beyond none 0.5 1 2 |
       --keep-area false true | --track false true | --interpolation-weight 0.5 0.75 1 | --bulge 0 0.5 1 |
       --min-pixels 4 drawn | --intensity-range none 2:0.1 | --tube-aspect none 3 5 | --tube-reach 0.25 0.5 |
       --cap profile drawn | --taper 2 4 8 | --models bundled DIR | --prior-weights none 0.6 |
       --prior-agreements 0.75 0.6 | --prior-small-pixels 0 10 | --prior-pieces false true |
       --prior-crop grown window]
       [--model DIR]
       [--counts 2 3 4 6 8] [--groups openkbp pgbm hippocampus openkbp_more] [--threads 1]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import OrderedDict
from functools import cache, partial

import numpy as np
import SimpleITK as sitk
import torch
from bench_propagation import COUNTS, ROOT, contour_interpolation, drawn_indices, fill_between_slices, openkbp_organs

sys.path.insert(0, str(ROOT))

from PromptSegLib.io.imageio import read_image  # noqa: E402
from PromptSegLib.metrics import dice  # noqa: E402
from PromptSegLib.propagate import multislice  # noqa: E402
from PromptSegLib.propagate.organ_prior import MODEL as PRIOR_MODEL, least_agreement, organ_prior  # noqa: E402
from PromptSegLib.propagate.propagator import Propagator  # noqa: E402
from PromptSegLib.propagate.shape_prior import interpolated_distance  # noqa: E402
from PromptSegLib.segment.inference import Segmenter  # noqa: E402
from PromptSegLib.train.openkbp import read_ct, read_structures  # noqa: E402

SPEC = ROOT / "Resources" / "Training" / "hn_oars.json"


PGBM = ROOT.parent / "nd320-pgbm"
HIPPOCAMPUS = ROOT.parent / "nd320-hippocampus"
GROUPS = ("openkbp", "pgbm", "hippocampus")
"""The default validation groups (``openkbp_more`` is asked for by name)."""


def openkbp_structures(more: bool = False):
    """Yield ``(name, image (Z, Y, X), truth bool (Z, Y, X), spacing (mm, Z Y X), the CT)`` for each contoured organ
    (at least 3 slices) of the OpenKBP validation patients of ``hn_oars.json`` (``more``: of 12 other patients of
    its training split, ``openkbp_more``)."""
    dataset = json.loads(SPEC.read_text())["datasets"][0]
    folder = (SPEC.parent / dataset["folder"]).resolve()
    patients = dataset["val"]
    if more:
        others = [p.name for p in folder.glob("pt_*") if p.name not in patients and (p / "ct.csv").is_file()]
        patients = sorted(others, key=lambda name: int(name.split("_")[1]))[3::14][:12]
    for patient in patients:
        ct = read_ct(folder / patient)
        organs = sitk.GetArrayFromImage(read_structures(folder / patient))
        image = sitk.GetArrayFromImage(ct).astype(np.float32)
        for organ, truth in openkbp_organs(organs):
            yield f"{patient}/{organ}", image, truth, tuple(reversed(ct.GetSpacing())), ct


def pgbm_structures():
    """Like :func:`openkbp_structures` (no CT: ``None``): each PGBM study's tumour on its T1 post-contrast and its
    FLAIR."""
    for study in sorted(PGBM.glob("PGBM-*/*/")):
        series = {folder.name.split("-")[1]: folder for folder in study.iterdir() if folder.is_dir()}
        if "MaskTumor" not in series or "T1post" not in series:
            continue
        mask = read_image(series["MaskTumor"])
        truth = sitk.GetArrayFromImage(mask) > 0
        if truth.any(axis=(1, 2)).sum() < 3:
            continue
        for kind in ("T1post", "FLAIRreg"):
            image = read_image(series[kind])
            if image.GetSize() != mask.GetSize():
                raise ValueError(f"{series[kind]} and its tumour mask are on different grids")
            yield (f"{study.parent.name}/{study.name[:10]}/{kind}", sitk.GetArrayFromImage(image).astype(np.float32),
                   truth, tuple(reversed(image.GetSpacing())), None)


def hippocampus_structures():
    """Like :func:`openkbp_structures` (no CT: ``None``): the first 12 hippocampus crops whose image is there."""
    for label in sorted((HIPPOCAMPUS / "labels").glob("hippocampus_*.nii.gz"))[:12]:
        path = HIPPOCAMPUS / "images" / label.name
        if path.is_file() and path.stat().st_size > 0:
            image = read_image(path)
            yield (label.name.split(".")[0], sitk.GetArrayFromImage(image).astype(np.float32),
                   sitk.GetArrayFromImage(read_image(label)) > 0, tuple(reversed(image.GetSpacing())), None)


def fill(propagator: Propagator, image: np.ndarray, drawn: dict[int, np.ndarray], spacing: tuple[float, ...],
         keyword: str, value, reference: sitk.Image | None = None) -> np.ndarray:
    """The library's fill from ``drawn`` slices with one choice set to ``value``: a keyword of
    ``fill_from_slices``, ``keep_area`` of the interpolation it uses between drawn slices, ``model`` (the
    ``propagator`` given is that model), ``prior_weight`` (``None``: no organ prior; a CT ``reference``
    image gets one, as the Segment Editor effect does), the organ prior's least agreement, ``min_agreement``
    itself or through ``small_pixels`` (:func:`~PromptSegLib.propagate.organ_prior.least_agreement`), or whether
    close drawn slices of different pieces take it, ``pieces`` (:func:`~.organ_prior.prior_applies`), or whether its
    crop stays one window wide, ``one_window`` (:func:`~.organ_prior.prior_box`), or the prior's model,
    ``prior_model``."""
    if keyword == "prior_model":
        prior = organ_prior(segmenter(value), reference, drawn) if reference is not None else None
        return multislice.fill_from_slices(propagator, image, drawn, spacing=spacing, prior=prior).mask
    if keyword == "prior_weight":
        prior = organ_prior(segmenter(), reference, drawn) if value is not None and reference is not None else None
        return multislice.fill_from_slices(propagator, image, drawn, spacing=spacing, prior=prior,
                                           **({"prior_weight": value} if prior is not None else {})).mask
    if keyword in ("min_agreement", "small_pixels", "pieces", "one_window"):
        option = {"min_agreement": least_agreement(drawn, value)} if keyword == "small_pixels" else {keyword: value}
        prior = organ_prior(segmenter(), reference, drawn, **option) if reference is not None else None
        return multislice.fill_from_slices(propagator, image, drawn, spacing=spacing, prior=prior).mask
    if keyword == "model":
        return multislice.fill_from_slices(propagator, image, drawn, spacing=spacing).mask
    if keyword != "keep_area":
        return multislice.fill_from_slices(propagator, image, drawn, spacing=spacing, **{keyword: value}).mask
    multislice.interpolated_distance = partial(interpolated_distance, keep_area=value)
    try:
        return multislice.fill_from_slices(propagator, image, drawn, spacing=spacing).mask
    finally:
        multislice.interpolated_distance = interpolated_distance


class ReusedSegmenter:
    """A :class:`Segmenter` that keeps its last ``keep`` results: the values of a choice ask the organ prior's
    model for the same crops of a structure (one per K), which a second value need not run again."""

    def __init__(self, segmenter: Segmenter, keep: int = 16):
        self.model, self._segmenter, self._keep = segmenter.model, segmenter, keep
        self._results: OrderedDict = OrderedDict()

    def segment(self, image: sitk.Image, *args, **kwargs):
        """``Segmenter.segment``, or the kept result of the same crop (voxels and geometry) and arguments."""
        asked = {k: hashlib.sha1(v.tobytes()).hexdigest() if isinstance(v, np.ndarray) else v
                 for k, v in kwargs.items() if k not in ("progress", "cancel")}  # a hint's repr would be cut short
        voxels = hashlib.sha1(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest()
        key = (image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection(), voxels, repr(args),
               repr(sorted(asked.items())))
        if key not in self._results:
            self._results[key] = self._segmenter.segment(image, *args, **kwargs)
            if len(self._results) > self._keep:
                self._results.popitem(last=False)
        return self._results[key]


@cache
def segmenter(model: str = PRIOR_MODEL) -> ReusedSegmenter:
    """The organ prior's model (catalogue name or folder), loaded once (on the CPU, with torch's thread count as
    set)."""
    return ReusedSegmenter(Segmenter(model, device="cpu", threads=torch.get_num_threads()))


def spacings(value: str) -> float | None:
    """A ``--reach``, ``--ends-beyond``, ``--tube-reach`` (drawn-slice spacings) or ``--tube-aspect`` value;
    ``none``: no such rule."""
    return None if value == "none" else float(value)


CHOICES = {"reach": ("reach", spacings), "ends_beyond": ("ends_beyond", spacings),
           "keep_area": ("keep_area", lambda v: v == "true"), "track": ("track", lambda v: v == "true"),
           "interpolation_weight": ("interpolation_weight", float), "bulge": ("bulge", float),
           "min_pixels": ("min_pixels", lambda v: None if v == "drawn" else int(v)),
           "intensity_range": ("intensity_range",
                               lambda v: None if v == "none" else tuple(float(x) for x in v.split(":"))),
           "tube_aspect": ("tube_aspect", spacings), "tube_reach": ("tube_reach", spacings), "cap": ("cap", str),
           "taper": ("taper", float), "models": ("model", str),
           "prior_weights": ("prior_weight", lambda v: None if v == "none" else float(v)),
           "prior_agreements": ("min_agreement", float), "prior_small_pixels": ("small_pixels", float),
           "prior_pieces": ("pieces", lambda v: v == "true"), "prior_crop": ("one_window", lambda v: v == "window"),
           "prior_models": ("prior_model", str)}
"""Each choice's option (its argparse name) -> (the keyword :func:`fill` sets, how its values are read)."""


SOURCES = {"openkbp": (openkbp_structures, ROOT.parent / "open-kbp"), "pgbm": (pgbm_structures, PGBM),
           "hippocampus": (hippocampus_structures, HIPPOCAMPUS),
           "openkbp_more": (partial(openkbp_structures, more=True), ROOT.parent / "open-kbp")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--reach", nargs="+")
    chosen.add_argument("--ends-beyond", nargs="+")
    chosen.add_argument("--keep-area", nargs="+", choices=["false", "true"])
    chosen.add_argument("--track", nargs="+", choices=["false", "true"])
    chosen.add_argument("--interpolation-weight", nargs="+", type=float)
    chosen.add_argument("--bulge", nargs="+", type=float)
    chosen.add_argument("--min-pixels", nargs="+")
    chosen.add_argument("--intensity-range", nargs="+", help="PERCENTILE:MARGIN, or none")
    chosen.add_argument("--tube-aspect", nargs="+", help="drawn aspect from which a structure is a tube, or none")
    chosen.add_argument("--tube-reach", nargs="+", help="drawn-slice spacings a tube is carried beyond, or none")
    chosen.add_argument("--cap", nargs="+", choices=["profile", "drawn"], help="size cap beyond the drawn slices")
    chosen.add_argument("--taper", nargs="+", type=float, help="exponent of the drawn-size cap's taper")
    chosen.add_argument("--models", nargs="+", help="propagation model folders ('bundled': the bundled model)")
    chosen.add_argument("--prior-weights", nargs="+", help="the organ prior's share of each voxel's vote on CT, or "
                                                           "none (no prior)")
    chosen.add_argument("--prior-agreements", nargs="+", help="the least Dice of the organ prior's mask with the "
                                                              "drawn slices for it to be taken")
    chosen.add_argument("--prior-small-pixels", nargs="+", help="below how many pixels a drawn slice (their mean) a "
                                                                "structure takes the organ prior at the low agreement")
    chosen.add_argument("--prior-pieces", nargs="+", choices=["false", "true"],
                        help="whether close drawn slices that hold different numbers of pieces take the organ prior")
    chosen.add_argument("--prior-crop", nargs="+", choices=["grown", "window"],
                        help="the organ prior's crop: the drawn box grown by half its size in the plane, or no wider "
                             "than one model window thereby")
    chosen.add_argument("--prior-models", nargs="+", help="the organ prior's model (catalogue name or folder)")
    parser.add_argument("--model", default="bundled", help="the model that fills when another choice is varied")
    parser.add_argument("--counts", type=int, nargs="+", default=[k for k in COUNTS if k > 1])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(SOURCES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    contour_interpolation()
    option = next((name for name in CHOICES if getattr(args, name)), "reach")
    keyword, read = CHOICES[option]
    values = [read(v) for v in getattr(args, option) or ["none", "1", "0.5"]]
    counts = args.counts
    propagators = {value: Propagator(None if value == "bundled" else value, threads=args.threads)
                   for value in (values if keyword == "model" else [args.model])}
    groups = [g for g in args.groups if SOURCES[g][1].is_dir()]
    for group in sorted(set(args.groups) - set(groups)):
        print(f"left out: {group} ({SOURCES[group][1]} is absent)")
    keys = [str(v) for v in values] + ["peer"]
    scores: dict[str, dict[str, list[list[float]]]] = {g: {key: [] for key in keys} for g in groups}
    for group in groups:
        for name, image, truth, spacing, reference in SOURCES[group][0]():
            drawn = {k: drawn_indices(truth, k) for k in counts}
            for value in values:
                propagator = propagators[value if keyword == "model" else args.model]
                scores[group][str(value)].append([dice(fill(propagator, image, {j: truth[j] for j in drawn[k]},
                                                            spacing, keyword, value, reference), truth)
                                                  for k in counts])
            scores[group]["peer"].append([dice(fill_between_slices(truth, drawn[k]), truth) for k in counts])
            print(f"{group}/{name} " + " ".join(f"{key}: " + " ".join(f"{v:.3f}" for v in rows[-1])
                                                for key, rows in scores[group].items()), flush=True)
    means = {g: {key: np.mean(np.array(rows), axis=0) for key, rows in by_key.items()} for g, by_key in scores.items()}
    print("\nValidation structures: " + ", ".join(f"{g} {len(scores[g]['peer'])}" for g in groups) + "\n")
    unit = " (drawn-slice spacings)" if option in ("reach", "ends_beyond", "tube_reach") else ""
    print(f"| {keyword}{unit} | group | " + " | ".join(f"K={k}" for k in counts) + " | mean over K |")
    print("|---|---|" + "---|" * (len(counts) + 1))
    for key in keys:
        label = "ITK Fill between slices" if key == "peer" else key
        for group in groups:
            row = means[group][key]
            print(f"| {label} | {group} | " + " | ".join(f"{m:.3f}" for m in row) + f" | {row.mean():.3f} |")
        overall = np.mean([means[g][key] for g in groups], axis=0)
        print(f"| {label} | mean of groups | " + " | ".join(f"{m:.3f}" for m in overall) + f" | {overall.mean():.3f} |")
    best = max(keys[:-1], key=lambda key: np.mean([means[g][key] for g in groups]))
    print(f"\nchosen: {keyword} {best}")


if __name__ == "__main__":
    main()

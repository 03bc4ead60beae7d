"""Training data: a dataset spec file (JSON) and its cases prepared on the model grid.

Spec format (paths relative to the spec file)::

    {"datasets": [{"name": "ts_ct", "modality": "CT", "regions": ["abdomen"],
                   "labels": {"5": "liver", "10": "left lung", "11": "left lung", "10,11": "lungs"},
                   "cases": [{"id": "s01", "image": "ct.nii.gz", "label": "seg.nii.gz", "split": "train"}]}]}

Several label values may map to one target (lobes -> lung), and a key may list several values so that
targets overlap (``"1,2,3,4": "whole tumor"`` beside ``"4": "enhancing tumor"``). A dataset supervises only
the targets it names: a named target absent from a case has an empty ground truth there (partial labels are
the normal case). ``"absent": ["whole tumor"]`` names targets known to be in none of a dataset's cases
(healthy controls): training prompts them there with an empty truth, which teaches the model to return
nothing on a healthy scan.

The same file feeds propagation (``load_spec(path, as_written=True)``): names are kept as written (propagation is
class-agnostic), ``labels`` and ``regions`` may be left out (every non-zero label value is then a structure of
its own), and ``"evaluate"`` (name -> list of values) names the structures scored on held-out cases.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError, PromptSegError
from PromptSegLib.io.imageio import read_image, same_geometry
from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.preprocessing.preprocess import ModelInput, prepare, resample_to
from PromptSegLib.text.modality import canonical_modality
from PromptSegLib.text.vocabulary import Vocabulary, default_vocabulary
from PromptSegLib.train import openkbp

log = logging.getLogger(__name__)


@dataclass
class CaseSpec:
    """One case: its image and label files (or, with ``layout="openkbp"``, both the same OpenKBP patient
    folder), its split (``train``, ``val`` or ``test``) and the targets of its dataset that were not delineated
    for it (``unlabelled``: their truth is unknown, so neither training nor evaluation uses them there)."""

    id: str
    image: Path
    label: Path
    split: str = "train"
    layout: str = "files"
    unlabelled: tuple[str, ...] = ()


@dataclass
class DatasetSpec:
    """One dataset: modality, regions (context prompts), target names -> their label values, cases, and the
    targets known to be in none of its cases (``absent``: healthy controls)."""

    name: str
    modality: str
    regions: list[str]
    labels: dict[str, tuple[int, ...]]
    cases: list[CaseSpec] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    evaluate: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def scored(self) -> dict[str, tuple[int, ...]]:
        """The structures scored on held-out cases: ``evaluate``, else ``labels`` (empty: every label value)."""
        return self.evaluate or self.labels

    @property
    def targets(self) -> list[str]:
        return list(self.labels)

    @property
    def values(self) -> set[int]:
        """Every label value some target uses."""
        return {v for values in self.labels.values() for v in values}

    def values_of(self, target: str) -> list[int]:
        return list(self.labels.get(target, ()))


class _Names:
    """How a spec's target and region names are read: resolved through a vocabulary, or kept as written."""

    def __init__(self, vocabulary: Vocabulary | None):
        self.vocabulary = vocabulary

    def target(self, name: str) -> str:
        return self.vocabulary.target(name).name if self.vocabulary else str(name)

    def region(self, name: str) -> str:
        return self.vocabulary.region(name).name if self.vocabulary else str(name)


def parse_labels(raw: dict[str, str], names: _Names) -> dict[str, tuple[int, ...]]:
    """``{"1": "necrosis", "1,3,4": "tumor core", "10": "left lung", "11": "left lung"}`` -> target -> values
    (several keys naming one target are joined)."""
    labels: dict[str, tuple[int, ...]] = {}
    for key, name in raw.items():
        try:
            values = tuple(int(v) for v in str(key).split(","))
        except ValueError as exc:
            raise PromptSegError(f"label key {key!r} is not a value or a comma-separated list of values") from exc
        target = names.target(name)
        labels[target] = tuple(sorted(set(labels.get(target, ())) | set(values)))
    return labels


def _evaluate(entry: dict) -> dict[str, tuple[int, ...]]:
    """An entry's ``evaluate``: structure name (as written) -> its label values."""
    raw = entry.get("evaluate", {})
    if not isinstance(raw, dict):
        raise PromptSegError(f"dataset {entry.get('name', '?')}: 'evaluate' must map names to lists of values")
    try:
        return {str(name): tuple(int(v) for v in values) for name, values in raw.items()}
    except (TypeError, ValueError) as exc:
        raise PromptSegError(f"dataset {entry.get('name', '?')}: 'evaluate' must map names to lists of "
                             f"values ({exc})") from exc


def load_spec(path: str | Path, vocabulary: Vocabulary | None = None, *, as_written: bool = False,
              _including: tuple[Path, ...] = ()) -> list[DatasetSpec]:
    """Read and check a dataset spec (JSON, or YAML when PyYAML is installed); target and region names are
    resolved through the vocabulary, or, with ``as_written`` (propagation), kept as written.

    An entry may name a Medical Segmentation Decathlon / nnU-Net folder instead of listing cases:
    ``{"name": ..., "modality": ..., "regions": [...], "folder": "Task03_Liver", "val": ["liver_7"]}``; its
    ``dataset.json`` gives the cases and, when ``labels`` is absent, the label names.

    A HECKTOR folder (per patient ``<id>__CT.nii.gz``, ``<id>__PT.nii.gz`` and ``<id>.nii.gz`` with 1 = GTVp,
    2 = GTVn on the CT grid) gives two datasets, ``<name>_ct`` and ``<name>_pet`` (the label resampled onto
    the PET grid), with the same case ids, ready for ``promptseg evaluate --fuse <name>_ct <name>_pet``:
    ``{"name": "hecktor", "layout": "hecktor", "folder": "hecktor2022/train", "val": ["CHUM-001"]}``
    (``regions`` defaults to the head and neck, ``labels`` to GTVp and GTVn).

    A listed case may name targets that were not delineated for it: ``"unlabelled": ["larynx"]`` (clinical
    structure sets contour only the organs near the tumour: an organ missing from one is not absent).

    An OpenKBP folder (``provided-data/train-pats`` of a checkout of the open-kbp repository: sparse-CSV
    patient folders, see ``openkbp``) gives one CT dataset of its seven organs at risk; patients without a
    ``ct.csv`` are skipped (with a log line): ``{"name": "openkbp", "layout": "openkbp", "folder": ...,
    "val": ["pt_3"], "test": ["pt_7"]}``. ``val`` and ``test`` lists work the same way for MSD folders.

    A spec may start with the datasets of other specs, paths relative to it: ``{"include": ["propagation.json"],
    "datasets": [...]}`` (a spec that needs a fetched source beside those every checkout has). A spec that
    includes itself, directly or through others, is refused.

    Raises:
        PromptSegError: a malformed spec, an unknown target or region, a missing file.
    """
    path = Path(path)
    names = _Names(None if as_written else vocabulary or default_vocabulary())
    data = _read_structured(path)
    includes = data.get("include", [])
    if not isinstance(includes, list) or not all(isinstance(name, str) for name in includes):
        raise PromptSegError(f"dataset spec {path}: 'include' must be a list of spec files")
    chain = _including + (path.resolve(),)
    out = []
    for name in includes:
        if (path.parent / name).resolve() in chain:
            raise PromptSegError(f"dataset spec {path} includes itself (through {path.parent / name})")
        out += load_spec(path.parent / name, vocabulary, as_written=as_written, _including=chain)
    entries = data.get("datasets", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise PromptSegError(f"dataset spec {path}: 'datasets' must be a list of objects, one per dataset")
    for entry in entries:
        try:
            layout = entry.get("layout")
            specs = (_hecktor(path.parent / entry["folder"], entry, names) if layout == "hecktor"
                     else [_openkbp(path.parent / entry["folder"], entry, names)] if layout == "openkbp"
                     else [_entry(path.parent, entry, names)])
            for spec in specs:
                spec.evaluate = _evaluate(entry)
            unknown = sorted({str(i) for split in ("val", "test") for i in entry.get(split, [])}
                             - {case.id for spec in specs for case in spec.cases})
            if unknown:  # a typo would leave that patient in the training split
                raise PromptSegError(f"dataset spec {path}: entry {entry.get('name', '?')} lists "
                                     f"{', '.join(unknown)} in its val/test split, but has no such case")
        except KeyError as exc:
            raise PromptSegError(f"dataset spec {path}: entry {entry.get('name', '?')} lacks {exc}") from exc
        for spec in specs:
            for case in spec.cases:
                for file in (case.image, case.label):
                    if not file.exists():
                        raise PromptSegError(f"dataset {spec.name}, case {case.id}: no such file {file}")
        out += specs
    if not out:
        raise PromptSegError(f"dataset spec {path} lists no datasets")
    return out


def _entry(root: Path, entry: dict, names: _Names) -> DatasetSpec:
    """One dataset from a spec entry listing its cases or naming an MSD / nnU-Net folder."""
    as_written = names.vocabulary is None
    if "folder" in entry:
        labels, cases = _decathlon(root / entry["folder"], entry, names)
    else:
        labels = parse_labels(entry.get("labels", {}) if as_written else entry["labels"], names)
        cases = [CaseSpec(str(c["id"]), root / c["image"], root / c["label"], c.get("split", "train"),
                          unlabelled=tuple(names.target(t) for t in c.get("unlabelled", [])))
                 for c in entry["cases"]]
    absent = sorted({names.target(name) for name in entry.get("absent", [])})
    both = [t for t in absent if t in labels]
    if both:
        raise PromptSegError(f"dataset {entry['name']}: {', '.join(both)} both labelled and listed as absent")
    regions = entry.get("regions", []) if as_written else entry["regions"]
    return DatasetSpec(entry["name"], canonical_modality(entry["modality"]), [names.region(r) for r in regions],
                       labels, cases, absent)


HECKTOR_LABELS = {"1": "GTVp", "2": "GTVn"}


def _split_of(case_id: str, entry: dict) -> str:
    """A folder case's split: ``test`` or ``val`` when the entry lists it there, else ``train``."""
    return "test" if case_id in set(entry.get("test", [])) else "val" if case_id in set(entry.get("val", [])) else "train"


def _openkbp(folder: Path, entry: dict, names: _Names) -> DatasetSpec:
    """The CT dataset of an OpenKBP folder (see ``load_spec``)."""
    found = openkbp.patients(folder)
    if not found:
        raise PromptSegError(f"OpenKBP folder {folder} holds no patient folder (pt_*) with a ct.csv")
    lacking = sorted({p.name for p in folder.glob("pt_*") if p.is_dir()} - {p.name for p in found})
    if lacking:
        log.info("OpenKBP folder %s: %d patients without ct.csv skipped", folder, len(lacking))
    labels = parse_labels(openkbp.LABELS, names)
    regions = [names.region(r) for r in entry.get("regions", ["head and neck"])]

    def unlabelled(patient: Path) -> tuple[str, ...]:
        contoured = set(openkbp.contoured(patient))
        return tuple(t for t, values in labels.items() if not contoured & set(values))

    return DatasetSpec(entry["name"], "CT", regions, labels,
                       [CaseSpec(p.name, p, p, _split_of(p.name, entry), "openkbp", unlabelled(p)) for p in found])


def _hecktor(folder: Path, entry: dict, names: _Names) -> list[DatasetSpec]:
    """The CT and the PET dataset of a HECKTOR folder (see ``load_spec``)."""
    if not folder.is_dir():
        raise PromptSegError(f"HECKTOR folder {folder} does not exist")
    ids = sorted(p.name[: -len("__CT.nii.gz")] for p in folder.glob("*__CT.nii.gz"))
    if not ids:
        raise PromptSegError(f"HECKTOR folder {folder} holds no <id>__CT.nii.gz")
    lacking = [i for i in ids if not (folder / f"{i}__PT.nii.gz").is_file() or not (folder / f"{i}.nii.gz").is_file()]
    if lacking:
        raise PromptSegError(f"HECKTOR folder {folder}: no PET (<id>__PT.nii.gz) or label (<id>.nii.gz) for "
                             f"{', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}")
    labels = parse_labels(entry.get("labels", HECKTOR_LABELS), names)
    regions = [names.region(r) for r in entry.get("regions", ["head and neck"])]
    return [DatasetSpec(f"{entry['name']}_{modality.lower()}", modality, regions, labels,
                        [CaseSpec(i, folder / f"{i}__{suffix}.nii.gz", folder / f"{i}.nii.gz", _split_of(i, entry))
                         for i in ids])
            for suffix, modality in (("CT", "CT"), ("PT", "PET"))]


def _read_structured(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise PromptSegError("YAML dataset specs need PyYAML (pip install pyyaml); or use JSON") from exc
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise PromptSegError(f"cannot read dataset spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PromptSegError(f"{path} holds a {type(data).__name__}; a dataset spec is an object "
                             '({"datasets": [...]})')
    return data


def _decathlon(folder: Path, entry: dict, names: _Names) -> tuple[dict[str, tuple[int, ...]], list[CaseSpec]]:
    """Labels and cases of an MSD (``labels``: value -> name) or nnU-Net v2 (name -> value) folder."""
    meta = _read_structured(folder / "dataset.json")
    if "labels" in entry:
        labels = parse_labels(entry["labels"], names)
    else:
        raw = meta["labels"]
        pairs = raw.items() if all(k.isdigit() for k in raw) else ((str(v), n) for n, v in raw.items())
        labels = parse_labels({v: n for v, n in pairs if int(v) != 0}, names)
    cases = []
    if meta.get("training") and isinstance(meta["training"][0], dict):
        pairs = [(folder / c["image"], folder / c["label"]) for c in meta["training"]]
    else:
        suffix = meta.get("file_ending", ".nii.gz")
        pairs = [(folder / "imagesTr" / f"{p.name[: -len(suffix)]}_0000{suffix}", p)
                 for p in sorted((folder / "labelsTr").glob(f"*{suffix}"))]
    for image, label in pairs:
        case_id = label.name.split(".")[0]
        cases.append(CaseSpec(case_id, image, label, _split_of(case_id, entry)))
    return labels, cases


@dataclass
class LabelledCase:
    """A case as read: the image and its label values on the image's own grid (what evaluation scores on)."""

    dataset: DatasetSpec
    case: CaseSpec
    image: sitk.Image
    label: sitk.Image


@dataclass
class PreparedCase:
    """A case on the model grid: normalised image ``(Z, Y, X)`` float32 and label values ``(Z, Y, X)``."""

    dataset: DatasetSpec
    case: CaseSpec
    input: ModelInput
    label: np.ndarray
    label_original: sitk.Image

    def points(self, target: str) -> np.ndarray:
        """Indices ``(N, 3)`` of ``target``'s voxels on the model grid (computed once)."""
        cache = self.__dict__.setdefault("_points", {})
        if target not in cache:
            cache[target] = np.argwhere(np.isin(self.label, self.dataset.values_of(target)))
        return cache[target]

    def masks(self, targets: list[str], label: np.ndarray | None = None) -> np.ndarray:
        """Binary ground truth ``(T, ...)`` for ``targets`` from ``label`` (default: the whole case)."""
        label = self.label if label is None else label
        return np.stack([np.isin(label, self.dataset.values_of(t)) for t in targets]).astype(np.float32)

    def labelled(self, targets: list[str]) -> np.ndarray:
        """``(T,)`` float32: 1 where the target's truth is known for this case, 0 where it was not delineated."""
        return np.array([t not in self.case.unlabelled for t in targets], np.float32)


def read_label_file(case: CaseSpec) -> sitk.Image:
    """The case's label image on its own grid, without reading the image (e.g. to measure volumes).

    Raises:
        InputImageError: the label is not 3D.
    """
    if case.layout == "openkbp":
        label = openkbp.read_structures(case.label)
    else:
        label = read_image(case.label) if case.label.is_dir() else sitk.ReadImage(str(case.label))
    if label.GetDimension() != 3:
        raise InputImageError(f"case {case.id}: label {case.label} is not 3D")
    return label


def read_label(case: CaseSpec, image: sitk.Image) -> sitk.Image:
    """The case's label image on the image's grid (resampled by nearest neighbour when grids differ)."""
    label = read_label_file(case)
    if not same_geometry(label, image, 1e-3):
        log.warning("case %s: label grid differs from the image grid; resampling the label (nearest)", case.id)
        label = resample_to(label, image, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    return sitk.Cast(label, sitk.sitkUInt16)


def load_case(dataset: DatasetSpec, case: CaseSpec) -> LabelledCase:
    """Read and check one case's image and label (label values the dataset names but the case lacks are
    logged: those targets are empty there)."""
    if case.layout == "openkbp":
        image = openkbp.read_ct(case.image)
    else:
        image = read_image(case.image)
    label = read_label(case, image)
    values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
    missing = sorted(dataset.values - values)
    if missing:
        log.info("case %s: label values %s of dataset %s do not occur (empty targets there)", case.id, missing, dataset.name)
    if dataset.values and not values & dataset.values:
        log.warning("case %s has no foreground for any target of dataset %s", case.id, dataset.name)
    return LabelledCase(dataset, case, image, label)


def load_split(datasets: list[DatasetSpec], split: str) -> list[LabelledCase]:
    """Every case of ``split``, read; refuses a training split that is empty or holds no foreground at all."""
    cases = [load_case(d, c) for d in datasets for c in d.cases if c.split == split]
    if split == "train":
        if not cases:
            raise PromptSegError("the dataset spec has no training cases")
        if not any(np.isin(sitk.GetArrayViewFromImage(c.label), list(c.dataset.values)).any() for c in cases):
            raise PromptSegError("the training cases hold no foreground for any named target")
    return cases


def ct_rule(cases: list[LabelledCase]) -> IntensityRule | None:
    """The shared CT intensity rule of the cases' CT images (None when there is none)."""
    images = [sitk.GetArrayViewFromImage(c.image) for c in cases if c.dataset.modality == "CT"]
    return IntensityRule.fit_many(images, "CT") if images else None


def prepare_case(case: LabelledCase, spacing_mm: float, rules: dict[str, IntensityRule] | None = None) -> PreparedCase:
    """One case resampled to the model grid (normalised by ``rules[modality]`` when given, else by the image's
    own statistics)."""
    model_input = prepare(case.image, case.dataset.modality, spacing_mm, (rules or {}).get(case.dataset.modality))
    on_grid = resample_to(case.label, model_input.grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    return PreparedCase(case.dataset, case.case, model_input, sitk.GetArrayFromImage(on_grid), case.label)


def prepare_split(datasets: list[DatasetSpec], split: str, spacing_mm: float,
                  rules: dict[str, IntensityRule] | None = None) -> list[PreparedCase]:
    """All cases of ``split`` read (see ``load_split``) and prepared on the model grid."""
    return [prepare_case(c, spacing_mm, rules) for c in load_split(datasets, split)]

"""Training packs: a dataset spec's training cases prepared once on the model grid, small enough to carry to a
lent GPU machine, and read there without SimpleITK, the dataset files or the text encoder.

:func:`write_pack` prepares each training case as ``promptseg train`` does (the model grid, the intensity rule
of the model it starts from or of the training CTs, the label resampled by nearest neighbour), keeps the box
that holds the body (CT) and stores its intensities in 256 steps over the rule's clipping window (5.8 HU for
CT's -990..500 HU, below a CT's noise), each volume compressed with LZMA: 158 OpenKBP CTs at 3 mm take about
40 MB. It also embeds every prompt the steps draw (each dataset's context paraphrases, its targets' and
those of the targets certainly absent from it) and keeps up to :data:`POINTS` voxels of each target of each
case for centring crops. :func:`read_pack` gives them back as arrays.

A pack is a folder: ``pack.json`` (what it holds) and ``arrays.npz`` (the volumes and the embedded prompts).
"""
from __future__ import annotations

import json
import lzma
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from PromptSegLib.errors import OutputError, PromptSegError
from PromptSegLib.preprocessing.intensity import IntensityRule

PACK_FORMAT = "promptseg-pack"
POINTS = 4096
"""At most this many voxels of each target per case are kept as crop centres (drawn at random, seed 0)."""
STEPS = 255
"""Intensity steps over an intensity rule's clipping window."""


@dataclass
class PackDataset:
    """A dataset of the pack: its modality, regions and targets (label values), the targets certainly absent
    from its images, and rows of :attr:`Pack.prompts` holding its context and target prompts' embeddings."""

    name: str
    modality: str
    regions: list[str]
    labels: dict[str, list[int]]
    absent: list[str]
    contexts: list[int]
    prompts: dict[str, list[int]]

    @property
    def targets(self) -> list[str]:
        return list(self.labels)


@dataclass
class PackCase:
    """A training case on the model grid, cropped to its body box: normalised intensities ``image`` (float32,
    ``(Z, Y, X)``), label values ``label`` (uint8, same shape), ``labelled`` ``(T,)`` 1 where the dataset's
    target ``T`` was delineated, and crop centres ``points[target]`` ``(N, 3)`` (voxel indices)."""

    id: str
    dataset: str
    image: np.ndarray
    label: np.ndarray
    labelled: np.ndarray
    points: dict[str, np.ndarray]


@dataclass
class Pack:
    """What a pack holds: ``prompts`` ``(N, D)`` float32 embeddings; ``intensity`` the shared rule per
    modality (CT) as a model's ``config.json`` stores it; ``init`` the model the pack was prepared for."""

    folder: Path
    spacing_mm: float
    text_encoder: str
    init: str | None
    spec: str
    intensity: dict[str, list[float]]
    datasets: dict[str, PackDataset]
    cases: list[PackCase]
    prompts: np.ndarray


def quantize(array: np.ndarray, rule: IntensityRule) -> np.ndarray:
    """uint8 steps over ``[rule.low, rule.high]`` of an array ``rule`` normalised (``rule.apply``)."""
    raw = np.asarray(array, np.float32) * rule.std + rule.mean
    return np.clip(np.rint((raw - rule.low) * (STEPS / (rule.high - rule.low))), 0, STEPS).astype(np.uint8)


def dequantize(steps: np.ndarray, rule: IntensityRule) -> np.ndarray:
    """The normalised float32 intensities of :func:`quantize`'s steps (within half a step of the original)."""
    raw = steps.astype(np.float32) * np.float32((rule.high - rule.low) / STEPS) + np.float32(rule.low)
    return (raw - np.float32(rule.mean)) / np.float32(rule.std)


def write_pack(spec: str | Path, output: str | Path, spacing_mm: float, init: str | None = None,
               text_encoder: str | None = None) -> Path:
    """Prepare the training cases of ``spec`` into a new pack folder ``output`` (see the module).

    Raises:
        OutputError: ``output`` exists and is not empty.
        PromptSegError: a label value over 255.
    """
    import SimpleITK as sitk

    from PromptSegLib.models.folder import load_model
    from PromptSegLib.train.config import TrainConfig
    from PromptSegLib.train.datasets import load_spec, load_split, prepare_case
    from PromptSegLib.train.training import PromptBank, intensity_rules
    from PromptSegLib.train.training import text_encoder as make_encoder

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise OutputError(f"{output} exists and is not empty: name a new folder for the pack")
    base = load_model(init) if init else None
    loaded = load_split(load_spec(spec), "train")
    rules = intensity_rules(base, loaded)
    encoder = make_encoder(TrainConfig(str(spec), str(output), text_encoder=text_encoder), base)
    arrays: dict[str, np.ndarray] = {}
    cases, prepared_datasets = [], {}
    rng = np.random.default_rng(0)
    for index, loaded_case in enumerate(loaded):
        case = prepare_case(loaded_case, spacing_mm, rules)
        dataset = case.dataset
        prepared_datasets.setdefault(dataset.name, case)
        rule = rules.get(dataset.modality) or IntensityRule.fit(sitk.GetArrayViewFromImage(case.input.original),
                                                                        dataset.modality)
        box = case.input.body or tuple(slice(0, n) for n in case.label.shape)
        label = case.label[box]
        if label.max(initial=0) > 255:
            raise PromptSegError(f"case {case.case.id}: label values over 255 cannot be packed")
        arrays[f"image_{index}"] = _compressed(quantize(case.input.array[box], rule))
        arrays[f"label_{index}"] = _compressed(label.astype(np.uint8))
        points = {}
        for target in dataset.targets:
            found = np.argwhere(np.isin(label, dataset.values_of(target)))
            if len(found):
                found = found[rng.permutation(len(found))[:POINTS]] if len(found) > POINTS else found
                arrays[f"points_{index}_{len(points)}"] = found.astype(np.int16)
                points[target] = len(points)
        cases.append({"id": case.case.id, "dataset": dataset.name, "shape": list(label.shape),
                      "rule": [rule.low, rule.high, rule.mean, rule.std],
                      "labelled": case.labelled(dataset.targets).tolist(), "points": points})
    bank = PromptBank(encoder, list(prepared_datasets.values()))
    texts: list[str] = []
    datasets = {}
    for name, case in prepared_datasets.items():
        dataset = case.dataset
        datasets[name] = {"modality": dataset.modality, "regions": list(dataset.regions),
                          "labels": {t: dataset.values_of(t) for t in dataset.targets},
                          "absent": bank.absent[name], "contexts": _rows(texts, bank.contexts[name]),
                          "prompts": {t: _rows(texts, bank.targets[(dataset.modality, t)])
                                      for t in dataset.targets + bank.absent[name]}}
    arrays["prompts"] = encoder.encode(texts).float().numpy()
    meta = {"format": PACK_FORMAT, "spacing_mm": spacing_mm, "text_encoder": encoder.encoder_id, "init": init,
            "spec": str(spec), "intensity": {m: [r.low, r.high, r.mean, r.std] for m, r in rules.items()},
            "datasets": datasets, "cases": cases, "texts": texts}
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    written = [output / "arrays.npz", output / "pack.json"]  # pack.json last: without it there is no pack
    try:
        with open(written[0].with_suffix(".partial"), "wb") as handle:
            np.savez(handle, **arrays)
        written[1].with_suffix(".partial").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for path in written:
            os.replace(path.with_suffix(".partial"), path)
    except BaseException:
        for path in written:
            for stale in (path, path.with_suffix(".partial")):
                stale.unlink(missing_ok=True)
        if created:
            output.rmdir()
        raise
    return output


def read_pack(folder: str | Path) -> Pack:
    """The pack in ``folder`` (see the module).

    Raises:
        PromptSegError: not a pack, or its files are unreadable.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "pack.json").read_text(encoding="utf-8"))
        if meta.get("format") != PACK_FORMAT:
            raise PromptSegError(f"{folder}/pack.json is not a {PACK_FORMAT} file")
        stored = np.load(folder / "arrays.npz")
        cases = []
        for index, case in enumerate(meta["cases"]):
            shape = tuple(case["shape"])
            steps = _decompressed(stored[f"image_{index}"], shape)
            cases.append(PackCase(case["id"], case["dataset"], dequantize(steps, IntensityRule(*case["rule"])),
                                  _decompressed(stored[f"label_{index}"], shape),
                                  np.asarray(case["labelled"], np.float32),
                                  {t: stored[f"points_{index}_{i}"].astype(np.int64) for t, i in case["points"].items()}))
        prompts = stored["prompts"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        raise PromptSegError(f"{folder} is not a complete training pack ({type(exc).__name__}: {exc}); "
                             "make it again with promptseg pack") from exc
    datasets = {name: PackDataset(name, d["modality"], d["regions"], d["labels"], d["absent"], d["contexts"],
                                  d["prompts"]) for name, d in meta["datasets"].items()}
    return Pack(folder, float(meta["spacing_mm"]), meta["text_encoder"], meta["init"], meta["spec"],
                meta["intensity"], datasets, cases, prompts)


def _compressed(array: np.ndarray) -> np.ndarray:
    return np.frombuffer(lzma.compress(np.ascontiguousarray(array).tobytes(), preset=6), np.uint8)


def _decompressed(stored: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(lzma.decompress(stored.tobytes()), np.uint8).reshape(shape).copy()


def _rows(texts: list[str], prompts: list[str]) -> list[int]:
    """Rows of ``prompts`` in ``texts``, appending those not there yet."""
    rows = []
    for prompt in prompts:
        if prompt not in texts:
            texts.append(prompt)
        rows.append(texts.index(prompt))
    return rows

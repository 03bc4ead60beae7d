"""Whole cohorts: one :class:`~PromptSegLib.workflows.segment_request.SegmentRequest` over many cases on Dask workers,
resumable, fault-isolated, with a table of results.

Output folder layout (``CASE`` is the case id):

- ``CASE.seg.nrrd`` and, when asked, ``CASE.rtstruct.dcm`` / ``CASE.dicomseg.dcm`` (DICOM series cases),
  ``CASE.png`` (overlay), ``CASE.boxes.json``;
- ``records/CASE.json``: written last, atomically, by the worker that ran the case: its status, one-line error,
  measures per target and files. A case is finished when its record says ``ok`` and lists files that exist,
  for the same request and model and an unchanged input; a failure is not retried unless the input changed,
  ``retry_failed`` is set or the failure was not the input's fault (a crash, out of memory);
- ``results.csv`` (and ``results.parquet`` with pyarrow): one row per case and target, rebuilt from the
  records at the end of every run, an interrupted one included.

Each worker process loads the model once and keeps it (:func:`worker_segmenter`), and runs one case at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from PromptSegLib.cohort.cases import Case, load_cases
from PromptSegLib.errors import OutputError, PromptSegError
from PromptSegLib.workflows.segment_request import OutputFiles, SegmentRequest

if TYPE_CHECKING:
    import pandas as pd
    import SimpleITK as sitk

    from PromptSegLib.cohort.engine import EngineOptions
    from PromptSegLib.segment.inference import Segmenter

RECORDS = "records"
COLUMNS = ["case_id", "target", "status", "error", "volume_ml", "components", "mean_inside", "max_inside", "unit",
           "dice", "seconds", "worker", "image", "segmentation"]


@dataclass(frozen=True)
class CohortSettings:
    """What every case shares; sent to the workers with each case (picklable).

    Attributes:
        request: the prompts and options.
        model: the model folder (resolved where the cohort starts; workers must see the same path).
        output: the output folder (workers write into it: shared storage on a cluster).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` on each worker.
        threads: torch CPU threads per worker.
        text_encoder: a local encoder folder instead of the model's own.
        extras: extra files per case, from ``rtstruct``, ``dicom_seg``, ``overlay``, ``boxes``.
        roi_names: RTSTRUCT ROI names (``rtstruct.ROI_NAMINGS``).
        signature: identifies request, model weights and extras; a record made under another is redone.
    """

    request: SegmentRequest
    model: str
    output: str
    device: str = "auto"
    threads: int = 1
    text_encoder: str | None = None
    extras: tuple[str, ...] = ()
    roi_names: str = "prompt"
    signature: str = field(default="", compare=False)

    @classmethod
    def create(cls, request: SegmentRequest, model: str | os.PathLike | None, output: str | os.PathLike,
               **options: Any) -> CohortSettings:
        """Settings with the model routed (as ``promptseg segment`` does) and resolved to a folder."""
        from PromptSegLib.models.catalogue import resolve_model
        from PromptSegLib.models.folder import WEIGHTS, sha256

        folder = resolve_model(request.choose_model(model))
        unknown = set(options.get("extras", ())) - {"rtstruct", "dicom_seg", "overlay", "boxes"}
        if unknown:
            raise PromptSegError(f"unknown extra outputs: {', '.join(sorted(unknown))}")
        settings = cls(request, str(folder), str(Path(output).resolve()), **options)
        identity = {"request": request.to_dict(), "weights": sha256(Path(folder) / WEIGHTS),
                    "text_encoder": settings.text_encoder, "extras": sorted(settings.extras),
                    **({"roi_names": settings.roi_names} if "rtstruct" in settings.extras else {})}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return cls(**{**settings.__dict__, "signature": digest})

    def files(self, case: Case) -> OutputFiles:
        """The case's output files; DICOM objects only for a DICOM series case."""
        out = Path(self.output)
        dicom = Path(case.image).is_dir()
        return OutputFiles(out / f"{case.case_id}.seg.nrrd",
                           out / f"{case.case_id}.png" if "overlay" in self.extras else None,
                           out / f"{case.case_id}.boxes.json" if "boxes" in self.extras else None,
                           out / f"{case.case_id}.rtstruct.dcm" if dicom and "rtstruct" in self.extras else None,
                           out / f"{case.case_id}.dicomseg.dcm" if dicom and "dicom_seg" in self.extras else None,
                           roi_names=self.roi_names)

    def target_names(self) -> list[str]:
        """The names result rows carry for the requested targets (vocabulary names, then free texts' names)."""
        from PromptSegLib.text.modality import canonical_modality
        from PromptSegLib.text.prompts import raw_target_query, target_query

        modality = canonical_modality(self.request.modality)
        return ([target_query(modality, t).name for t in self.request.targets]
                + [raw_target_query(t).name for t in self.request.target_texts])


_SEGMENTERS: dict[tuple, Segmenter] = {}
_CASE_LOCK = threading.Lock()


def worker_segmenter(settings: CohortSettings) -> Segmenter:
    """This process's segmenter for ``settings``: loaded on first use, then kept (one model per process)."""
    from PromptSegLib.segment.inference import Segmenter

    key = (settings.model, settings.device, settings.threads, settings.text_encoder)
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = Segmenter(settings.model, device=settings.device, threads=settings.threads,
                                     text_encoder=settings.text_encoder)
    return _SEGMENTERS[key]


def check_on_worker(settings: CohortSettings) -> str:
    """Load the model on a worker (kept for its cases) and check the request as ``segment`` does.
    Returns the model's name and version. Raises the request's ``PromptSegError``."""
    with _CASE_LOCK:
        segmenter = worker_segmenter(settings)
        settings.request.check(segmenter)
        return f"{segmenter.model.config.name} {segmenter.model.config.version}"


def one_line(exc: BaseException) -> str:
    """An exception as one line: PromptSeg's own reason as is, anything else prefixed with its type."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else "no message"
    return text if isinstance(exc, PromptSegError) else f"{type(exc).__name__}: {text}"


def measure(result, image: sitk.Image, modality: str, references: dict[str, np.ndarray]) -> list[dict]:
    """Per target: volume (mL), 26-connected components, image mean/max inside (HU for CT, SUV for PET) and
    Dice against ``references[target]`` when there is one (masks ``(Z, Y, X)`` on ``image``'s grid)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from PromptSegLib.metrics import dice
    from PromptSegLib.preprocessing.describe import UNITS, voxel_ml
    from PromptSegLib.text.modality import canonical_modality

    values = sitk.GetArrayViewFromImage(image)
    rows = []
    for index, query in enumerate(result.queries):
        mask = result.mask(index)
        inside = values[mask].astype(np.float64)
        reference = references.get(query.name)
        rows.append({"target": query.name, "volume_ml": round(float(mask.sum()) * voxel_ml(image), 3),
                     "components": int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]),
                     "mean_inside": round(float(inside.mean()), 3) if inside.size else None,
                     "max_inside": round(float(inside.max()), 3) if inside.size else None,
                     "unit": UNITS[canonical_modality(modality)],
                     "dice": round(dice(mask, reference), 4) if reference is not None else None})
    return rows


def reference_masks(case: Case, image: sitk.Image, targets: list[str]) -> dict[str, np.ndarray]:
    """The case's reference masks by target: segments named like a target (or a synonym), or the only segment
    of the file when one target is asked. Raises ``PromptSegError`` for an unreadable reference."""
    if not case.reference:
        return {}
    from PromptSegLib.export.segfile import read_segments
    from PromptSegLib.text.vocabulary import default_vocabulary

    segments = read_segments(case.reference, image)
    vocabulary = default_vocabulary()
    by_name = {}
    for name, mask in segments.items():
        try:
            by_name[vocabulary.target(name).name] = mask
        except PromptSegError:
            by_name[name] = mask
    if len(targets) == 1 and len(segments) == 1:
        return {targets[0]: next(iter(segments.values()))}
    return {t: by_name[t] for t in targets if t in by_name}


def process_case(case: Case, settings: CohortSettings) -> dict:
    """Run one case on a worker: read, segment, write its files, measure, then write its record (last).

    Never raises for the case's own faults: those make a ``failed`` record with the one-line error.
    """
    from PromptSegLib.io.outputs import all_or_nothing

    start = time.perf_counter()
    record: dict[str, Any] = {"case_id": case.case_id, "image": case.image, "input": case.input_signature(),
                              "settings": settings.signature, "worker": _worker_name()}
    with _CASE_LOCK:  # one case at a time per process: they share the model
        try:
            segmenter = worker_segmenter(settings)
            image, note = settings.request.read_image(case.image, case.series_uid)
            references = reference_masks(case, image, settings.target_names())
            result = settings.request.run(segmenter, image)
            with all_or_nothing():  # the case's files appear together, or none
                written, reports = settings.files(case).write(result, case.image, case.series_uid)
            record.update(status="ok", rows=measure(result, image, settings.request.modality, references),
                          files=[Path(p).name for p in written], warnings=[note] * bool(note) + [
                              f"{kind}: {w}" for kind, report in reports.items() for w in report.warnings])
        except Exception as exc:  # noqa: BLE001 - every fault of one case is recorded, the cohort goes on
            record.update(status="failed", error=one_line(exc), retry=not isinstance(exc, PromptSegError))
    record["seconds"] = round(time.perf_counter() - start, 2)
    write_record(settings.output, record)
    return record


def _worker_name() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:  # called outside a worker
        return "local"


def write_record(output: str | os.PathLike, record: dict) -> Path:
    """Write ``records/CASE.json`` atomically."""
    from PromptSegLib.io.outputs import atomic_path

    path = Path(output) / RECORDS / f"{record['case_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def read_record(output: str | os.PathLike, case_id: str) -> dict | None:
    path = Path(output) / RECORDS / f"{case_id}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(record: dict | None, case: Case, settings: CohortSettings, retry_failed: bool = False) -> bool:
    """True when a rerun has nothing to do for ``case`` (see the module's description)."""
    if record is None or record.get("settings") != settings.signature or record.get("input") != case.input_signature():
        return False
    if record.get("status") == "ok":
        return all((Path(settings.output) / name).exists() for name in record.get("files", []))
    return not retry_failed and not record.get("retry", True)


def results_table(records: Sequence[dict], targets: list[str]) -> pd.DataFrame:
    """One row per case and target (:data:`COLUMNS`); a failed case has a row per requested target."""
    import pandas as pd

    rows = []
    for record in records:
        common = {"case_id": record["case_id"], "status": record["status"], "error": record.get("error", ""),
                  "seconds": record.get("seconds"), "worker": record.get("worker"), "image": record["image"],
                  "segmentation": next((f for f in record.get("files", []) if f.endswith(".seg.nrrd")), "")}
        for row in record.get("rows") or [{"target": t} for t in targets]:
            rows.append({**common, **row})
    return pd.DataFrame(rows, columns=COLUMNS).astype({"components": "Int64"})


def write_results(output: str | os.PathLike, table: pd.DataFrame) -> list[Path]:
    """``results.csv`` and, when pyarrow is installed, ``results.parquet`` (each atomic)."""
    import importlib.util

    from PromptSegLib.io.outputs import atomic_path

    written = []
    with atomic_path(Path(output) / "results.csv") as tmp:
        table.to_csv(tmp, index=False)
    written.append(Path(output) / "results.csv")
    if importlib.util.find_spec("pyarrow") is not None:
        with atomic_path(Path(output) / "results.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        written.append(Path(output) / "results.parquet")
    return written


def remove_partial_files(output: str | os.PathLike) -> int:
    """Remove temporary files a killed worker left (``.NAME.partial-XXXX``); returns how many."""
    count = 0
    for folder in (Path(output), Path(output) / RECORDS):
        for path in folder.glob(".*.partial-*"):
            path.unlink(missing_ok=True)
            count += 1
    return count


def run_cohort(cases: Sequence[Case] | str | os.PathLike, output: str | os.PathLike, request: SegmentRequest, *,
               model: str | os.PathLike | None = None, engine: EngineOptions | None = None,
               device: str = "auto", threads: int = 1, text_encoder: str | None = None,
               extras: Sequence[str] = (), roi_names: str = "prompt", retry_failed: bool = False,
               pattern: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Segment every case of a cohort on Dask workers and return the results table (also written).

    Args:
        cases: cases, a folder tree or a CSV case list (see :mod:`PromptSegLib.cohort.cases`).
        output: output folder (created).
        request: modality, region, targets and options, as for ``promptseg segment``.
        model: model folder or name; default: routed like ``segment`` (``catalogue.route_model``).
        engine: where to run (default: a local cluster of worker processes on this machine).
        device, threads, text_encoder: per worker, as for ``segment`` (``threads``: torch threads each).
        extras: also write ``rtstruct``, ``dicom_seg`` (DICOM cases), ``overlay``, ``boxes`` per case.
        roi_names: RTSTRUCT ROI names, ``prompt`` or ``tg263`` (``rtstruct.ROI_NAMINGS``).
        retry_failed: run again cases that failed on their input.
        pattern: with a folder tree: which relative paths are cases (shell pattern).
        progress: show a progress bar (done, failed, remaining, ETA) and the dashboard address on stderr.

    Returns:
        The table written to ``results.csv`` (:data:`COLUMNS`), every case of the cohort, skipped ones too.

    Raises:
        PromptSegError: no cases, an unwritable output, a request the model cannot serve, no cluster.
        KeyboardInterrupt: after finished cases are kept, running ones stopped and ``results.csv`` written.
    """
    from PromptSegLib.cohort.engine import EngineOptions, open_client
    from PromptSegLib.cohort.progress import CohortProgress

    cases = list(cases) if not isinstance(cases, (str, os.PathLike)) else load_cases(cases, pattern)
    if not cases:
        raise PromptSegError("the cohort has no case")
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, a missing or read-only parent
        raise OutputError(f"cannot make the cohort's output folder {output}: {exc.strerror or exc}") from exc
    settings = CohortSettings.create(request, model, output, device=device, threads=threads,
                                     text_encoder=text_encoder, extras=tuple(extras), roi_names=roi_names)
    targets = settings.target_names()
    remove_partial_files(output)
    records = {c.case_id: read_record(output, c.case_id) for c in cases}
    pending = [c for c in cases if not is_finished(records[c.case_id], c, settings, retry_failed)]
    report = CohortProgress(len(cases), len(pending), enabled=progress)
    try:
        if pending:
            with open_client(engine or EngineOptions(), threads) as (client, dashboard):
                report.started(dashboard, client)
                report.model(client.submit(check_on_worker, settings, pure=False).result())
                _run_pending(client, pending, settings, records, report)
    finally:
        report.close()
        remove_partial_files(output)
        # the record files are the truth: a worker may have written one the interrupted loop never received
        records = {c.case_id: read_record(output, c.case_id) for c in cases}
        table = results_table([records[c.case_id] for c in cases if records[c.case_id] is not None], targets)
        write_results(output, table)
    return table


def _run_pending(client, pending: list[Case], settings: CohortSettings, records: dict[str, dict | None],
                 report) -> None:
    """Submit every pending case, record each as it completes; on Ctrl-C cancel what has not finished."""
    from distributed import as_completed

    futures = {client.submit(process_case, case, settings, key=f"promptseg-case-{case.case_id}-{settings.signature}",
                             pure=False): case for case in pending}
    try:
        for future in as_completed(futures):
            case = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died (killed, out of memory): record, go on
                record = {"case_id": case.case_id, "image": case.image, "input": case.input_signature(),
                          "settings": settings.signature, "status": "failed", "retry": True,
                          "error": f"worker lost while running the case ({one_line(exc)})"}
                write_record(settings.output, record)
            records[case.case_id] = record
            report.case_done(record)
    except BaseException:
        client.cancel(list(futures))
        raise

"""``promptseg cohort``: one request over a folder tree or a CSV of cases, on Dask workers
(:mod:`PromptSegLib.cohort.run`). Registered into the main parser by :func:`add_subcommands`.

Exit status: 0 when every case is segmented, 1 when some failed (each named in ``results.csv`` with its error),
2 for an error that stops the whole cohort, 130 on Ctrl-C (finished cases are kept: rerun to continue).
"""
from __future__ import annotations

import argparse
import sys

from PromptSegLib.cli.checks import add_roi_names_argument
from PromptSegLib.workflows.segment_request import add_request_arguments


def cmd_cohort(args: argparse.Namespace) -> int:
    from PromptSegLib.cohort.engine import EngineOptions
    from PromptSegLib.cohort.run import run_cohort
    from PromptSegLib.workflows.segment_request import SegmentRequest

    engine = EngineOptions(args.scheduler, "slurm" if args.slurm else "pbs" if args.pbs else None, args.workers,
                           args.job_cores, args.job_memory, args.queue, args.account, args.walltime, args.interface,
                           tuple(args.job_directive or ()))
    extras = [name for name in ("rtstruct", "dicom_seg", "overlay", "boxes") if getattr(args, name)]
    try:
        table = run_cohort(args.input, args.output, SegmentRequest.from_args(args), model=args.model, engine=engine,
                           device=args.device, threads=args.threads or 1, text_encoder=args.text_encoder,
                           extras=extras, roi_names=args.roi_names, retry_failed=args.retry_failed,
                           pattern=args.pattern, progress=not args.quiet)
    except KeyboardInterrupt:
        print("promptseg: interrupted: finished cases are kept and listed in results.csv; run the same command "
              "again to continue", file=sys.stderr)
        return 130
    cases = table.drop_duplicates("case_id")
    failed = cases[cases.status != "ok"]
    print(f"wrote {args.output}/results.csv: {len(cases)} cases, {len(cases) - len(failed)} segmented, "
          f"{len(failed)} failed")
    for row in failed.itertuples():
        print(f"failed {row.case_id}: {row.error}")
    return 1 if len(failed) else 0


def add_subcommands(sub) -> None:
    """Register ``cohort`` on the main parser's subparsers."""
    co = sub.add_parser("cohort", help="segment and measure every case of a folder tree or a CSV case list, "
                        "resumable, on Dask workers (this machine, a Dask scheduler, Slurm or PBS)")
    co.add_argument("input", help="a folder tree (each NIfTI/NRRD/MHA file or DICOM series is a case) or a CSV "
                    "with an 'image' column and optional 'case_id', 'series_uid', 'reference' (mask for Dice)")
    co.add_argument("-o", "--output", required=True, help="output folder: CASE.seg.nrrd per case, results.csv")
    add_request_arguments(co)
    co.add_argument("--pattern", help="folder tree: only relative paths matching this shell pattern, "
                    "e.g. '*/CT_image.nii.gz'")
    co.add_argument("--rtstruct", action="store_true", help="also write CASE.rtstruct.dcm for DICOM series cases")
    add_roi_names_argument(co)
    co.add_argument("--dicom-seg", action="store_true", help="also write CASE.dicomseg.dcm for DICOM series cases")
    co.add_argument("--overlay", action="store_true", help="also write a picture CASE.png per case")
    co.add_argument("--boxes", action="store_true", help="also write CASE.boxes.json (connected components)")
    co.add_argument("--retry-failed", action="store_true",
                    help="run again the cases that failed on their input (by default only changed inputs and "
                         "crashed cases are run again)")
    where = co.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this running Dask scheduler's workers")
    where.add_argument("--slurm", action="store_true", help="start workers as Slurm jobs (dask-jobqueue)")
    where.add_argument("--pbs", action="store_true", help="start workers as PBS jobs (dask-jobqueue)")
    co.add_argument("--workers", type=int, help="worker processes on this machine (default: cores / --threads), "
                    "or with --slurm/--pbs the number of jobs (default 1)")
    co.add_argument("--job-cores", type=int, help="cores per batch job (it runs cores / --threads workers)")
    co.add_argument("--job-memory", help="memory per batch job, e.g. 16GB")
    co.add_argument("--queue", help="Slurm partition or PBS queue")
    co.add_argument("--account", help="batch account to charge")
    co.add_argument("--walltime", help="batch job time limit, HH:MM:SS")
    co.add_argument("--interface", help="network interface of the scheduler and workers on a cluster, e.g. ib0")
    co.add_argument("--job-directive", action="append",
                    help="extra job script directive, e.g. '--gres=gpu:1' (repeatable)")
    co.add_argument("-q", "--quiet", action="store_true", help="no progress")
    co.set_defaults(func=cmd_cohort)

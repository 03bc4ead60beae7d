"""Cohort throughput: ``promptseg cohort`` on 1, 2 and 4 local Dask workers against the shell loop of
``promptseg segment`` calls it replaces, in the same run, on a 20-case cohort of real CTs.

The cohort: the soft-tissue-sarcoma CTs STS_001..STS_020 of ../shared/data (about 200 x 200 x 60 voxels,
cropped around the tumour), target "gross tumor volume", region extremity (routed to the bundled GTV model),
with each patient's manual GTV as the reference for Dice. Each run starts from an empty output folder and is
timed end to end (the cluster's start and every worker's model loading included; the loop pays Python's start
and the model's loading for every case). Each worker uses 1 torch thread; the loop uses torch's default.

Prints cases per minute for each run and its ratio to the shell loop, checks that every run segmented every
case with the same masks, and writes the figures as JSON.
Usage: python Testing/benchmarks/bench_cohort.py [--workers 1 2 4] [--loop-cases 20] [-o bench_cohort.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import SHARED

from PromptSegLib.cpus import usable_cores

STS = SHARED / "sts_pet_ct_mr" / "nifti"
REQUEST = ["--modality", "CT", "--region", "extremity", "--target", "gross tumor volume"]


def case_list(folder: Path, count: int = 20) -> Path:
    """A CSV of the first ``count`` sarcoma CTs with their GTV masks."""
    path = folder / "cases.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "reference"])
        for index in range(1, count + 1):
            patient = STS / f"STS_{index:03d}"
            writer.writerow([patient.name, patient / "CT_image.nii.gz", patient / "CT_mask.nii.gz"])
    return path


def shell_loop(cases: Path, output: Path, count: int) -> float:
    """Seconds for ``promptseg segment`` once per case, as a bash ``for`` loop."""
    promptseg = Path(sys.executable).with_name("promptseg")
    with open(cases) as handle:
        rows = list(csv.DictReader(handle))[:count]
    script = "set -e\n" + "".join(
        f"{promptseg} segment {row['image']} {' '.join(repr(a) for a in REQUEST)} -o {output}/{row['case_id']}"
        ".seg.nrrd -q >/dev/null\n" for row in rows)
    output.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True)
    return time.perf_counter() - start


def cohort(cases: Path, output: Path, workers: int) -> float:
    """Seconds for ``promptseg cohort`` with ``workers`` local worker processes."""
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "PromptSegLib", "cohort", str(cases), "-o", str(output), *REQUEST,
                          "--workers", str(workers), "--threads", "1", "-q"], check=False, capture_output=True,
                         text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"cohort with {workers} workers failed:\n{run.stdout}\n{run.stderr}")
    return seconds


def masks(folder: Path) -> dict[str, bytes]:
    import slicerio

    return {p.name: slicerio.read_segmentation(str(p))["voxels"].tobytes() for p in sorted(folder.glob("*.seg.nrrd"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--loop-cases", type=int, default=20, help="cases timed in the shell loop (default all 20)")
    parser.add_argument("-o", "--output", default="bench_cohort.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    try:
        cases = case_list(work)
        figures: dict = {"cases": 20, "cores": usable_cores(), "runs": {}}
        loop_seconds = shell_loop(cases, work / "loop", args.loop_cases)
        loop_rate = args.loop_cases / loop_seconds * 60
        figures["shell_loop"] = {"cases": args.loop_cases, "seconds": round(loop_seconds, 1),
                                 "cases_per_minute": round(loop_rate, 2)}
        print(f"shell loop of promptseg segment: {args.loop_cases} cases in {loop_seconds:.1f} s, "
              f"{loop_rate:.2f} cases/min")
        reference_masks = None
        for workers in args.workers:
            output = work / f"cohort{workers}"
            seconds = cohort(cases, output, workers)
            rate = 20 / seconds * 60
            import pandas as pd

            table = pd.read_csv(output / "results.csv")
            assert (table.status == "ok").all() and len(table) == 20, table
            current = masks(output)
            if reference_masks is None:
                reference_masks = current
            figures["runs"][workers] = {"seconds": round(seconds, 1), "cases_per_minute": round(rate, 2),
                                        "ratio_to_shell_loop": round(rate / loop_rate, 2),
                                        "same_masks_as_first_run": current == reference_masks,
                                        "median_dice": round(float(table.dice.median()), 3)}
            print(f"cohort, {workers} worker(s): 20 cases in {seconds:.1f} s, {rate:.2f} cases/min, "
                  f"{rate / loop_rate:.2f} x the shell loop; masks identical to the first run: "
                  f"{current == reference_masks}; median Dice {table.dice.median():.3f}")
        loop_masks = masks(work / "loop")
        figures["loop_masks_equal_cohort"] = all(loop_masks[k] == reference_masks[k] for k in loop_masks)
        print(f"shell loop masks equal the cohort's: {figures['loop_masks_equal_cohort']}")
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.output}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

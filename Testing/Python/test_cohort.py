"""``promptseg cohort``: a 20-case cohort of good and bad inputs on Dask workers (an embedded local cluster,
then a real ``dask-scheduler`` with two ``dask-worker`` processes on 127.0.0.1), reruns, Ctrl-C, case discovery,
measures and the Slurm job script. The tiny untrained model is used: the tests check mechanics, not quality.
"""
from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
from test_dicom_export import write_ct_series

from PromptSegLib.cli.main import main
from PromptSegLib.cohort.cases import find_cases, read_case_list
from PromptSegLib.cohort.engine import EngineOptions, jobqueue_cluster
from PromptSegLib.cohort.run import measure, run_cohort
from PromptSegLib.errors import PromptSegError
from PromptSegLib.segment.inference import SegmentationResult
from PromptSegLib.workflows.segment_request import SegmentRequest

REQUEST = SegmentRequest("CT", "thorax", ("left lung", "liver"), threshold=0.01)
"""Threshold 0.01: the untrained model's every voxel is in both targets, so the measures are known."""
BAD = {  # case id -> what its error must say
    "missing": "no such file", "damaged": "damaged|cannot read", "constant": "constant", "flat2d": "2D|slice",
    "nanvoxel": "NaN", "gap": r"missing 1 slice", "badref": "no such segmentation file"}


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory, chest_ct, chest_ct_path) -> Path:
    """20 cases: 13 good (NIfTI, NRRD, MHA crops of the real chest CT, one a DICOM series; eight with the
    chest's segmentation as reference) and 7 bad (see ``BAD``). Crops of 48 x 48 x 12 voxels: one window each."""
    folder = tmp_path_factory.mktemp("cohort_inputs")
    small = chest_ct[40:88, 40:88, :]  # 48 x 48 x 34
    rows = []
    for index in range(12):
        suffix = (".nii.gz", ".nrrd", ".mha")[index % 3]
        path = folder / f"chest{index:02d}{suffix}"
        sitk.WriteImage(small[:, :, index:index + 12], str(path), True)
        reference = chest_ct_path.parent / "Segmentation.seg.nrrd" if index < 8 else ""
        rows.append({"case_id": f"good{index:02d}", "image": path.name, "reference": reference})
    write_ct_series(small, folder / "dicom")
    rows.append({"case_id": "good_dicom", "image": "dicom"})
    rows.append({"case_id": "missing", "image": "absent.nii.gz"})
    (folder / "damaged.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    rows.append({"case_id": "damaged", "image": "damaged.nii.gz"})
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkInt16), str(folder / "constant.nrrd"))
    rows.append({"case_id": "constant", "image": "constant.nrrd"})
    sitk.WriteImage(small[:, :, 10], str(folder / "flat2d.nii.gz"))
    rows.append({"case_id": "flat2d", "image": "flat2d.nii.gz"})
    nan = sitk.GetArrayFromImage(small).astype(np.float32)
    nan[5, 5, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(folder / "nan.nii.gz"))
    rows.append({"case_id": "nanvoxel", "image": "nan.nii.gz"})
    write_ct_series(small, folder / "gap", skip=(12,))
    rows.append({"case_id": "gap", "image": "gap"})
    rows.append({"case_id": "badref", "image": "chest00.nii.gz", "reference": "absent.seg.nrrd"})
    with open(folder / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["case_id", "image", "reference"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "cases.csv"


@pytest.fixture(scope="module")
def embedded_run(cohort_csv, tiny_model_folder, tmp_path_factory):
    """The cohort through the Python API on an embedded local cluster of two workers."""
    output = tmp_path_factory.mktemp("cohort_embedded")
    table = run_cohort(cohort_csv, output, REQUEST, model=tiny_model_folder, engine=EngineOptions(workers=2),
                       device="cpu", threads=1, extras=["rtstruct", "boxes"], roi_names="tg263", progress=False)
    return output, table


def cli_args(cohort_csv, output, tiny_model_folder, *more: str) -> list[str]:
    return ["cohort", str(cohort_csv), "-o", str(output), "--modality", "CT", "--region", "thorax",
            "--target", "left lung", "--target", "liver", "--model", str(tiny_model_folder), "--device", "cpu",
            "--threads", "1", "--threshold", "0.01", "--rtstruct", "--roi-names", "tg263", "--boxes", *more]


def voxels(path: Path) -> np.ndarray:
    return slicerio.read_segmentation(str(path))["voxels"]


def test_good_cases_segmented_bad_ones_named_with_their_error(embedded_run, cohort_csv):
    output, table = embedded_run
    written = pd.read_csv(output / "results.csv", keep_default_na=False)
    assert written[["case_id", "target", "status", "error"]].equals(table[["case_id", "target", "status", "error"]])
    assert len(table) == 40 and set(table.target) == {"left lung", "liver"}  # a row per case and target
    cases = table.drop_duplicates("case_id").set_index("case_id")
    good = [c for c in cases.index if c not in BAD]
    assert len(good) == 13 and (cases.loc[good, "status"] == "ok").all()
    for case_id, pattern in BAD.items():
        assert cases.loc[case_id, "status"] == "failed"
        error = cases.loc[case_id, "error"]
        assert "\n" not in error and pd.Series([error]).str.contains(pattern).all(), (case_id, error)
    for case_id in good:
        segmentation = slicerio.read_segmentation(str(output / f"{case_id}.seg.nrrd"))
        assert [s["name"] for s in segmentation["segments"]] == ["left lung", "liver"]
    assert (output / "good_dicom.rtstruct.dcm").is_file() and not (output / "good00.rtstruct.dcm").exists()
    rois = pydicom.dcmread(output / "good_dicom.rtstruct.dcm").StructureSetROISequence
    assert [roi.ROIName for roi in rois] == ["Lung_L", "Liver"]  # roi_names="tg263", as planning systems expect
    lung = table[(table.target == "left lung") & table.case_id.isin([f"good{i:02d}" for i in range(8)])]
    assert lung.dice.between(0.01, 0.99).all() and table[table.target == "liver"].dice.isna().all()
    ok = table[table.status == "ok"].set_index(["case_id", "target"])
    assert (ok.unit == "HU").all() and (ok.seconds > 0).all() and (ok.components == 1).all()
    image = sitk.ReadImage(str(cohort_csv.parent / "chest01.nrrd"))  # whole crop inside at threshold 0.01
    hu = sitk.GetArrayFromImage(image)
    assert ok.loc[("good01", "liver"), "volume_ml"] == pytest.approx(hu.size * np.prod(image.GetSpacing()) / 1000)
    assert ok.loc[("good01", "liver"), "mean_inside"] == pytest.approx(hu.mean(), abs=1e-3)
    assert ok.loc[("good01", "liver"), "max_inside"] == hu.max()
    assert pd.read_parquet(output / "results.parquet").case_id.tolist() == table.case_id.tolist()
    assert not list(output.rglob(".*partial*"))


def test_rerun_does_nothing(embedded_run, cohort_csv, tiny_model_folder, monkeypatch, capsys):
    output, table = embedded_run
    before = {p.name: p.stat().st_mtime_ns for p in output.rglob("*") if p.name != "results.csv"
              and p.name != "results.parquet"}

    def no_cluster(*args, **kwargs):
        raise AssertionError("a rerun of a finished cohort started a cluster")

    monkeypatch.setattr("PromptSegLib.cohort.engine.open_client", no_cluster)
    assert main(cli_args(cohort_csv, output, tiny_model_folder)) == 1  # failures remain failures
    captured = capsys.readouterr()
    assert "20 of 20 cases finished earlier: skipped" in captured.err
    assert "13 segmented, 7 failed" in captured.out and "failed gap: " in captured.out
    assert {p.name: p.stat().st_mtime_ns for p in output.rglob("*") if p.name in before} == before
    rerun = pd.read_csv(output / "results.csv")
    assert rerun.case_id.tolist() == table.case_id.tolist() and rerun.status.tolist() == table.status.tolist()


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.fixture
def dask_cluster():
    """A real ``dask-scheduler`` and two ``dask-worker`` processes, on 127.0.0.1 only, without dashboards."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", address.rsplit(":", 1)[1], "--no-dashboard"], env=environment,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for name in ("w1", "w2"):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nthreads",
                 "1", "--name", name, "--no-dashboard"], env=environment,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def test_real_scheduler_and_two_workers_give_identical_masks(embedded_run, cohort_csv, tiny_model_folder,
                                                             dask_cluster, tmp_path, capsys):
    output, table = embedded_run
    assert main(cli_args(cohort_csv, tmp_path, tiny_model_folder, "--scheduler", dask_cluster)) == 1
    remote = pd.read_csv(tmp_path / "results.csv").astype({"components": "Int64"})
    assert set(remote.worker.astype(str)) <= {"w1", "w2"}
    columns = ["case_id", "target", "status", "volume_ml", "components", "dice"]
    assert remote[columns].astype(str).equals(table[columns].astype(str))
    assert remote.error.fillna("").tolist() == table.error.tolist()
    for case_id in table[table.status == "ok"].case_id.unique():
        assert np.array_equal(voxels(tmp_path / f"{case_id}.seg.nrrd"), voxels(output / f"{case_id}.seg.nrrd"))
        # the components' mean and max probabilities too: the same numbers, not only the same masks
        assert (tmp_path / f"{case_id}.boxes.json").read_text() == (output / f"{case_id}.boxes.json").read_text()


def test_ctrl_c_keeps_finished_cases_and_leaves_no_partial_file(cohort_csv, tiny_model_folder, tmp_path):
    cases = tmp_path / "six.csv"
    with open(cohort_csv) as source, open(cases, "w") as target:
        lines = source.readlines()
        target.writelines(lines[:7])  # header and six good cases
    for line in lines[1:7]:  # the images beside the new case list
        image = line.split(",")[1]
        (tmp_path / image).symlink_to(cohort_csv.parent / image)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "PromptSegLib", *cli_args(cases, output, tiny_model_folder, "--workers", "1")]
    command.remove("--rtstruct")
    command.remove("--boxes")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((output / "records").glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "finished cases are kept" in err
    assert not [p for p in output.rglob("*") if "partial" in p.name]
    finished = sorted(p.stem for p in (output / "records").glob("*.json"))
    assert 1 <= len(finished) < 6
    for case_id in finished:
        assert voxels(output / f"{case_id}.seg.nrrd").size
    # the table lists every record on disk when it was written, those the interrupted loop never received too
    listed = sorted(pd.read_csv(output / "results.csv").case_id.unique())
    assert listed and set(listed) <= set(finished)

    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} of 6 cases finished earlier: skipped" in rerun.stderr
    assert (pd.read_csv(output / "results.csv").status == "ok").all()


def test_cases_found_in_a_folder_tree(tmp_path, chest_ct):
    small = chest_ct[::4, ::4, :]
    (tmp_path / "p1").mkdir()
    sitk.WriteImage(small, str(tmp_path / "p1" / "ct.nii.gz"))
    sitk.WriteImage(small, str(tmp_path / "p1" / "ct.nrrd"))  # same stem: ids made unique
    (tmp_path / "p1" / "ct.seg.nrrd").write_bytes(b"")  # a segmentation, not a case
    (tmp_path / "p1" / "notes.txt").write_text("not an image")
    write_ct_series(small, tmp_path / "p2" / "series")
    (tmp_path / "p3").mkdir()
    (tmp_path / "p3" / "IM1.dcm").write_bytes(b"not DICOM")  # a case that will fail with its reason
    sitk.WriteImage(small, str(tmp_path / "p1" / "ct-2.mha"))  # an id a repeat would otherwise take
    write_ct_series(small, tmp_path / "p4")
    first = sorted((tmp_path / "p4").iterdir())[0]
    first.write_bytes(first.read_bytes()[:400])  # one damaged slice: this case fails, not the whole cohort
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["p1_ct", "p1_ct-2", "p1_ct-3", "p2_series", "p3", "p4"]
    assert {Path(c.image).name for c in cases[:3]} == {"ct.nii.gz", "ct.nrrd", "ct-2.mha"}
    assert Path(cases[3].image) == tmp_path / "p2" / "series" and cases[3].series_uid is None
    assert [c.case_id for c in find_cases(tmp_path, "*/ct.nii.gz")] == ["p1_ct"]
    with pytest.raises(PromptSegError, match="no image file or DICOM series"):
        find_cases(tmp_path, "*.hdr")


def test_an_output_that_cannot_be_a_folder_is_one_line(cohort_csv, tiny_model_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for output in (tmp_path / "file", tmp_path / "file" / "out"):
        assert main(cli_args(cohort_csv, output, tiny_model_folder)) == 2
        assert "cannot make the cohort's output folder" in capsys.readouterr().err


def test_case_list_paths_and_errors(tmp_path):
    (tmp_path / "list.csv").write_text("image,reference,case_id\nimgs/a b.nii.gz,refs/a.seg.nrrd,\n"
                                       "/abs/x.nrrd,,X 1\n")
    x, a = read_case_list(tmp_path / "list.csv")  # sorted by id
    assert (a.case_id, a.image, a.reference) == ("a_b", str(tmp_path / "imgs" / "a b.nii.gz"),
                                                 str(tmp_path / "refs" / "a.seg.nrrd"))
    assert (x.case_id, x.image, x.reference) == ("X_1", "/abs/x.nrrd", None)
    (tmp_path / "twice.csv").write_text("case_id,image\nA,a.nii\nA,b.nii\n")
    with pytest.raises(PromptSegError, match="repeats case ids: A"):
        read_case_list(tmp_path / "twice.csv")
    (tmp_path / "noimage.csv").write_text("path\na.nii\n")
    with pytest.raises(PromptSegError, match="'image' column"):
        read_case_list(tmp_path / "noimage.csv")


def test_measures_of_real_segments(chest_ct, chest_segmentation):
    from scipy import ndimage

    from PromptSegLib.text.prompts import target_query

    from conftest import segment_mask

    names = ["left lung", "ribs"]
    masks = [segment_mask(chest_segmentation, n) for n in names]
    result = SegmentationResult([target_query("CT", n) for n in names], "", np.stack(masks).astype(np.float32),
                                chest_ct, 0.5)
    rows = measure(result, chest_ct, "CT", {"left lung": masks[0]})
    voxel_ml = float(np.prod(chest_ct.GetSpacing())) / 1000
    hu = sitk.GetArrayFromImage(chest_ct)
    assert rows[0]["volume_ml"] == pytest.approx(masks[0].sum() * voxel_ml, abs=1e-3)
    assert rows[0]["mean_inside"] < -500 < hu[masks[1]].mean() and rows[0]["dice"] == 1.0
    assert rows[1]["components"] == ndimage.label(masks[1], np.ones((3, 3, 3)))[1] > 1
    assert rows[1]["max_inside"] == hu[masks[1]].max() and rows[1]["dice"] is None


def test_slurm_job_script():
    import dask
    import dask_jobqueue  # noqa: F401 - its defaults first, so that the override below is undone alone

    options = EngineOptions(jobqueue="slurm", job_cores=8, job_memory="32GB", queue="gpu", account="rt",
                            walltime="02:00:00", interface="lo", job_directives=("--gres=gpu:1",))
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": "127.0.0.1:0"}}):
        cluster = jobqueue_cluster(options, threads=2)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A rt", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00",
                 "#SBATCH --gres=gpu:1", "--nworkers 4", "--nthreads 2"):
        assert line in script, script
    with pytest.raises(PromptSegError, match="unknown batch system"):
        jobqueue_cluster(EngineOptions(jobqueue="lsf"), threads=1)

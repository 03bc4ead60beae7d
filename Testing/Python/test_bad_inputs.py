"""Bad and awkward inputs through the real command line: each ends with exit 2, one ``promptseg: error:`` line,
no traceback, nothing written and nothing deleted; valid awkward inputs give the right result.

Cases run in-process (``PromptSegLib.cli.main.main``, output captured at the file-descriptor level so that what
native readers print counts too) except the signals, which need a process of their own. The model is the tiny
random one of ``conftest.py``: these tests are about refusals and files, not masks.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from PromptSegLib.cli.main import main
from PromptSegLib.io.imageio import read_image
from PromptSegLib.models.folder import CONFIG, replace_file

from conftest import REPO, SHARED, needs_shared, zip_model

DICOM_CT = SHARED / "totalsegmentator_example" / "ct_dicom_series" / "dicom"  # 20 slices, 2 mm apart
PET_DICOM = SHARED / "sts_pet_ct_mr" / "dicom_example" / "STS_002" / "PET" / "image"
PET_SUV_NIFTI = SHARED / "sts_pet_ct_mr" / "nifti" / "STS_002" / "PET_image.nii.gz"
PROGNOSIS_MODEL = REPO / "PromptSegLib" / "models" / "promptseg-prognosis-hecktor"


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 of the content ('' for folders)."""
    return {str(p.relative_to(root)): "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def fails_cleanly(argv: list[str], capfd, reason: str) -> str:
    """Run the CLI in-process; assert exit 2, nothing on stdout, and one ``promptseg: error:`` line on stderr
    holding ``reason`` (argument errors leave through ``SystemExit(2)``, as argparse does)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("promptseg: error: "), lines
    assert reason in lines[0], lines[0]
    assert captured.out == "", captured.out
    return lines[0]


# --- a model's name is a name -------------------------------------------------------------------------------------

def renamed_model(tiny_model_folder: Path, where: Path, name: str) -> Path:
    """A copy of the tiny model whose ``config.json`` (and checksum manifest) says ``name``."""
    folder = shutil.copytree(tiny_model_folder, where)
    config = json.loads((folder / CONFIG).read_text())
    replace_file(folder, CONFIG, json.dumps({**config, "name": name}, indent=2) + "\n")
    return folder


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """``$PROMPTSEG_HOME`` in a fresh folder, with a victim folder beside it and an unrelated folder in the cache."""
    home = tmp_path / "home"
    (home / "models" / "mine").mkdir(parents=True)
    (home / "models" / "mine" / "notes.txt").write_text("not a model")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep me")
    monkeypatch.setenv("PROMPTSEG_HOME", str(home))
    return home


@pytest.mark.parametrize("name", ["../../x", "../x", "..", "a/b", "/tmp/x", "x\\y", ".hidden", "", "a b", "x..y",
                                  "mine/../../../x"])
@pytest.mark.parametrize("packed", [False, True])
def test_import_refuses_a_model_whose_name_is_a_path(tiny_model_folder, tmp_path, home, capfd, name, packed):
    source = renamed_model(tiny_model_folder, tmp_path / "src" / "evil", name)
    if packed:
        source = zip_model(source, tmp_path / "evil.zip")
    before = tree(tmp_path)
    fails_cleanly(["models", "--import", str(source)], capfd, "is not a plain name")
    assert tree(tmp_path) == before  # nothing written or deleted anywhere, in the cache or outside it


def test_import_never_replaces_a_folder_that_is_not_the_same_model(tiny_model_folder, tmp_path, home, capfd):
    source = renamed_model(tiny_model_folder, tmp_path / "src" / "mine", "mine")
    before = tree(tmp_path)
    fails_cleanly(["models", "--import", str(source)], capfd, "is not an installed copy of model 'mine'")
    assert tree(tmp_path) == before
    (home / "models" / "link").symlink_to(tmp_path / "x")
    source = renamed_model(tiny_model_folder, tmp_path / "src" / "link", "link")
    before = tree(tmp_path)
    fails_cleanly(["models", "--import", str(source)], capfd, "is not an installed copy of model 'link'")
    assert tree(tmp_path) == before and (tmp_path / "x" / "precious.txt").read_text() == "keep me"


def test_import_replaces_an_older_copy_of_the_same_model_and_nothing_else(tiny_model_folder, tmp_path, home, capfd):
    assert main(["models", "--import", str(tiny_model_folder)]) == 0
    installed = home / "models" / "tiny-untrained"
    (installed / "README.md").write_text("an older card")  # the older copy differs
    assert main(["models", "--import", str(zip_model(tiny_model_folder, tmp_path / "tiny.zip"))]) == 0
    assert (installed / "README.md").read_text() == (tiny_model_folder / "README.md").read_text()
    assert sorted(p.name for p in (home / "models").iterdir()) == ["mine", "tiny-untrained"]  # no leftovers
    assert (home / "models" / "mine" / "notes.txt").read_text() == "not a model"
    assert "installed" in capfd.readouterr().out


def test_download_refuses_a_catalogue_name_that_is_a_path(tiny_model_folder, tmp_path, home, capfd):
    from PromptSegLib.models.catalogue import catalogue_entry

    source = renamed_model(tiny_model_folder, tmp_path / "src" / "evil", "../x")
    archive = zip_model(source, tmp_path / "evil.zip")
    (home / "catalogue.json").write_text(json.dumps([{**catalogue_entry(tiny_model_folder, url=archive.as_uri()),
                                                      "name": "../x"}]))
    before = tree(tmp_path)
    fails_cleanly(["models", "--download", "../x"], capfd, "is not a plain name")
    assert tree(tmp_path) == before


# --- segment: read fully or refuse ---------------------------------------------------------------------------------

@pytest.fixture()
def work(tmp_path) -> Path:
    """A folder holding an earlier result that no failed run may touch."""
    (tmp_path / "out.seg.nrrd").write_bytes(b"an earlier result")
    return tmp_path


def segment_argv(image: Path, model: Path, out: Path, *extra: str, modality: str = "CT") -> list[str]:
    return ["segment", str(image), "--modality", modality, "--region", "thorax", "--target", "liver",
            "--model", str(model), "-o", str(out), "-q", "--threads", "1", *extra]


def refuses(argv: list[str], root: Path, capfd, reason: str) -> str:
    """``argv`` fails cleanly and leaves every file under ``root`` as it was."""
    before = tree(root)
    line = fails_cleanly(argv, capfd, reason)
    assert tree(root) == before
    return line


def cut(path: Path, fraction: float) -> Path:
    """Truncate ``path`` to ``fraction`` of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_a_truncated_nifti_is_refused_not_read_with_zeros(chest_ct, tiny_model_folder, work, capfd, suffix, fraction):
    image = work / f"ct{suffix}"
    sitk.WriteImage(chest_ct, str(image))
    cut(image, fraction)
    refuses(segment_argv(image, tiny_model_folder, work / "out.seg.nrrd"), work, capfd, "in full")


def test_a_truncated_metaimage_is_one_line(chest_ct, tiny_model_folder, work, capfd):
    image = work / "ct.mha"
    sitk.WriteImage(chest_ct, str(image), True)
    cut(image, 0.9)
    refuses(segment_argv(image, tiny_model_folder, work / "out.seg.nrrd"), work, capfd, "data not read completely")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_nan_and_inf_voxels_are_refused_in_every_format(chest_ct, tiny_model_folder, work, capfd, suffix):
    array = sitk.GetArrayFromImage(chest_ct).astype(np.float32)
    array[5, 5, 5], array[6, 6, 6], array[7, 7, 7] = np.nan, np.inf, -np.inf
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(chest_ct)
    sitk.WriteImage(image, str(work / f"nan{suffix}"))
    refuses(segment_argv(work / f"nan{suffix}", tiny_model_folder, work / "out.seg.nrrd"), work, capfd,
            "has 3 NaN or infinite voxels")


def test_a_nifti_declaring_a_huge_size_is_refused(chest_ct, tiny_model_folder, work, capfd):
    import gzip

    sitk.WriteImage(chest_ct, str(work / "ct.nii"))
    data = bytearray((work / "ct.nii").read_bytes())
    data[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()  # dim[1..3] of the NIfTI-1 header
    (work / "huge.nii.gz").write_bytes(gzip.compress(bytes(data)))
    refuses(segment_argv(work / "huge.nii.gz", tiny_model_folder, work / "out.seg.nrrd"), work, capfd, "cannot read")


def series_copy(tmp_path: Path, name: str = "series") -> tuple[Path, list[Path]]:
    """A copy of the real 20-slice CT series; its files sorted by slice position."""
    folder = shutil.copytree(DICOM_CT, tmp_path / name)
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                            .ImagePositionPatient[2]))
    return folder, files


@needs_shared()
@pytest.mark.parametrize("damage, reason", [
    ("remove middle", "is missing 1 slice(s) between {before} mm ({before_file}, instance {before_number}) and "
                      "{after} mm ({after_file}"),
    ("truncate middle", "the slice at {z} mm ({file}, instance {number}) is truncated or damaged"),
    ("truncate last", "the slice at {z} mm ({file}, instance {number}) is truncated or damaged"),
    ("header only", "cannot be read (truncated or damaged?): {file}"),
    ("tilt one", "have different orientations ({file} at {position} mm differs"),
])
def test_an_incomplete_dicom_series_is_refused_naming_the_slice(tiny_model_folder, work, capfd, damage, reason):
    folder, files = series_copy(work)
    i = len(files) - 1 if damage == "truncate last" else 9
    victim = files[i]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    along = [float(h.ImagePositionPatient[2]) for h in headers]  # axial slices: position along the normal is z
    if damage == "remove middle":
        victim.unlink()
    elif damage == "tilt one":
        ds = pydicom.dcmread(victim)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
        ds.save_as(victim)
    else:
        cut(victim, 200 / victim.stat().st_size if damage == "header only" else 0.5)
    before, after = sorted([i - 1, min(i + 1, len(files) - 1)], key=lambda j: along[j])
    reason = reason.format(z=f"{along[i]:.2f}", file=victim.name, number=headers[i].InstanceNumber,
                           position=[round(float(v), 2) for v in headers[i].ImagePositionPatient],
                           before=f"{along[before]:.2f}", before_file=files[before].name,
                           before_number=headers[before].InstanceNumber, after=f"{along[after]:.2f}",
                           after_file=files[after].name)
    refuses(segment_argv(folder, tiny_model_folder, work / "out.seg.nrrd"), work, capfd, reason)


@needs_shared()
def test_a_dicom_folder_of_two_series_is_read_with_series_uid(tiny_model_folder, tmp_path, capfd):
    folder, files = series_copy(tmp_path, "two")
    for i, path in enumerate(files):  # a second series of the same slices, e.g. another reconstruction
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.7", f"1.2.826.0.1.3680043.2.1125.7.{i}"
        ds.save_as(folder / f"second_{i}.dcm")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.8"
        ds.save_as(path)
    out = tmp_path / "o.nii.gz"
    refuses(segment_argv(folder, tiny_model_folder, out), tmp_path, capfd, "holds 2 image series; choose one")
    assert main(segment_argv(folder, tiny_model_folder, out, "--series-uid", "1.2.826.0.1.3680043.2.1125.8")) == 0
    assert "wrote" in capfd.readouterr().out
    written, original = sitk.ReadImage(str(out)), read_image(DICOM_CT)
    assert written.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)


def test_series_uid_for_a_file_and_an_empty_folder(chest_ct_path, tiny_model_folder, work, capfd):
    refuses(segment_argv(chest_ct_path, tiny_model_folder, work / "out.seg.nrrd", "--series-uid", "1.2.3"), work,
            capfd, "is a file, not a DICOM folder")
    (work / "empty").mkdir()
    refuses(segment_argv(work / "empty", tiny_model_folder, work / "out.seg.nrrd"), work, capfd,
            "no DICOM image series")  # and no ITK warning lines above it (fails_cleanly counts the lines)


# --- segment: PET --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pet_model(tmp_path_factory) -> Path:
    """A randomly initialised model with CT and PET inputs (``GTV`` target)."""
    import torch

    from PromptSegLib.models.folder import ModelConfig, save_model
    from PromptSegLib.models.network import DuPLUSNet, NetworkConfig

    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig(modalities=("CT", "PET"), widths=(4, 8), film_hidden=16, pred_hidden=32))
    config = ModelConfig("tiny-pet", "0", network.config, patch_size=(32, 32, 32), spacing_mm=6.0,
                         targets=["liver", "gross tumor volume"], regions={"CT": ["thorax"], "PET": ["thorax"]})
    return save_model(tmp_path_factory.mktemp("models") / "tiny-pet", network, config, "# tiny PET test model\n")


def bqml_series(folder: Path, weight: bool = True) -> Path:
    """The real STS_002 PET (stored as SUV) rewritten as activity concentration (Bq/ml, decay-corrected to the
    injection), as a scanner writes it; without ``PatientWeight`` when ``weight`` is False."""
    folder.mkdir()
    for path in sorted(PET_DICOM.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        dose = float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose)
        ds.Units, ds.DecayCorrection = "BQML", "ADMIN"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * dose / (float(ds.PatientWeight) * 1000):.10e}"[:16]
        if not weight:
            del ds.PatientWeight
        ds.save_as(folder / path.name)
    return folder


@needs_shared()
def test_a_pet_dicom_series_is_segmented_in_suv(tiny_pet_model, tmp_path, capfd, monkeypatch):
    from PromptSegLib.preprocessing.pet import read_pet_suv
    from PromptSegLib.segment.inference import Segmenter

    seen = []
    real_segment = Segmenter.segment
    monkeypatch.setattr(Segmenter, "segment", lambda self, image, *a, **k: seen.append(image) or
                        real_segment(self, image, *a, **k))
    folder = bqml_series(tmp_path / "pet")
    argv = ["segment", str(folder), "--modality", "PET", "--region", "thorax", "--target", "GTV",
            "--model", str(tiny_pet_model), "-o", str(tmp_path / "o.seg.nrrd"), "-q"]
    assert main(argv) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("promptseg: note: ") and "converted to SUV" in err[0], err
    suv = sitk.GetArrayFromImage(seen[0])
    np.testing.assert_array_equal(suv, sitk.GetArrayFromImage(read_pet_suv(folder)[0]))  # as the library does
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(PET_SUV_NIFTI)))
    assert np.abs(suv - reference).max() < 1e-3 * reference.max()  # the SUV the series was made from

    without_weight = bqml_series(tmp_path / "no_weight", weight=False)
    argv[1], argv[-2] = str(without_weight), str(tmp_path / "p.seg.nrrd")
    refuses(argv, tmp_path, capfd, "cannot compute SUV: DICOM tag PatientWeight is missing or empty")


@needs_shared()
def test_a_pet_file_is_taken_as_suv_with_a_note(tiny_pet_model, tmp_path, capfd):
    argv = ["segment", str(PET_SUV_NIFTI), "--modality", "PET", "--region", "thorax", "--target", "GTV",
            "--model", str(tiny_pet_model), "-o", str(tmp_path / "o.seg.nrrd"), "-q"]
    assert main(argv) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is taken to be in SUV body weight already" in err[0], err


# --- segment: check before working ---------------------------------------------------------------------------------

@pytest.fixture()
def nothing_runs(monkeypatch):
    """Reading an image or loading a model fails the test: every case below must be refused before either."""
    import PromptSegLib.io.imageio
    import PromptSegLib.preprocessing.pet
    import PromptSegLib.segment.inference

    def worked(*args, **kwargs):
        raise AssertionError("the image was read or the model loaded before the arguments were checked")

    monkeypatch.setattr(PromptSegLib.io.imageio, "read_image", worked)
    monkeypatch.setattr(PromptSegLib.preprocessing.pet, "read_pet_image", worked)
    monkeypatch.setattr(PromptSegLib.segment.inference, "load_model", worked)


@pytest.mark.parametrize("extra, reason", [
    (["--device", "banana"], "unknown device 'banana': use auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "CUDA"),
    (["--threads", "0"], "threads must be 1 or more, got 0"),
    (["--threads", "x"], "argument --threads: invalid int value: 'x'"),
    (["--threshold", "1.5"], "--threshold must be a probability between 0 and 1, got 1.5"),
    (["--overlay", "{w}/o.txt"], "--overlay {w}/o.txt: the file must end in .png"),
    (["--boxes", "{w}/b.csv"], "--boxes {w}/b.csv: the file must end in .json"),
    (["-o", "{w}/o.nii.gz", "--boxes", "{w}/o.labels.json"], "{w}/o.labels.json is asked for as two outputs"),
    (["--overlay", "{w}/missing/o.png"], "output folder {w}/missing does not exist"),
    (["--rtstruct", "{w}/RS.dcm"], "--rtstruct and --dicom-seg reference the source DICOM series"),
    (["--target", "livr"], "unknown target 'livr'; nearest known: liver"),
    (["--target", "pancreas"], "allow untrained targets (--allow-untrained) to try anyway"),
    (["--region", "moon"], "moon"),
    (["--modality", "XR"], "XR"),
    (["--modality", "PET"], "has no PET input"),
    (["--model", "{w}/nowhere"], "does not exist"),
    (["--model", "no-such-model"], "no model named 'no-such-model' is installed"),
    (["--series-uid"], "argument --series-uid: expected one argument"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_arguments_are_checked_before_reading_or_loading(chest_ct_path, tiny_model_folder, work, capfd, nothing_runs,
                                                         extra, reason):
    if "cuda:7" in extra:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    extra = [e.format(w=work) for e in extra]
    argv = segment_argv(chest_ct_path, tiny_model_folder, work / "out.seg.nrrd")
    if "--model" in extra:  # replace the tiny model
        argv[argv.index("--model") + 1] = extra[1]
        extra = []
    refuses(argv + extra, work, capfd, reason.format(w=work))


@pytest.mark.parametrize("output", ["o.txt", "o.png", "o", "o.jpg"])
def test_the_segmentation_type_is_checked_before_work(chest_ct_path, tiny_model_folder, work, capfd, nothing_runs,
                                                       output):
    refuses(segment_argv(chest_ct_path, tiny_model_folder, work / output), work, capfd, "unsupported output type")


# --- segment: all outputs or none ----------------------------------------------------------------------------------

@pytest.mark.parametrize("failure, code", [(None, 2), (KeyboardInterrupt, 130)])
def test_a_failure_after_some_outputs_were_written_leaves_none(chest_ct_path, tiny_model_folder, work, capfd,
                                                               monkeypatch, failure, code):
    import PromptSegLib.workflows.segment_request
    from PromptSegLib.errors import OutputError

    def fail(path, result):  # after the labelmap, its labels and the overlay were written
        raise failure() if failure else OutputError("the disk filled up")

    monkeypatch.setattr(PromptSegLib.workflows.segment_request, "write_detections", fail)
    argv = segment_argv(chest_ct_path, tiny_model_folder, work / "o.nii.gz", "--overlay", str(work / "o.png"),
                        "--boxes", str(work / "b.json"))
    before = tree(work)
    assert main(argv) == code
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("the disk filled up" if failure is None else "interrupted, nothing written") in err[0]
    assert tree(work) == before  # no o.nii.gz, o.labels.json, o.png, and no temporary file


SIGNAL_RUN = """
import os, signal, sys
import PromptSegLib.io.outputs, PromptSegLib.workflows.segment_request
from PromptSegLib.cli.main import main

where, name = sys.argv[1], sys.argv[2]
def deliver(real):
    def run(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, name))
        return real(*args, **kwargs)
    return run
module = PromptSegLib.workflows.segment_request if where == "write_detections" else PromptSegLib.io.outputs
setattr(module, where, deliver(getattr(module, where)))
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_writing_leaves_no_output(chest_ct_path, tiny_model_folder, work, name, code):
    """A real signal in a process of its own, sent once the labelmap, its labels and the overlay are written."""
    argv = segment_argv(chest_ct_path, tiny_model_folder, work / "o.nii.gz", "--overlay", str(work / "o.png"),
                        "--boxes", str(work / "b.json"))
    before = tree(work)
    done = subprocess.run([sys.executable, "-c", SIGNAL_RUN, "write_detections", name, *argv], capture_output=True,
                          text=True, timeout=1200, cwd=REPO)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [f"promptseg: interrupted{' by SIGTERM' if code == 143 else ''}, "
                                                "nothing written"]
    assert tree(work) == before


def test_a_signal_while_the_outputs_move_into_place_waits_for_them(chest_ct_path, tiny_model_folder, work):
    """The last step (renames) runs with the signals held: the command completes, every file is there."""
    argv = segment_argv(chest_ct_path, tiny_model_folder, work / "o.nii.gz", "--overlay", str(work / "o.png"))
    done = subprocess.run([sys.executable, "-c", SIGNAL_RUN, "_move_into_place", "SIGTERM", *argv],
                          capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in work.iterdir()) == ["o.labels.json", "o.nii.gz", "o.png", "out.seg.nrrd"]


# --- other commands ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, reason", [
    ("[]", "holds a list; a dataset spec is an object"),
    ('["a", "b"]', "holds a list; a dataset spec is an object"),
    ('{"datasets": "x"}', "'datasets' must be a list of objects"),
    ('{"datasets": [1]}', "'datasets' must be a list of objects"),
    ("{", "cannot read dataset spec"),
])
@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_a_spec_that_is_not_an_object_is_refused(tiny_model_folder, work, capfd, nothing_runs, content, reason,
                                                 command):
    (work / "spec.json").write_text(content)
    argv = [command, str(work / "spec.json"), "-o", str(work / ("scores.csv" if command == "evaluate" else "m"))]
    refuses(argv + (["--model", str(tiny_model_folder)] if command == "evaluate" else []), work, capfd, reason)


@pytest.mark.parametrize("record, features, reason", [
    ("[1, 2]", None, "holds a JSON list; a record is an object"),
    ("{}", None, "gives no clinical value"),
    ('{"patient_id": "p1"}', None, "gives no clinical value"),
    ('{"age": 60, "hat": 1}', None, "unknown clinical field(s): hat"),
    ('{"age": 60}', "missing.npy", "cannot read image features"),
    ('{"age": 60}', "text.npy", "cannot read image features"),
])
def test_prognose_refuses_empty_or_malformed_input(work, capfd, record, features, reason):
    (work / "record.json").write_text(record)
    (work / "text.npy").write_text("not numpy")
    argv = ["prognose", str(PROGNOSIS_MODEL), "--record", str(work / "record.json")]
    refuses(argv + (["--image-features", str(work / features)] if features else []), work, capfd, reason)


@needs_shared()
@pytest.mark.parametrize("label", ["A" * 17, "", "a\\b"])
def test_an_rtstruct_label_too_long_is_refused_not_cut(work, capfd, label):
    argv = ["export-rtstruct", "--ct", str(DICOM_CT), "--seg", str(work / "out.seg.nrrd"), "-o", str(work / "RS.dcm"),
            "--label", label]
    refuses(argv, work, capfd, "is not a Structure Set Label: 1 to 16 characters")


def test_reference_masks_may_be_empty_and_bad_label_names_are_one_line(tmp_path, chest_ct, chest_ct_path, capsys):
    """A reference labelmap of a case without the structure (all 0) is read, not refused as a constant image; a
    damaged ``.labels.json`` beside a labelmap is a one-line error naming it; ``prompt-check -o`` into a missing
    folder is refused before its runs."""
    from PromptSegLib.errors import InputImageError
    from PromptSegLib.export.segfile import read_segments

    empty = sitk.Image(chest_ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(chest_ct)
    sitk.WriteImage(empty, str(tmp_path / "ref.nii.gz"))
    assert read_segments(tmp_path / "ref.nii.gz", chest_ct) == {}
    with pytest.raises(InputImageError, match="is constant"):
        read_image(tmp_path / "ref.nii.gz")  # as an image to segment it is still refused
    (tmp_path / "ref.labels.json").write_text('{"labels": [{"value": 1}]}')
    with pytest.raises(InputImageError, match=r"ref.labels.json cannot be read as label names \(KeyError"):
        read_segments(tmp_path / "ref.nii.gz", chest_ct)
    (tmp_path / "ref.labels.json").write_text('{"labels": [')
    with pytest.raises(InputImageError, match=r"ref.labels.json cannot be read as label names \(JSONDecodeError"):
        read_segments(tmp_path / "ref.nii.gz", chest_ct)
    assert main(["prompt-check", str(chest_ct_path), "--modality", "CT", "--region", "thorax", "--target", "liver",
                 "-o", str(tmp_path / "missing" / "check.json")]) == 2
    printed = capsys.readouterr()
    assert "output folder" in printed.err and "Dice" not in printed.out  # refused before the runs

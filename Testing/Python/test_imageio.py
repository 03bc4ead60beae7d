"""Image reading/writing keeps geometry; bad input gets a clear error and leaves nothing behind."""
from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError, OutputError
from PromptSegLib.io.imageio import list_dicom_series, read_image, same_geometry, write_image

from conftest import SHARED, needs_shared


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_voxels(chest_ct, tmp_path, suffix):
    path = write_image(chest_ct, tmp_path / f"ct{suffix}")
    back = read_image(path)
    assert back.GetSize() == chest_ct.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), chest_ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), chest_ct.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), chest_ct.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(chest_ct))
    assert [p.name for p in tmp_path.iterdir()] == [f"ct{suffix}"]  # no temporary left


def test_oblique_direction_survives_round_trip(chest_ct, tmp_path):
    image = sitk.Image(chest_ct)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection((rotation @ np.array(chest_ct.GetDirection()).reshape(3, 3)).ravel().tolist())
    back = read_image(write_image(image, tmp_path / "oblique.nrrd"))
    assert same_geometry(back, image, 1e-6)


@needs_shared()
def test_reads_real_dicom_series_folder():
    folder = SHARED / "totalsegmentator_example" / "ct_dicom_series" / "dicom"
    assert len(list_dicom_series(folder)) == 1
    image = read_image(folder)
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing()[:2], (0.9765625, 0.9765625))
    assert -1100 < float(sitk.GetArrayViewFromImage(image).min()) < -900  # HU, rescale slope/intercept applied


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image")
    with pytest.raises(InputImageError, match="cannot read"):
        read_image(path)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(InputImageError, match="no DICOM image series"):
        read_image(tmp_path)


def test_2d_image_refused(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(path))
    with pytest.raises(InputImageError, match="2D"):
        read_image(path)


def test_4d_image_refused(tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(3, 8, 8, 8).astype(np.float32)), str(path))
    with pytest.raises(InputImageError, match="4D|3D volume"):
        read_image(path)


def test_constant_volume_refused(tmp_path):
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), 7, np.int16)), str(path))
    with pytest.raises(InputImageError, match="constant"):
        read_image(path)


def test_nan_volume_refused(chest_ct, tmp_path):
    array = sitk.GetArrayFromImage(chest_ct).astype(np.float32)
    array[5, 5, 5] = np.nan
    array[6, 6, 6] = np.inf
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(chest_ct)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputImageError, match="2 NaN or infinite"):
        read_image(path)


def test_write_to_missing_folder(chest_ct, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_image(chest_ct, tmp_path / "nowhere" / "ct.nrrd")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_write_to_read_only_folder(chest_ct, tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            write_image(chest_ct, tmp_path / "ct.nrrd")
    finally:
        tmp_path.chmod(0o700)

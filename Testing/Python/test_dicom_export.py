"""DICOM series loading, RTSTRUCT and DICOM SEG export on real data.

CT series: the real slicerio chest CT written as a DICOM series here (pydicom, proper UIDs and geometry,
rescale intercept), the real IBSI lung phantom CT series with its real RTSTRUCT (../shared/data/lung_ct_gtv)
and the real Siemens series of TotalSegmentator's tests. Masks: slicerio's segmentation of the chest CT and
the phantom's GTV. ``dciodvfy`` (Debian ``dicom3tools``) checks conformance when installed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from PromptSegLib.dicom.contours import fill_even_odd, slice_contours
from PromptSegLib.dicom.rtstruct import export_rtstruct, read_rtstruct, read_rtstruct_rois, write_rtstruct
from PromptSegLib.dicom.seg import export_dicom_seg, read_dicom_seg, write_dicom_seg
from PromptSegLib.dicom.validate import dciodvfy_path, run_dciodvfy, validate_dicom_seg, validate_rtstruct
from PromptSegLib.errors import InputImageError, OutputError
from PromptSegLib.export.segfile import ExportSegment, SegmentSet
from PromptSegLib.export.segments import ExportWarning
from PromptSegLib.io.dicom_series import ObliqueSeriesWarning, list_series, load_dicom_series

from conftest import SHARED, needs_shared, segment_mask

LUNG_GTV = SHARED / "lung_ct_gtv"
RT_EXAMPLES = SHARED / "dicom_rt_examples"
TS_SERIES = SHARED / "totalsegmentator_example" / "ct_dicom_series" / "dicom"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(image: sitk.Image, folder: Path, patient_name: str = "Chest^Test", description: str = "chest CT",
                    skip: tuple[int, ...] = (), shift: dict[int, float] | None = None) -> Path:
    """Write ``image`` (HU) as a CT Image Storage series: one file per slice, new study/series/frame UIDs,
    position/orientation from its geometry, int16 stored values with rescale intercept -1024."""
    folder.mkdir(parents=True, exist_ok=True)
    voxels = sitk.GetArrayFromImage(image)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    for k in range(voxels.shape[0]):
        if k in skip:
            continue
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, "PS-0001", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20240101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = "CT", series, 3, description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.InstanceNumber, ds.PatientPosition, ds.AcquisitionNumber = "test", k + 1, "HFS", 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))
        position = position + direction[:, 2] * (shift or {}).get(k, 0.0)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.Rows, ds.Columns = voxels.shape[1], voxels.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType, ds.KVP = "-1024", "1", "HU", "120"
        ds.PixelData = (voxels[k].astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"CT{k:04d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def chest_dicom(tmp_path_factory, chest_ct) -> Path:
    return write_ct_series(chest_ct, tmp_path_factory.mktemp("dicom") / "chest")


@pytest.fixture(scope="module")
def chest_series(chest_dicom):
    return load_dicom_series(chest_dicom)


@pytest.fixture(scope="module")
def chest_seg_path(chest_ct_path) -> Path:
    return chest_ct_path.parent / "Segmentation.seg.nrrd"


@pytest.fixture(scope="module")
def chest_rtstruct(tmp_path_factory, chest_dicom, chest_seg_path):
    path = tmp_path_factory.mktemp("rt") / "RS.dcm"
    return path, export_rtstruct(chest_dicom, chest_seg_path, path)


def _one(segmentation, name: str) -> np.ndarray:
    return segment_mask(segmentation, name)


def test_load_series_keeps_geometry_values_and_references(chest_series, chest_ct, chest_dicom):
    image, refs = chest_series
    assert image.GetSize() == chest_ct.GetSize()
    assert np.allclose(image.GetOrigin(), chest_ct.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetSpacing(), chest_ct.GetSpacing(), atol=1e-4)
    assert np.allclose(image.GetDirection(), chest_ct.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(chest_ct))  # HU after rescale
    assert len(refs.slices) == 34 and not refs.oblique
    for k in (0, 17, 33):  # slice k of the volume is the file whose position is that of voxel (0, 0, k)
        ds = pydicom.dcmread(refs.slices[k].path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == refs.slices[k].sop_instance_uid
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], image.TransformIndexToPhysicalPoint((0, 0, k)),
                           atol=1e-3)
    assert refs.frame_of_reference_uid and refs.study_instance_uid and str(refs.patient_study.PatientName) == "Chest^Test"


def test_rtstruct_round_trip_references_and_codes(chest_rtstruct, chest_series, chest_segmentation):
    path, report = chest_rtstruct
    image, refs = chest_series
    names = [s["name"] for s in chest_segmentation["segments"]]
    assert report.names == names and not report.skipped
    dice = validate_rtstruct(path, image, refs, {n: _one(chest_segmentation, n) for n in names})
    print("RTSTRUCT re-read Dice:", {n: round(d, 4) for n, d in dice.items()})
    assert min(dice.values()) >= 0.98

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and ds.Modality == "RTSTRUCT"
    assert ds.SOPInstanceUID not in refs.sop_instance_uids and ds.SeriesInstanceUID != refs.series_instance_uid
    assert ds.StudyInstanceUID == refs.study_instance_uid and str(ds.PatientName) == "Chest^Test"
    assert ds.PatientID == "PS-0001" and ds.SpecificCharacterSet == "ISO_IR 192"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == refs.frame_of_reference_uid
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == refs.study_instance_uid
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == refs.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == refs.sop_instance_uids
    # every contour lies on the slice it references
    z_of = {s.sop_instance_uid: s.position[2] for s in refs.slices}
    checked = 0
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints >= 3
            (item,) = contour.ContourImageSequence
            assert item.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
            assert np.allclose(points[:, 2], z_of[item.ReferencedSOPInstanceUID], atol=1e-3)
            checked += 1
    assert checked > 100
    rois = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    lung = next(c for c in ds.ROIContourSequence if rois[c.ReferencedROINumber] == "left lung")
    assert list(lung.ROIDisplayColor) == [197, 25, 99]  # slicerio's colour 0.772549, 0.0980392, 0.388235
    types = {rois[o.ReferencedROINumber]: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert types["left lung"] == "ORGAN"


def test_hole_and_two_islands_on_one_slice(tmp_path, chest_dicom, chest_series, chest_segmentation):
    image, refs = chest_series
    left, right = _one(chest_segmentation, "left lung"), _one(chest_segmentation, "right lung")
    k = int(np.argmax(left.sum(axis=(1, 2)) + right.sum(axis=(1, 2))))
    mask = np.zeros_like(left)
    mask[k] = left[k] | right[k]  # two islands
    ys, xs = np.nonzero(left[k])
    cy, cx = int(np.median(ys)), int(np.median(xs))
    assert left[k, cy - 2:cy + 3, cx - 2:cx + 3].all()
    before = len(slice_contours(mask[k]))
    assert before >= 2  # the two lungs (and whatever small islands and holes the real slice has)
    mask[k, cy - 2:cy + 3, cx - 2:cx + 3] = False  # a hole inside the left lung
    n_contours = len(slice_contours(mask[k]))
    assert n_contours == before + 1  # the hole is a contour of its own
    segments = SegmentSet([ExportSegment("lungs with hole", mask, terminology=None, interpreted_type="AVOIDANCE")], image)
    report = write_rtstruct(tmp_path / "RS.dcm", image, refs, segments)
    assert report.dice["lungs with hole"] == 1.0
    ds = pydicom.dcmread(tmp_path / "RS.dcm")
    assert len(ds.ROIContourSequence[0].ContourSequence) == n_contours
    assert ds.RTROIObservationsSequence[0].RTROIInterpretedType == "AVOIDANCE"
    back = read_rtstruct(tmp_path / "RS.dcm", image, refs)["lungs with hole"]
    assert np.array_equal(back, mask) and not back[k, cy, cx]  # even-odd filling keeps the hole
    union = np.zeros_like(mask[k])
    for loop in slice_contours(mask[k]):
        union |= fill_even_odd([loop], mask[k].shape)
    assert union[cy, cx]  # filling each contour alone would have lost it


def test_empty_segment_skipped_and_non_ascii_name(tmp_path, chest_series, chest_segmentation):
    image, refs = chest_series
    name = "Lunge links – Läsion 肺"
    segments = SegmentSet([ExportSegment(name, _one(chest_segmentation, "left lung"), (0.2, 0.4, 0.9)),
                           ExportSegment("nothing here", np.zeros(image.GetSize()[::-1], bool)),
                           ExportSegment(name, _one(chest_segmentation, "right lung"))], image)
    with pytest.warns(ExportWarning, match="'nothing here' is empty"):
        report = write_rtstruct(tmp_path / "RS.dcm", image, refs, segments)
    assert report.skipped == ["nothing here"] and report.names == [name, name + " 2"]  # renamed, not skipped
    ds = pydicom.dcmread(tmp_path / "RS.dcm")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert [r.ROIName for r in ds.StructureSetROISequence] == [name, name + " 2"]  # no empty ROI written
    segments = SegmentSet(segments.segments[:2], image)
    assert read_rtstruct_rois(tmp_path / "RS.dcm")[0].name == name
    with pytest.warns(ExportWarning, match="empty"):
        seg_report = write_dicom_seg(tmp_path / "SEG.dcm", image, refs, segments)
    assert seg_report.names == [name] and pydicom.dcmread(tmp_path / "SEG.dcm").SegmentSequence[0].SegmentLabel == name
    with pytest.raises(InputImageError, match="every segment is empty"):
        write_rtstruct(tmp_path / "none.dcm", image, refs, SegmentSet(segments.segments[1:], image))
    assert not (tmp_path / "none.dcm").exists()


def test_a_series_without_some_type2_attributes_exports_both_ways(tmp_path, chest_ct, chest_segmentation):
    """Some de-identification tools delete Type 2 attributes instead of emptying them: the SEG, like the
    RTSTRUCT, writes them empty instead of refusing the series."""
    folder = write_ct_series(chest_ct, tmp_path / "deid")
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        del ds.AccessionNumber, ds.StudyID, ds.PatientSex
        ds.save_as(file, enforce_file_format=True)
    image, refs = load_dicom_series(folder)
    segments = SegmentSet([ExportSegment("left lung", _one(chest_segmentation, "left lung"))], image)
    assert write_dicom_seg(tmp_path / "SEG.dcm", image, refs, segments).names == ["left lung"]
    assert write_rtstruct(tmp_path / "RS.dcm", image, refs, segments).names == ["left lung"]
    for written in ("SEG.dcm", "RS.dcm"):
        ds = pydicom.dcmread(tmp_path / written, stop_before_pixels=True)
        assert ds.AccessionNumber == "" and ds.StudyID == "" and ds.PatientSex == ""
    assert "AccessionNumber" not in refs.headers[0]  # the series' headers are left as read


def test_segmentation_on_another_grid_is_resampled(tmp_path, chest_series, chest_segmentation, chest_ct):
    image, refs = chest_series
    lung = _one(chest_segmentation, "right lung")
    lung_image = sitk.GetImageFromArray(lung.astype(np.uint8))
    lung_image.CopyInformation(chest_ct)
    grid = sitk.Image([100, 100, 60], sitk.sitkUInt8)  # 2 mm in-plane, 5 mm slices, identity direction, shifted
    grid.SetSpacing((4.0, 4.0, 5.0))
    grid.SetOrigin((-200.0, -180.0, -345.0))
    coarse = sitk.GetArrayFromImage(sitk.Resample(lung_image, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    with pytest.warns(ExportWarning, match="resampled onto the series grid"):
        report = write_rtstruct(tmp_path / "RS.dcm", image, refs, SegmentSet([ExportSegment("right lung", coarse)], grid))
    back = read_rtstruct(tmp_path / "RS.dcm", image, refs)["right lung"]
    d = 2 * (back & lung).sum() / (back.sum() + lung.sum())
    print(f"resampled right lung vs original: Dice {d:.3f}")
    assert report.warnings and d > 0.9


def test_oblique_series_supported(tmp_path, chest_ct, chest_segmentation):
    tilted = sitk.Image(chest_ct)
    angle = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    tilted.SetDirection(tuple((rotation @ np.array(chest_ct.GetDirection()).reshape(3, 3)).ravel()))
    folder = write_ct_series(tilted, tmp_path / "oblique")
    with pytest.warns(ObliqueSeriesWarning, match="oblique"):
        image, refs = load_dicom_series(folder)
    assert refs.oblique and np.allclose(image.GetDirection(), tilted.GetDirection(), atol=1e-5)
    lung = _one(chest_segmentation, "left lung")
    report = write_rtstruct(tmp_path / "RS.dcm", image, refs, SegmentSet([ExportSegment("left lung", lung)], image))
    assert report.dice["left lung"] >= 0.98


def test_missing_slice_and_uneven_spacing_refused(tmp_path, chest_ct):
    gap = write_ct_series(chest_ct, tmp_path / "gap", skip=(12,))
    with pytest.raises(InputImageError, match=r"missing 1 slice\(s\) between -230.25 mm \(CT0011.dcm, instance 12\) "
                                              r"and -210.25 mm \(CT0013.dcm, instance 14\)"):
        load_dicom_series(gap)
    uneven = write_ct_series(chest_ct, tmp_path / "uneven", shift={20: 3.0})
    with pytest.raises(InputImageError, match=r"uneven slice spacing: 13.00 mm between .* \(CT0019.dcm"):
        load_dicom_series(uneven)


@needs_shared()
def test_folder_with_several_series_lists_them(tmp_path, chest_ct):
    folder = write_ct_series(chest_ct, tmp_path / "mixed" / "chest")
    shutil.copytree(LUNG_GTV / "dicom" / "image", tmp_path / "mixed" / "phantom")
    infos = list_series(tmp_path / "mixed")
    assert [i.n_files for i in infos] == [60, 34]
    with pytest.raises(InputImageError, match=r"holds 2 image series; choose one with --series-uid: .*60 slices.*"
                                              r"'chest CT', 34 slices"):
        load_dicom_series(tmp_path / "mixed")
    chest_uid = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    image, refs = load_dicom_series(tmp_path / "mixed", chest_uid)
    assert image.GetSize() == chest_ct.GetSize() and refs.series_instance_uid == chest_uid
    with pytest.raises(InputImageError, match="series 1.2.3 is not in"):
        load_dicom_series(tmp_path / "mixed", "1.2.3")


def test_unwritable_output_folder(tmp_path, chest_dicom, chest_seg_path):
    from PromptSegLib.cli.main import main

    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="does not exist"):
        export_rtstruct(chest_dicom, chest_seg_path, blocker / "RS.dcm")
    assert main(["export-dicom-seg", "--ct", str(chest_dicom), "--seg", str(chest_seg_path),
                 "-o", str(tmp_path / "missing" / "SEG.dcm")]) == 2
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if not __import__("os").access(locked, __import__("os").W_OK):  # root can write anyway
            with pytest.raises(OutputError, match="not writable"):
                export_rtstruct(chest_dicom, chest_seg_path, locked / "RS.dcm")
    finally:
        locked.chmod(0o700)
    assert list(tmp_path.rglob("*.dcm")) == []


def test_dicom_seg_round_trip_exact(tmp_path, chest_dicom, chest_series, chest_seg_path, chest_segmentation):
    image, refs = chest_series
    report = export_dicom_seg(chest_dicom, chest_seg_path, tmp_path / "SEG.dcm")
    names = [s["name"] for s in chest_segmentation["segments"]]
    assert report.names == names
    exact = validate_dicom_seg(tmp_path / "SEG.dcm", refs, {n: _one(chest_segmentation, n) for n in names})
    assert all(exact.values()), exact
    ds = pydicom.dcmread(tmp_path / "SEG.dcm")
    assert ds.SegmentationType == "BINARY" and ds.StudyInstanceUID == refs.study_instance_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == refs.series_instance_uid
    assert ds.FrameOfReferenceUID == refs.frame_of_reference_uid
    lung = next(s for s in ds.SegmentSequence if s.SegmentLabel == "left lung")
    assert lung.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert lung.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # lung
    assert lung.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    # fractional: a smooth probability map of the left lung, stored in 8 bits
    mask = _one(chest_segmentation, "left lung")
    probability = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(mask.astype(np.float32)),
                                                                         1.0)).clip(0, 1)
    segments = SegmentSet([ExportSegment("left lung", probability >= 0.5, probability=probability)], image)
    write_dicom_seg(tmp_path / "FSEG.dcm", image, refs, segments, fractional=True)
    back = read_dicom_seg(tmp_path / "FSEG.dcm", refs)["left lung"]
    assert pydicom.dcmread(tmp_path / "FSEG.dcm", stop_before_pixels=True).SegmentationType == "FRACTIONAL"
    assert np.abs(back - probability).max() <= 0.5 / 255 + 1e-6


@needs_shared()
def test_real_lung_phantom_rtstruct_matches_its_nifti_mask(tmp_path):
    image, refs = load_dicom_series(LUNG_GTV / "dicom" / "image")
    masks = read_rtstruct(LUNG_GTV / "dicom" / "mask" / "DCM_RS_00060.dcm", image, refs)
    assert list(masks) == ["GTV-1"]
    nifti = sitk.ReadImage(str(LUNG_GTV / "nifti" / "mask" / "mask.nii.gz"))
    reference = sitk.GetArrayFromImage(sitk.Resample(nifti, image, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    gtv = masks["GTV-1"]
    d = 2 * (gtv & reference).sum() / (gtv.sum() + reference.sum())
    print(f"lung phantom GTV: RTSTRUCT rebuilt vs NIfTI mask Dice {d:.4f} ({int(gtv.sum())} voxels)")
    assert d >= 0.95
    # and our own export of that mask on this real series reads back
    report = write_rtstruct(tmp_path / "RS.dcm", image, refs, SegmentSet([ExportSegment("GTV-1", reference)], image),
                            default_interpreted_type="GTV")
    assert report.dice["GTV-1"] >= 0.98
    assert pydicom.dcmread(tmp_path / "RS.dcm").RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"


@needs_shared()
def test_reading_other_real_rt_and_seg_files():
    import highdicom as hd

    found = {}
    for path in sorted(RT_EXAMPLES.rglob("*.dcm")):
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        if ds.get("Modality") == "RTSTRUCT" or "StructureSetROISequence" in ds:
            rois = read_rtstruct_rois(path, force=True)
            assert rois and all(r.name for r in rois)
            found[path.parent.name] = rois
    assert {"pydicom_bundled", "dicompyler_breast", "rtutils_phantom"} <= set(found)
    assert len(found["dicompyler_breast"]) == 10
    image, refs = load_dicom_series(RT_EXAMPLES / "rtutils_phantom")
    masks = read_rtstruct(RT_EXAMPLES / "rtutils_phantom" / "rt.dcm", image, refs)
    assert len(masks) == 4 and sum(int(m.any()) for m in masks.values()) >= 1
    seg = hd.seg.segread(RT_EXAMPLES / "pydicom_data_seg" / "liver.dcm")
    assert seg.SegmentSequence[0].SegmentLabel


@needs_shared()
def test_series_with_blanked_uids_is_loaded_but_not_referenced(tmp_path):
    image, refs = load_dicom_series(TS_SERIES)  # real Siemens series, JPEG 2000, UIDs blanked by de-identification
    assert image.GetSize() == (512, 512, 20)
    mask = np.zeros(image.GetSize()[::-1], bool)
    mask[5:10, 200:300, 200:300] = True
    with pytest.raises(InputImageError, match="cannot be referenced .* no Study Instance UID"):
        write_rtstruct(tmp_path / "RS.dcm", image, refs, SegmentSet([ExportSegment("box", mask)], image))
    assert not (tmp_path / "RS.dcm").exists()


def test_command_line_exports(tmp_path, chest_dicom, chest_seg_path, capsys):
    from PromptSegLib.cli.main import main

    assert main(["export-rtstruct", "--ct", str(chest_dicom), "--seg", str(chest_seg_path),
                 "-o", str(tmp_path / "RS.dcm")]) == 0
    assert main(["export-dicom-seg", "--ct", str(chest_dicom), "--seg", str(chest_seg_path),
                 "-o", str(tmp_path / "SEG.dcm")]) == 0
    out = capsys.readouterr().out
    assert "wrote RTSTRUCT" in out and "wrote DICOM SEG" in out and "left lung: re-read Dice 1.0000" in out
    assert main(["export-rtstruct", "--ct", str(tmp_path), "--seg", str(chest_seg_path),
                 "-o", str(tmp_path / "RS2.dcm")]) == 2
    assert "promptseg: error: no DICOM image series" in capsys.readouterr().err


@needs_shared()
@pytest.mark.skipif(dciodvfy_path() is None, reason="dciodvfy is not installed (apt-get install -y dicom3tools)")
def test_dciodvfy_finds_no_errors(tmp_path, chest_rtstruct, chest_dicom, chest_seg_path):
    path, _ = chest_rtstruct
    export_dicom_seg(chest_dicom, chest_seg_path, tmp_path / "SEG.dcm")
    image, refs = load_dicom_series(LUNG_GTV / "dicom" / "image")
    gtv = read_rtstruct(LUNG_GTV / "dicom" / "mask" / "DCM_RS_00060.dcm", image, refs)["GTV-1"]
    write_rtstruct(tmp_path / "RS_phantom.dcm", image, refs, SegmentSet([ExportSegment("GTV-1", gtv)], image))
    for written in (path, tmp_path / "SEG.dcm", tmp_path / "RS_phantom.dcm"):
        result = run_dciodvfy(written)
        assert result.errors == [], f"{written.name}: " + "\n".join(result.errors)


def test_export_from_a_segmentation_result(tmp_path, chest_dicom, chest_series, chest_segmentation):
    """What ``promptseg segment --rtstruct/--dicom-seg`` calls: a SegmentationResult straight to DICOM."""
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import target_query

    image, refs = chest_series
    lung = _one(chest_segmentation, "left lung")
    probabilities = np.stack([lung * 0.9, np.roll(lung, 3, axis=2) * 0.8]).astype(np.float32)
    result = SegmentationResult([target_query("CT", "L lung"), target_query("CT", "gross tumor volume")],
                                "A computed tomography of the thorax", probabilities, image, 0.5)
    report = export_rtstruct(chest_dicom, result, tmp_path / "RS.dcm")
    assert report.names == ["left lung", "gross tumor volume"] and min(report.dice.values()) == 1.0
    ds = pydicom.dcmread(tmp_path / "RS.dcm")
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "GTV"]
    export_dicom_seg(chest_dicom, result, tmp_path / "SEG.dcm", fractional=True)
    back = read_dicom_seg(tmp_path / "SEG.dcm", refs)
    assert np.abs(back["left lung"] - probabilities[0]).max() <= 0.5 / 255 + 1e-6


def test_segment_writes_rtstruct_and_dicom_seg_in_one_go(tmp_path, chest_dicom, tiny_model_folder, capsys):
    from PromptSegLib.cli.main import main

    args = ["segment", str(chest_dicom), "--modality", "CT", "--region", "thorax", "--target", "left lung",
            "--target", "liver", "--model", str(tiny_model_folder), "--threshold", "0.3", "-q", "--threads", "1",
            "-o", str(tmp_path / "out.seg.nrrd"), "--rtstruct", str(tmp_path / "rs.dcm"),
            "--dicom-seg", str(tmp_path / "seg.dcm")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote RTSTRUCT" in out and "wrote DICOM SEG" in out
    rtstruct = pydicom.dcmread(tmp_path / "rs.dcm")
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["left lung", "liver"]
    assert main(args[:1] + [str(tmp_path / "out.seg.nrrd")] + args[2:]) == 2  # a file, not a DICOM folder
    assert "give a DICOM folder" in capsys.readouterr().err
    same = args[:-1] + [str(tmp_path / "sub" / ".." / "rs.dcm")]  # the RTSTRUCT's file again, spelt otherwise
    (tmp_path / "sub").mkdir()
    before = (tmp_path / "rs.dcm").read_bytes()
    assert main(same) == 2 and "is asked for as two outputs" in capsys.readouterr().err
    assert (tmp_path / "rs.dcm").read_bytes() == before


def test_tg263_roi_names_for_a_planning_system(tmp_path, chest_series, chest_segmentation):
    """``roi_names="tg263"``: vocabulary targets get their TG-263 names (any synonym the segment carries), other
    segments keep theirs; the ROIs read back under the new names with their masks."""
    image, refs = chest_series
    left, right = _one(chest_segmentation, "left lung"), _one(chest_segmentation, "right lung")
    segments = SegmentSet([ExportSegment("left parotid", left), ExportSegment("SpinalCord", right),
                           ExportSegment("my structure", left & False | right)], image)
    report = write_rtstruct(tmp_path / "RS.dcm", image, refs, segments, roi_names="tg263")
    assert report.names == ["Parotid_L", "SpinalCord", "my structure"]
    ds = pydicom.dcmread(tmp_path / "RS.dcm")
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Parotid_L", "SpinalCord", "my structure"]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    back = read_rtstruct(tmp_path / "RS.dcm", image, refs)
    assert np.array_equal(back["Parotid_L"], left) and np.array_equal(back["SpinalCord"], right)
    plain = write_rtstruct(tmp_path / "RS_plain.dcm", image, refs, segments)
    assert plain.names == ["left parotid", "SpinalCord", "my structure"]  # the default keeps the names

"""The Segment Editor effect "Fill with PromptSeg": its Qt-free logic (``PromptSegSlicer.fill``) on the real
Slicer MRML/segmentation core (slicer-core) with the bundled propagation model on a real CT, and its Qt
wiring against Qt's meta-objects (PySide6) as ``test_module_widget.py`` checks the module's widget.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, a test requirement: a missing install must fail, not skip
from test_module_widget import has_method, has_property, normalized, signals
from test_slicer_logic import lung_with_one_drawn_slice

from conftest import SHARED, needs_shared

import slicer_shim
from slicer_shim import segment_array, set_segment, tag

EFFECT = Path(__file__).resolve().parents[2] / "PromptSeg" / "PromptSegEffects" / "SegmentEditorFillWithPromptSeg.py"
# qSlicerSegmentEditorAbstractEffect.h (Slicer Modules/Loadable/Segmentations/EditorEffects): what the effect uses
SCRIPTED_EFFECT = {"properties": {"name", "perSegment", "requireSegments"},
                   "methods": {"addOptionsWidget", "addLabeledOptionsWidget", "parameterSetNode", "saveStateForUndo"}}


@pytest.fixture(scope="module")
def fill():
    slicer_shim.setup()
    from PromptSegSlicer import PromptSegLogic
    from PromptSegSlicer.fill import FillFromSlicesLogic

    return FillFromSlicesLogic(PromptSegLogic())


def drawn_lung(fill, chest_ct_path, chest_segmentation, count=3):
    """The chest CT and a "left lung" segment holding ``count`` true axial slices spread over the lung, at
    (i + 0.5) / count of its extent (the benchmark's protocol); the true lung and the drawn indices."""
    volume, node, truth, _ = lung_with_one_drawn_slice(fill.logic, chest_ct_path, chest_segmentation)
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    indices = sorted({int(present[0] + np.floor((i + 0.5) * len(present) / count)) for i in range(count)})
    drawn = np.zeros_like(truth)
    drawn[indices] = truth[indices]
    set_segment(node, "left lung", volume, drawn)
    return volume, node, truth, indices


def segment_id(node, name="left lung"):
    return node.GetSegmentation().GetSegmentIdBySegmentName(name)


def test_fill_uses_every_drawn_slice_keeps_them_and_is_one_undo_step(scene, fill, chest_ct_path, chest_segmentation):
    from PromptSegSlicer.fill import findDrawnSlices, readFilled

    from PromptSegLib.metrics import dice
    from PromptSegLib.propagate.multislice import fill_from_slices

    volume, node, truth, indices = drawn_lung(fill, chest_ct_path, chest_segmentation)
    before = segment_array(node, "left lung", volume)
    messages = []
    job = fill.start(node, segment_id(node), volume, 0, onProgress=lambda f, m: messages.append(m))
    result = fill.finish(job, timeout=900)
    filled = segment_array(node, "left lung", volume)
    np.testing.assert_array_equal(filled[indices], truth[indices])  # drawn slices untouched
    assert set(result.written) & set(range(indices[0] + 1, indices[-1])), "the gaps are filled"
    assert messages and job.message.startswith(f"filled {len(set(result.written))} slices from 3 drawn")
    # three drawn slices do better than the middle one alone
    image = slicer.util.arrayFromVolume(volume).astype(np.float32)
    spacing = tuple(reversed(volume.GetSpacing()))
    one = fill_from_slices(fill.logic._propagator(), image, {indices[1]: truth[indices[1]]}, spacing=spacing).mask
    assert dice(filled, truth) > max(dice(one, truth), 0.85)
    # the slices it wrote are remembered: they are not drawn slices for the next fill
    segment = node.GetSegmentation().GetSegment(segment_id(node))
    assert set(readFilled(segment, 0)) == set(result.written) - set(indices)
    assert sorted(findDrawnSlices(filled, 0, readFilled(segment, 0))) == indices
    assert fill.logic.undo(node)  # one step back to the drawn slices
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), before)
    assert fill.logic.redo(node)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), filled)


@needs_shared("openkbp_hn_ct")
def test_on_a_ct_the_organ_model_guides_the_fill_as_in_the_library(scene, fill):
    """OpenKBP pt_212 (held out), its right parotid drawn on two axial slices 30 mm apart: the effect's fill takes
    the head-and-neck organ model's prior on the volume node, as the library does on that volume; unticked, it
    fills without it. (Slicer reads this NIfTI file with its slices in the opposite order to SimpleITK's.)"""
    from PromptSegSlicer.nodes import volumeNodeToSimpleITK
    from PromptSegSlicer.requests import ModelChoice

    from PromptSegLib.models.catalogue import resolve_model
    from PromptSegLib.propagate.multislice import fill_from_slices
    from PromptSegLib.propagate.organ_prior import MODEL, organ_prior

    folder = SHARED / "openkbp_hn_ct" / "validation" / "pt_212"
    volume = slicer_shim.load_volume(folder / "ct.nii.gz", "pt_212")
    labels = slicer_shim.load_volume(folder / "oars.nii.gz", "pt_212 organs", labelmap=True)
    truth = slicer.util.arrayFromVolume(labels) == 3
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    indices = [int(present[0] + np.floor((i + 0.5) * len(present) / 2)) for i in range(2)]
    drawn = np.zeros_like(truth)
    drawn[indices] = truth[indices]
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    node.GetSegmentation().AddEmptySegment("", "right parotid")
    set_segment(node, "right parotid", volume, drawn)
    job = fill.start(node, segment_id(node, "right parotid"), volume, 0)
    guided = fill.finish(job, timeout=900)
    assert guided.prior is not None and guided.prior.target.endswith("parotid")
    assert "guided by the organ model's" in job.message
    image = volumeNodeToSimpleITK(volume)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(reversed(image.GetSpacing()))
    # the logic's own segmenter (its device and precision), so the two runs are the same arithmetic
    segmenter = fill.logic._segmenter(ModelChoice(resolve_model(MODEL)))
    prior = organ_prior(segmenter, image, {j: truth[j] for j in indices})
    library = fill_from_slices(fill.logic._propagator(), array, {j: truth[j] for j in indices}, spacing=spacing,
                               prior=prior).mask
    np.testing.assert_array_equal(segment_array(node, "right parotid", volume), library)
    off = fill.start(node, segment_id(node, "right parotid"), volume, 0, organPrior=False)
    assert off.request.reference is None
    plain = fill.finish(off, timeout=900)
    assert plain.prior is None and "guided" not in off.message
    assert not np.array_equal(plain.mask, library)  # the prior changed the fill


def test_a_corrected_slice_is_a_drawn_slice_and_an_erased_one_stops_the_fill(
        scene, fill, chest_ct_path, chest_segmentation):
    from PromptSegSlicer.fill import findDrawnSlices, readFilled

    volume, node, truth, indices = drawn_lung(fill, chest_ct_path, chest_segmentation, count=2)
    first = fill.finish(fill.start(node, segment_id(node), volume, 0), timeout=900)
    filled = segment_array(node, "left lung", volume)
    outer = [j for j in first.written if j > indices[-1] and filled[j].any()]
    assert outer, "it propagates beyond the last drawn slice"
    # the user corrects a filled slice between the drawn ones and erases the last slice it filled beyond them
    j = (indices[0] + indices[1]) // 2
    corrected = filled.copy()
    corrected[j] = truth[j]
    corrected[outer[-1]] = False
    set_segment(node, "left lung", volume, corrected)
    segment = node.GetSegmentation().GetSegment(segment_id(node))
    drawn = findDrawnSlices(corrected, 0, readFilled(segment, 0))
    assert sorted(drawn) == sorted(indices + [j, outer[-1]]) and not drawn[outer[-1]].any()
    second = fill.finish(fill.start(node, segment_id(node), volume, 0), timeout=900)
    again = segment_array(node, "left lung", volume)
    np.testing.assert_array_equal(again[[*indices, j]], truth[[*indices, j]])
    assert not again[outer[-1]:].any() and not set(second.written) & {*indices, j, outer[-1]}
    assert tag(segment, "PromptSeg.Filled.axial")
    # the erased slice stays a drawn (empty) slice at every later fill, until the user paints there
    later = findDrawnSlices(again, 0, readFilled(segment, 0))
    assert sorted(later) == sorted(indices + [j, outer[-1]]) and not later[outer[-1]].any()
    again[outer[-1]] = truth[outer[-1]]
    assert findDrawnSlices(again, 0, readFilled(segment, 0))[outer[-1]].any()


def test_fill_runs_off_the_main_thread_cancels_and_refuses_what_it_cannot_fill(
        scene, fill, chest_ct_path, chest_segmentation):
    from PromptSegSlicer import InputError

    from PromptSegLib.errors import Cancelled

    volume, node, truth, indices = drawn_lung(fill, chest_ct_path, chest_segmentation)
    drawn = segment_array(node, "left lung", volume)

    def cancel_at_once(fraction, message):
        fill.logic.jobs[-1].cancel()

    undoable = fill.logic.canUndo(node)  # an earlier test of this module may have left an undo state
    job = fill.start(node, segment_id(node), volume, 0, onProgress=cancel_at_once)
    with pytest.raises(Cancelled):
        fill.finish(job, timeout=900)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), drawn)
    assert fill.logic.canUndo(node) == undoable  # a cancelled fill saves no undo state
    # the user paints while the worker runs: nothing is written over the edit
    job = fill.start(node, segment_id(node), volume, 0)
    painted = drawn.copy()
    painted[indices[0] + 1] = truth[indices[0] + 1]
    set_segment(node, "left lung", volume, painted)
    with pytest.raises(InputError, match="edited while the fill ran"):
        fill.finish(job, timeout=900)
    np.testing.assert_array_equal(segment_array(node, "left lung", volume), painted)
    set_segment(node, "left lung", volume, np.zeros_like(drawn))
    with pytest.raises(InputError, match="no drawn axial slice"):
        fill.start(node, segment_id(node), volume, 0)
    with pytest.raises(InputError, match="Select a segment"):
        fill.start(node, "no such id", volume, 0)
    # a segmentation under another transform than the volume: what is written would move, so it is refused
    set_segment(node, "left lung", volume, drawn)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(shift.GetID())
    with pytest.raises(InputError, match="under different transforms: harden"):
        fill.start(node, segment_id(node), volume, 0)
    with pytest.raises(InputError, match="under different transforms"):
        fill.logic.startPropagation(node, "left lung", volume, indices[0])
    with pytest.raises(InputError, match="under different transforms"):
        fill.logic.startSegmentation(volume, node, "CT", "thorax", ["liver"])
    node.SetAndObserveTransformNodeID(None)
    # a segment stored on a finer grid (drawn on another volume): writing it back on this one would resample it
    fine = slicer_shim.load_volume(chest_ct_path, "fine")
    fine.SetSpacing(*(s / 2 for s in volume.GetSpacing()))
    fine.SetOrigin(volume.GetOrigin())
    finer = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    finer.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    finer.GetSegmentation().AddEmptySegment("lung", "lung")
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn.astype(np.uint8), finer, "lung", fine)
    with pytest.raises(InputError, match="'lung' is stored on another grid than 'CTChest'"):
        fill.start(finer, "lung", volume, 0)
    with pytest.raises(InputError, match="stored on another grid"):
        fill.logic.startPropagation(finer, "lung", volume, indices[0])
    job = fill.start(finer, "lung", fine, 0)  # on its own grid it is filled (cancelled here: time)
    job.cancel()
    with pytest.raises(Cancelled):
        fill.finish(job, timeout=900)


def test_the_axis_is_the_volume_axis_across_the_slice_view(scene, chest_ct_path):
    from PromptSegSlicer import InputError
    from PromptSegSlicer.fill import axisOfSliceView, ijkToWorldMatrix

    volume = slicer_shim.load_volume(chest_ct_path, "CTChest")
    ijk_to_world = ijkToWorldMatrix(volume)

    def view(rotation):
        slice_to_ras = np.eye(4)
        slice_to_ras[:3, :3] = rotation
        return slice_to_ras

    def tilt(degrees):  # about the R axis
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        return np.array([[1, 0, 0], [0, c, s], [0, -s, c]])

    views = {"Red": (0, np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]])),  # Slicer's default slice orientations
             "Green": (1, np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]])),
             "Yellow": (2, np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]]))}
    for name, (axis, rotation) in views.items():
        assert axisOfSliceView(view(rotation), ijk_to_world) == axis, name
    assert axisOfSliceView(view(tilt(5)), ijk_to_world) == 0  # an axial view tilted by 5 degrees: still across k
    with pytest.raises(InputError, match="tilted by 26 degrees .* Rotate to volume plane"):
        axisOfSliceView(view(tilt(26)), ijk_to_world)  # a stroke would fall on several slices
    # the volume under a transform that stands its slices upright: the coronal view now cuts across them
    turn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    upright = np.eye(4)
    upright[:3, :3] = tilt(90)
    turn.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(upright))
    volume.SetAndObserveTransformNodeID(turn.GetID())
    assert axisOfSliceView(view(views["Green"][1]), ijkToWorldMatrix(volume)) == 0
    assert axisOfSliceView(view(views["Red"][1]), ijkToWorldMatrix(volume)) == 1


def effect_uses():
    """(class, kind, name, line) for each connect, call and property on the Qt objects the effect makes
    (``self.x = qt.QClass()``) and on its ``scriptedEffect``."""
    tree = ast.parse(EFFECT.read_text())
    owned = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                and isinstance(node.value.func.value, ast.Name) and node.value.func.value.id == "qt"):
            owned[node.targets[0].attr] = node.value.func.attr
    owned["scriptedEffect"] = "scriptedEffect"
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        value = node.value if isinstance(node, ast.Attribute) else None
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.attr in owned \
                and value.value.id in ("self", "scriptedEffect"):
            owner = owned[value.attr]
        elif isinstance(value, ast.Name) and value.id == "scriptedEffect":
            owner = "scriptedEffect"
        else:
            continue
        kind = "signal" if node.attr == "connect" else "method" if id(node) in calls else "property"
        name = calls[id(node)].args[0].value if kind == "signal" else node.attr
        found.append((owner, kind, name, node.lineno))
    return found


def test_every_signal_property_and_method_the_effect_uses_exists():
    found = effect_uses()
    owners = {owner for owner, _, _, _ in found}
    assert {"QPushButton", "QTimer", "QProgressBar", "QComboBox", "QLabel", "scriptedEffect"} <= owners
    wrong = []
    for owner, kind, name, line in found:
        if owner == "scriptedEffect":  # a method may be passed on uncalled (saveStateForUndo)
            ok = name in SCRIPTED_EFFECT["methods"] | (SCRIPTED_EFFECT["properties"] if kind == "property" else set())
        else:
            ok = (normalized(name) in signals(owner) if kind == "signal" else
                  has_method(owner, name) if kind == "method" else has_property(owner, name))
        if not ok:
            wrong.append(f"{EFFECT.name}:{line}: {owner} has no {kind} {name}")
    assert not wrong, "\n".join(wrong)


def test_the_module_registers_the_effect_from_its_file():
    source = (EFFECT.parents[1] / "PromptSeg.py").read_text()
    assert 'slicer.app.connect("startupCompleted()", registerEditorEffect)' in source
    assert '"PromptSegEffects" / "SegmentEditorFillWithPromptSeg.py"' in source
    tree = ast.parse(EFFECT.read_text())
    effect = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentEditorEffect")
    assert {"register", "clone", "icon", "helpText", "setupOptionsFrame", "onApply"} <= {
        f.name for f in effect.body if isinstance(f, ast.FunctionDef)}
    cmake = (EFFECT.parents[1] / "CMakeLists.txt").read_text()
    assert "PromptSegEffects/SegmentEditorFillWithPromptSeg.py" in cmake and "PromptSegSlicer/fill.py" in cmake

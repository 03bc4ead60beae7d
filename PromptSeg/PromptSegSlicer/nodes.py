"""MRML node helpers every panel shares: the error for a request that cannot run (``InputError``), checking a
volume node, its voxels as a SimpleITK image with the same geometry, and placing a new node in the volume's
study (subject hierarchy). No Qt.
"""
from __future__ import annotations

import numpy as np
import slicer
import vtk


class InputError(ValueError):
    """The request cannot be run: no volume, wrong kind of volume, no target... The message says why."""


def validateVolumeNode(volumeNode) -> None:
    """Refuse what PromptSeg cannot segment, with a reason the user can act on."""
    if volumeNode is None:
        raise InputError("No input volume selected: choose the image to segment.")
    if not volumeNode.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()}, not a volume.")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a labelmap (a segmentation), not an image: choose the "
                         "CT, MR or PET volume it was made from.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLTensorVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()} (vector, tensor or "
                         "multi-frame); PromptSeg needs a single 3D scalar volume. Extract one frame or channel "
                         "first.")
    image = volumeNode.GetImageData()
    if image is None:
        raise InputError(f"'{volumeNode.GetName()}' has no voxels loaded.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} values per voxel "
                         "(a 4D, colour or vector volume); PromptSeg needs a single 3D scalar volume.")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"'{volumeNode.GetName()}' is {dims[0]}x{dims[1]}x{dims[2]} voxels: a single slice, "
                         "not a 3D volume.")


def checkSameTransform(node, volumeNode) -> None:
    """Refuse ``node`` (a segmentation, or another volume) under another transform than ``volumeNode``: voxels are
    read and written on the volume's grid, and a transform between the two would move what is written."""
    if node is not None and node.GetTransformNodeID() != volumeNode.GetTransformNodeID():
        raise InputError(f"'{node.GetName()}' and '{volumeNode.GetName()}' are under different transforms: harden "
                         "the transforms first (Data module: right-click, Harden transform).")


def checkSegmentOnVolumeGrid(segmentationNode, segmentId: str, volumeNode, mask: np.ndarray) -> None:
    """Refuse a segment that the volume's grid cannot hold as it is: stored on another lattice (spacing, axes or
    voxel corners), or with voxels outside the volume. A fill or a propagation writes the whole segment back on the
    volume's grid, which would resample it, lose those voxels, and could change a slice the user drew.

    Args:
        mask: the segment read on the volume's grid (bool ``[k, j, i]``, ``arrayFromSegmentBinaryLabelmap``).
    """
    from vtk.util.numpy_support import vtk_to_numpy

    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    scalars = labelmap.GetPointData().GetScalars()
    count = int((vtk_to_numpy(scalars) > 0).sum()) if scalars is not None else 0
    if not count:
        return
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    # the segment's voxel indices -> the volume's
    onVolume = np.linalg.inv(ijkToRasMatrix(volumeNode)) @ slicer.util.arrayFromVTKMatrix(matrix)
    lattice = np.allclose(onVolume[:3, :3], np.eye(3), atol=1e-3) and np.allclose(
        onVolume[:3, 3], np.round(onVolume[:3, 3]), atol=1e-3)
    if not lattice or count != int(np.count_nonzero(mask)):
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        where = "reaches beyond" if lattice else "is stored on another grid than"
        raise InputError(f"segment '{name}' {where} '{volumeNode.GetName()}': filling it there would resample it or "
                         "cut it. Choose the volume it was drawn on as the source volume, or set the segmentation's "
                         "geometry to this volume first (Segment Editor: Specify geometry).")


def ijkToRasMatrix(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeNodeToSimpleITK(volumeNode):
    """A copy of a scalar volume node as a SimpleITK image (ITK geometry is LPS, Slicer's is RAS).

    The voxel array keeps Slicer's ``[k, j, i]`` order, so index ``(i, j, k)`` is the same voxel in both.
    Any direction matrix is kept as is (oblique, or non-orthogonal where ITK accepts it).
    """
    import SimpleITK as sitk

    validateVolumeNode(volumeNode)
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    image = sitk.GetImageFromArray(array)
    spacing = np.array(volumeNode.GetSpacing(), dtype=float)
    ijkToRas = ijkToRasMatrix(volumeNode)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)  # columns: unit i, j, k axes in RAS (not divided: exact)
    directions = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    rasToLps = np.diag([-1.0, -1.0, 1.0])
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((rasToLps @ ijkToRas[:3, 3]).tolist())
    try:
        image.SetDirection((rasToLps @ directions).ravel().tolist())
    except RuntimeError as exc:
        raise InputError(f"'{volumeNode.GetName()}' has a direction matrix ITK cannot use ({exc}); resample it "
                         "(Resample Scalar/Vector/DWI Volume) first.") from exc
    return image


def placeInStudy(scene, node, volumeNode) -> None:
    """Put ``node`` under the volume's parent (its study) in the scene's subject hierarchy."""
    shNode = scene.GetSubjectHierarchyNode()
    if shNode is None:
        return
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    if not volumeItem:
        return
    parent = shNode.GetItemParent(volumeItem) or shNode.GetSceneItemID()
    nodeItem = shNode.GetItemByDataNode(node)
    if not nodeItem:  # the application's subject hierarchy plugins add items; the core does not
        shNode.CreateItem(parent, node)
    elif shNode.GetItemParent(nodeItem) != parent:
        shNode.SetItemParent(nodeItem, parent)

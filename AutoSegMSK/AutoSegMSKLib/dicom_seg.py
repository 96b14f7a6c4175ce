"""DICOM SEG export of a segmentation node into the DICOM database its input came from."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from mskai import MskaiError
from SlicerMSKCommon.nodes import ijk_to_ras, node_array

from .segmentations import label_volume


def source_frames(volumeNode, databaseDir) -> list[str]:
    """The files of ``volumeNode``'s DICOM series, one per slice k, checked to have exactly its geometry.

    Slicer records the SOP Instance UIDs of a loaded series in the node attribute ``DICOM.instanceUIDs``.
    """
    from mskai.dicom import DicomDatabase, plan_volumes
    from mskai.dicom.scan import scan_files
    from mskai.volume import LPS_TO_RAS

    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise MskaiError(f"Volume {volumeNode.GetName()!r} was not loaded from the DICOM database: a DICOM SEG needs "
                         "the source series (save the segmentation as .seg.nrrd instead)")
    with DicomDatabase(databaseDir) as database:
        files = database.files_for_instances(uids)
    series = scan_files(files).series
    if len(series) != 1:
        raise MskaiError(f"The images of {volumeNode.GetName()!r} belong to {len(series)} series; expected one")
    shape = tuple(node_array(volumeNode).shape)
    affine_lps = LPS_TO_RAS @ ijk_to_ras(volumeNode)
    for plan in plan_volumes(series[0]):
        if plan.shape == shape and not plan.uneven_gaps and np.allclose(plan.affine_lps, affine_lps, atol=1e-3):
            return [frame.path for frame in plan.frames]
    raise MskaiError(f"The geometry of {volumeNode.GetName()!r} differs from its DICOM files (resampled, cropped or "
                     "regularised after loading?): a DICOM SEG cannot reference them")


def export_dicom_seg(scene, segmentationNode, volumeNode, databaseDir, importer=None) -> str:
    """Write the SEG into ``<database>/AutoSegMSK/<new folder>/`` and index it (``importer(folder)`` when given)."""
    from mskai.dicom.database import index_folder
    from mskai.segment.outputs import write_dicom_seg

    frames = source_frames(volumeNode, databaseDir)
    labels = label_volume(scene, segmentationNode, volumeNode)
    labels.meta["frame_files"] = frames
    model_id, _, version = (segmentationNode.GetAttribute("AutoSegMSK.model") or "manual@0").partition("@")
    folder = Path(databaseDir) / "AutoSegMSK" / f"seg-{uuid.uuid4().hex[:12]}"  # no identifiers in the name
    folder.mkdir(parents=True)
    path = write_dicom_seg(labels, folder / "segmentation.dcm", model_id, version)
    if importer is not None:
        importer(str(folder))
    else:
        report = index_folder(folder, databaseDir)
        if report.problems:
            raise MskaiError(f"The DICOM SEG was written to {path} but not indexed: {report.problems[0]}")
    return str(path)

"""DICOM ingestion: find series (folders, Slicer DICOM databases), build volumes, detect planes, anonymise."""

from mskai.dicom.database import DicomDatabase, index_folder, is_database
from mskai.dicom.plane import detect_plane
from mskai.dicom.scan import ScanReport, Series, scan_folder
from mskai.dicom.series import VolumePlan, chosen_plans, load_series, plan_volumes, read_volume


def scan_source(source, series_uids=None) -> ScanReport:
    """Series of a folder tree, a single file, or a Slicer DICOM database (its folder or ctkDICOM.sql)."""
    if is_database(source):
        with DicomDatabase(source) as db:
            return db.scan(series_uids)
    return scan_folder(source)


__all__ = [
    "DicomDatabase", "ScanReport", "Series", "VolumePlan", "detect_plane", "index_folder", "load_series",
    "chosen_plans", "plan_volumes", "read_volume", "scan_folder", "scan_source",
]

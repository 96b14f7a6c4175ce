"""Segment one volume into one output folder: the unit of work of `mskai segment`, batch runs and the Slicer module."""

from __future__ import annotations

import time
from pathlib import Path

from mskai import MskaiError
from mskai.models.registry import resolve_model
from mskai.models.tasks import SEGMENTATION
from mskai.segment.infer import SegmentOptions
from mskai.volume import Volume

DEFAULT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "stl", "ply", "obj", "report")  # `mskai segment`'s default


def _formats(formats) -> tuple:
    """Checked output formats: a comma-separated string (as --formats) or a sequence (may be empty: e.g. only
    the DICOM SEG or the confidence map)."""
    from mskai.segment.outputs import parse_formats

    if isinstance(formats, str):
        return parse_formats(formats)
    return parse_formats(",".join(formats)) if formats else ()


def segment_to_folder(volume_or_loader, package, output, *, options: SegmentOptions | None = None,
                      formats=DEFAULT_FORMATS, dicom_seg: bool = False, progress=None, cancel=None,
                      inputs=()) -> dict:
    """Segment one volume and write every requested output into the folder ``output``, as one unit.

    volume_or_loader: a Volume, or a zero-argument callable returning one; it is called after the cheap checks
        (formats, output folder, model), so a bad output or model is reported before a series is read.
    package: a loaded ModelPackage (load it once for a batch), or a model id[@version] or package path.
    output: new, empty, or an earlier mskai output folder; it is replaced as a whole when everything has been
        written, and left as it was on any error (or Cancelled).
    options: SegmentOptions (``options.confidence`` adds confidence.nrrd and the per-bone confidence numbers).
    formats: a comma-separated string or a sequence of ``outputs.FORMATS``.
    dicom_seg: also write segmentation.dcm (needs a DICOM input; it carries the patient's identity).
    progress, cancel: as for ``segment_volume``.
    inputs: the paths the volume is read from: ``output`` may not be, contain or lie inside any of them.
    Returns write_outputs' {"files": {kind: path or [paths]}, "report": dict}, the paths inside ``output``.
    """
    from mskai.outputs import output_folder
    from mskai.segment.infer import segment_volume
    from mskai.segment.labels import labels_from_table
    from mskai.segment.outputs import write_outputs

    formats = _formats(formats)
    options = options or SegmentOptions()
    if not isinstance(volume_or_loader, Volume) and not callable(volume_or_loader):
        raise MskaiError(f"Expected a Volume or a function that reads one, not {type(volume_or_loader).__name__}")
    final = Path(output).resolve()
    package = resolve_model(package, SEGMENTATION)
    with output_folder(output, SEGMENTATION, inputs) as staging:
        t = time.perf_counter()
        volume = volume_or_loader if isinstance(volume_or_loader, Volume) else volume_or_loader()
        if not isinstance(volume, Volume):
            raise MskaiError(f"The volume loader returned {type(volume).__name__}, not a Volume")
        load_s = time.perf_counter() - t
        result = segment_volume(volume, package, options, progress=progress, cancel=cancel)
        del volume
        timings = {"load": load_s, **result.timings}
        out = write_outputs(result.labels, staging, model=package, timings=timings, settings=result.settings,
                            formats=formats, dicom_seg=dicom_seg, table=labels_from_table(package.metadata["labels"]),
                            confidence=result.confidence)
        del result

    def moved(path):  # staging -> its final place
        return str(final / Path(path).relative_to(staging))

    out["files"] = {k: ([moved(p) for p in v] if isinstance(v, list) else moved(v)) for k, v in out["files"].items()}
    return out

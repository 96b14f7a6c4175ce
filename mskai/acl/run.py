"""Classify a study (or a series, a database, a volume file) into an output folder: the unit of work of `mskai
classify`, batch runs and the Slicer module. Case sets and evaluation: ``mskai.training.acl_sets``."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from mskai import MskaiError
from mskai.models.tasks import ACL_CLASSIFICATION, ACL_MODEL


def _input(source, series_key=None, show_descriptions=False, series_list=None):
    """(Volume, reason, series UID or None): a volume file as it is, or the sagittal series chosen from a
    series/study/database (or from ``series_list``, the already scanned series of one study)."""
    from mskai.acl.series import choose_series
    from mskai.dicom import read_volume, scan_source
    from mskai.volume_files import is_volume_file, read_volume_file

    if series_list is not None:
        plan, reason = choose_series(series_list, show_descriptions=show_descriptions)
        return read_volume(plan), reason, plan.series.uid
    path = Path(source)
    if is_volume_file(path):
        if series_key:
            raise MskaiError("--series applies to DICOM input, not to a volume file")
        volume = read_volume_file(path)
        return volume, f"volume file {path.name}", None
    report = scan_source(source)
    studies = {s.study_uid for s in report.require_series(str(source)) if s.is_image}
    if len(studies) > 1 and not series_key:
        raise MskaiError(f"{source} holds {len(studies)} studies; choose a series with --series (see `mskai dicom ls`) "
                         "or classify one study folder at a time")
    plan, reason = choose_series(report, series_key, show_descriptions=show_descriptions)  # numbered as `dicom ls`
    return read_volume(plan), reason, plan.series.uid


def classify_to_folder(source, output, *, model=ACL_MODEL, series_key=None, show_descriptions=False,
                       progress=None, series_list=None) -> dict:
    """Classify the ACL on the sagittal series of ``source`` (or of ``series_list``, one study's scanned series)
    and write report.json, cam.nrrd and key_slice.png into ``output`` as one unit.

    model: an id[@version], a package path, or a loaded package. Returns the report as written (it names no
    patient) plus, in memory only, "series_uid": the chosen series' UID (None for a volume file).
    """
    from mskai.acl.anatomy import anatomy_of, read_anatomy
    from mskai.acl.infer import classify_volume, key_slice_png
    from mskai.acl.ligaments import LIGAMENT_TABLE
    from mskai.models.registry import resolve_model
    from mskai.segment.outputs import write_seg_nrrd
    from mskai.outputs import atomic_output, output_folder
    from mskai.volume_files import write_volume

    progress = progress or (lambda stage, fraction: None)
    with output_folder(output, ACL_CLASSIFICATION, inputs=[source]) as staging:
        package = resolve_model(model, ACL_CLASSIFICATION)
        start = time.perf_counter()
        progress("load", 0.0)
        volume, reason, series_uid = _input(source, series_key, show_descriptions, series_list)
        load_s = time.perf_counter() - start
        progress("classify", 0.0)
        result = classify_volume(volume, package)
        anatomy = None
        if anatomy_of(package) is not None:
            progress("anatomy", 0.0)
            t = time.perf_counter()
            ligaments, anatomy = read_anatomy(volume, package)
            result.notes["timings_s"]["anatomy"] = time.perf_counter() - t
            write_seg_nrrd(ligaments, staging / "ligaments.seg.nrrd", LIGAMENT_TABLE)
        progress("write", 0.0)
        write_volume(result.cam, staging / "cam.nrrd")
        demo = package.metadata["demo"]
        report = {
            "model": {"id": package.id, "version": package.version, "demo": demo},
            "notice": "Demo model trained on synthetic data: not for clinical use." if demo else "",
            "series": {"reason": reason, "shape": list(volume.shape),
                       "spacing_mm": [round(float(s), 4) for s in volume.spacing]},
            "probabilities": {k: round(v, 6) for k, v in result.probabilities.items()},
            "predicted": result.predicted,
            "key_slice": result.key_slice,
            "key_slice_axis": result.slice_axis,
            "key_slice_note": "0-based index along voxel axis key_slice_axis (0 = i, 1 = j, 2 = k) of the input; "
                              "key_slice.png shows it",
            "preprocessing": {k: v for k, v in result.notes.items() if k != "timings_s"},
            "timings_s": {"load": round(load_s, 3), **{k: round(v, 3) for k, v in result.notes["timings_s"].items()}},
            "files": {"cam": "cam.nrrd", "key_slice": "key_slice.png"},
        }
        if anatomy is not None:
            report.update(verdict_from_anatomy(anatomy, report, package.metadata["classes"]))
            report["files"]["ligaments"] = "ligaments.seg.nrrd"
        key_slice_png(volume, replace(result, probabilities=report["probabilities"], predicted=report["predicted"]),
                      staging / "key_slice.png", cam_of=result.predicted)  # titled with the report's verdict
        with atomic_output(staging / "report.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        progress("write", 1.0)
    return {**report, "series_uid": series_uid}


def verdict_from_anatomy(anatomy: dict, report: dict, classes) -> dict:
    """The report's verdict when the package reads anatomy: the tear signs' grade and probabilities (as the
    package's classes: four grades or intact / torn); "indeterminate" with its reason, the image classifier's
    probabilities kept beside it, when the signs give none. The image classifier's own output stays under "cnn"."""
    from mskai.acl import BINARY_CLASSES, GRADES, to_binary
    from mskai.acl.anatomy import INDETERMINATE

    out = {"anatomy": anatomy, "cnn": {"probabilities": report["probabilities"], "predicted": report["predicted"]}}
    if anatomy["grade"] == INDETERMINATE:
        return out | {"predicted": INDETERMINATE, "indeterminate_reason": anatomy["reason"],
                      "probabilities_source": "image classifier (the anatomy gave no grade)"}
    if tuple(classes) == BINARY_CLASSES:
        p_torn = anatomy["p_torn"]
        probabilities = {"intact": round(1 - p_torn, 6), "torn": round(p_torn, 6)}
        predicted = BINARY_CLASSES[to_binary(GRADES.index(anatomy["grade"]))]
    else:
        probabilities, predicted = dict(anatomy["probabilities"]), anatomy["grade"]
    return out | {"probabilities": probabilities, "predicted": predicted, "probabilities_source": "tear signs"}


# --- cases for training and evaluation ---------------------------------------------------------------------

"""Segmentation files: label maps, Slicer .seg.nrrd, DICOM SEG, meshes and the per-bone report; and reading them back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from mskai import MskaiError, __version__
from mskai.outputs import atomic_output, suffix_of, write_csv
from mskai.segment.labels import ANATOMICAL_CATEGORY, BONES, terminology_tag
from mskai.volume import Volume
from mskai.volume_files import read_volume_file, write_volume


def write_seg_nrrd(labels: Volume, path, table=BONES) -> Path:
    """A Slicer segmentation file: one layer, one segment per label with name, colour and SNOMED terminology."""
    import slicerio

    segments = []
    boxes = ndimage.find_objects(labels.array)
    for label in table:
        box = boxes[label.value - 1] if label.value <= len(boxes) else None
        extent = [v for s in box for v in (s.start, s.stop - 1)] if box else [0, -1, 0, -1, 0, -1]
        segments.append({"id": label.name, "name": label.name, "labelValue": label.value, "layer": 0,
                         "color": list(label.color), "extent": extent,
                         "tags": {"TerminologyEntry": terminology_tag(label), "Segmentation.Status": "inprogress"}})
    segmentation = {"voxels": np.asarray(labels.array, dtype=np.uint8), "ijkToLPS": labels.affine_lps,
                    "segments": segments, "containedRepresentationNames": ["Binary labelmap"],
                    "masterRepresentation": "Binary labelmap"}
    with atomic_output(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)
    return Path(path)


def _code(value, meaning):
    from pydicom.sr.coding import Code

    return Code(value, "SCT", meaning)


def write_dicom_seg(labels: Volume, path, model_id: str, model_version: str, table=BONES) -> Path:
    """A DICOM Segmentation object (highdicom) that references the source series the volume was read from.

    It carries the patient and study of its source, as DICOM requires; write it only when the user asks.
    """
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    files = labels.meta.get("frame_files")
    if not files:
        raise MskaiError("A DICOM SEG needs a DICOM input series (this volume did not come from DICOM files)")
    if labels.meta.get("resampled"):
        raise MskaiError("The input slices were resampled onto an even grid; a DICOM SEG cannot reference them")
    if len(set(files)) != len(files):
        raise MskaiError("DICOM SEG output supports single-frame source images only")
    sources = [pydicom.dcmread(f) for f in files]
    frames = np.ascontiguousarray(np.asarray(labels.array, dtype=np.uint8).transpose(2, 1, 0))  # (k, rows, cols)
    present = [label for label in table if np.any(frames == label.value)]
    if not present:
        raise MskaiError("Nothing was segmented: no DICOM SEG written")
    remap = np.zeros(256, dtype=np.uint8)
    for number, label in enumerate(present, start=1):
        remap[label.value] = number
    algorithm = hd.AlgorithmIdentificationSequence(name=model_id, version=model_version,
                                                   family=_code("123037004", "Anatomical Structure"))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.name,
            segmented_property_category=_code(ANATOMICAL_CATEGORY[0], ANATOMICAL_CATEGORY[2]),
            segmented_property_type=_code(label.snomed_code, label.snomed_meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, label in enumerate(present, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=remap[frames], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="SlicerAutoSegMSK",
        manufacturer_model_name=model_id, software_versions=__version__, device_serial_number="0",
        series_description=f"{model_id} bones", omit_empty_frames=True)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


CONFIDENCE_FILE = "confidence.nrrd"
CONFIDENCE_DESCRIPTION = {
    "file": CONFIDENCE_FILE,
    "definition": "1 - H(p)/log(C): one minus the normalised entropy of the network's C class probabilities "
                  "(background included), interpolated onto the input grid; 1 = one class certain, 0 = all "
                  "classes equally likely",
    "stored_as": "uint8 percent (0-100, rounded)",
    "outside_slab": 0,
    "per_bone": "mean_confidence, p05_confidence (5th percentile, a value of the map) and uncertain_fraction "
                "(share of the bone's voxels below 0.5) over the bone's voxels of the final labels",
}


def _check_confidence_grid(labels: Volume, confidence: Volume):
    if confidence.shape != labels.shape or not np.allclose(confidence.affine_lps, labels.affine_lps, atol=1e-4):
        raise MskaiError(f"The confidence map {confidence.shape} is not on the label map's grid {labels.shape}")


def confidence_histograms(labels: Volume, confidence: Volume) -> np.ndarray:
    """256 x 101 voxel counts: [label value, confidence percent]. Counted in blocks (bounded memory).

    confidence: uint8 percent (0-100, the stored form) or float in [0, 1] (rounded to percent; NaN counts as 0).
    """
    _check_confidence_grid(labels, confidence)
    flat = np.asarray(labels.array).reshape(-1)
    conf = np.asarray(confidence.array).reshape(-1)
    histogram = np.zeros(256 * 101, dtype=np.int64)
    block = 2**22
    for i in range(0, flat.size, block):
        c = conf[i:i + block]
        if c.dtype.kind == "f":
            c = np.rint(np.clip(np.nan_to_num(c, nan=0.0), 0.0, 1.0) * 100)
        elif c.size and int(c.max()) > 100:
            raise MskaiError("A confidence map in percent holds values above 100")
        index = np.clip(flat[i:i + block], 0, 255).astype(np.int64) * 101 + c.astype(np.int64)
        histogram += np.bincount(index, minlength=256 * 101)
    return histogram.reshape(256, 101)


def _confidence_numbers(histogram: np.ndarray) -> dict:
    """mean, 5th percentile (the lowest value at or above 5 % of the voxels) and share below 0.5 of one bone."""
    n = int(histogram.sum())
    if n == 0:
        return {"mean_confidence": None, "p05_confidence": None, "uncertain_fraction": None}
    percent = np.arange(101)
    p05 = int(np.searchsorted(np.cumsum(histogram), 0.05 * n))  # inverted CDF: a value that occurs in the map
    return {"mean_confidence": round(float(histogram @ percent) / n / 100, 4),
            "p05_confidence": round(p05 / 100, 2),
            "uncertain_fraction": round(float(histogram[:50].sum()) / n, 4)}


def bone_statistics(labels: Volume, table=BONES, surfaces=None, confidence: Volume | None = None) -> list[dict]:
    """Per bone: voxels, volume (mL, from the real voxel size), surface area, bounding box in LPS mm; with a
    confidence map (see CONFIDENCE_DESCRIPTION) also mean_confidence, p05_confidence and uncertain_fraction
    over the bone's voxels (None without a map or when the bone is absent)."""
    voxel_ml = float(abs(np.linalg.det(labels.affine_lps[:3, :3]))) / 1000.0
    flat = np.asarray(labels.array).reshape(-1)  # counted in blocks: bincount widens to int64 (8x the labels)
    counts = sum(np.bincount(flat[i:i + 2**24], minlength=256) for i in range(0, flat.size, 2**24))
    histograms = confidence_histograms(labels, confidence) if confidence is not None else None
    boxes = ndimage.find_objects(labels.array)
    rows = []
    for label in table:
        row = {"value": label.value, "name": label.name, "snomed_code": label.snomed_code,
               "voxels": int(counts[label.value]), "volume_ml": round(counts[label.value] * voxel_ml, 3),
               "surface_area_cm2": None, "bbox_lps_min_mm": None, "bbox_lps_max_mm": None,
               **_confidence_numbers(histograms[label.value] if histograms is not None else np.zeros(101))}
        box = boxes[label.value - 1] if label.value <= len(boxes) else None
        if box is not None:
            corners = np.array([[s.start - 0.5, s.stop - 0.5][c] for s in box for c in (0, 1)]).reshape(3, 2)
            pts = labels.ijk_to_lps(np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1).T)
            row["bbox_lps_min_mm"] = [round(float(v), 2) for v in pts.min(0)]
            row["bbox_lps_max_mm"] = [round(float(v), 2) for v in pts.max(0)]
        if surfaces and surfaces.get(label.value) is not None:
            from mskai.segment.meshes import surface_area_mm2

            row["surface_area_cm2"] = round(surface_area_mm2(surfaces[label.value]) / 100.0, 3)
        rows.append(row)
    return rows


def write_report(report: dict, folder) -> tuple[Path, Path]:
    """report.json (everything) and report.csv (one row per bone). No patient data goes in either."""
    folder = Path(folder)
    with atomic_output(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    fields = ["value", "name", "snomed_code", "voxels", "volume_ml", "surface_area_cm2", "bbox_lps_min_mm",
              "bbox_lps_max_mm", "mean_confidence", "p05_confidence", "uncertain_fraction"]
    rows = [{k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()} for row in report["bones"]]
    return folder / "report.json", write_csv(folder / "report.csv", rows, fields)


# --- reading segmentations back (evaluation, training labels) -------------------------------------------


def _value_for(name: str, code: str | None, table) -> int | None:
    """The label a segment is: by its SNOMED code where one label has it, else by name (ACL and PCL share one)."""
    by_code = [label for label in table if code and code == label.snomed_code]
    if len(by_code) == 1:
        return by_code[0].value
    return next((label.value for label in table if name.strip().lower() == label.name), None)


def merge_binary_masks(masks: dict) -> np.ndarray:
    """The seed's helper: {label value: binary mask} -> one multi-class map; overlapping voxels become background."""
    arrays = list(masks.values())
    out = np.zeros(np.shape(arrays[0]), dtype=np.uint8)
    count = np.zeros(np.shape(arrays[0]), dtype=np.uint8)
    for value, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        out[mask] = value
        count += mask
    out[count > 1] = 0
    return out


def label_map_from_segments(masks, ijk_to_lps, table) -> Volume:
    """Per-segment masks [(name, SNOMED code, bool array)] -> label map of ``table`` (matched by code or name)."""
    by_value = {}
    for name, code, mask in masks:
        value = _value_for(name, code, table)
        if value is not None:
            by_value[value] = by_value.get(value, False) | mask
    if not by_value:
        raise MskaiError("No segment matches a bone of the label table (by SNOMED code or name)")
    return Volume(merge_binary_masks(by_value), ijk_to_lps, label="reference")


def read_segmentation(path, table=BONES) -> Volume:
    """A bone label map (values of ``table``) from a label-map volume, a Slicer .seg.nrrd, or a DICOM SEG."""
    path = Path(path)
    kind = suffix_of(path)
    if kind == ".seg.nrrd":
        import slicerio

        seg = slicerio.read_segmentation(str(path))
        masks = []
        for segment in seg["segments"]:
            kind = (segment.get("terminology") or {}).get("type") or [None, None]  # [scheme, code, meaning]
            code = kind[1]
            voxels = seg["voxels"] if seg["voxels"].ndim == 3 else seg["voxels"][segment.get("layer", 0)]
            masks.append((segment["name"], code, voxels == segment["labelValue"]))
        return label_map_from_segments(masks, np.asarray(seg["ijkToLPS"]), table)
    if kind in (".dcm", "") and path.is_file():
        return _read_dicom_seg(path, table)
    volume = read_volume_file(path)
    array = np.asarray(volume.array)
    if array.dtype.kind == "f":
        if not np.all(np.isclose(array, np.round(array))):
            raise MskaiError(f"{path.name} is not a label map (non-integer values)")
    valid = {0} | {label.value for label in table}
    unknown = sorted(set(np.unique(array).astype(int)) - valid)
    if unknown:
        raise MskaiError(f"{path.name} has label values {unknown} outside the label table (0-{max(valid)})")
    return Volume(array.astype(np.uint8), volume.affine_lps, label="reference")


def _read_dicom_seg(path, table) -> Volume:
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise MskaiError(f"{path.name} is not a DICOM SEG ({exc.__class__.__name__}: {exc})") from None
    volume = seg.get_volume(combine_segments=False)
    masks = []
    for i, number in enumerate(seg.segment_numbers):
        desc = seg.get_segment_description(number)
        masks.append((desc.segment_label, desc.segmented_property_type.value, volume.array[..., i] > 0))
    return label_map_from_segments(masks, volume.affine, table)


FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "stl", "ply", "obj", "report")


def parse_formats(text: str) -> tuple:
    """A comma-separated list of output formats, each one of FORMATS."""
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise MskaiError(f"Unknown output format(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(FORMATS)}")
    return formats


def write_outputs(labels: Volume, folder, *, model, timings: dict, settings: dict, formats=("nii.gz", "nrrd",
                  "seg.nrrd", "stl", "report"), dicom_seg: bool = False, table=BONES,
                  confidence: Volume | None = None) -> dict:
    """Write every requested output into ``folder``; returns {kind: path(s)} and the report dict.

    confidence: a confidence map on the labels' grid (``SegmentResult.confidence``): written as confidence.nrrd
    (whatever ``formats`` says) and summarised per bone in the report.
    """
    import time

    from mskai.segment.meshes import surfaces as bone_surfaces, write_mesh

    folder = Path(folder)
    if confidence is not None:
        _check_confidence_grid(labels, confidence)  # before anything is written
    written, t = {}, time.perf_counter()
    for ext in ("nii.gz", "nrrd"):
        if ext in formats:
            written[f"labelmap_{ext}"] = str(write_volume(labels, folder / f"labels.{ext}"))
    if "seg.nrrd" in formats:
        written["seg_nrrd"] = str(write_seg_nrrd(labels, folder / "segmentation.seg.nrrd", table))
    if confidence is not None:
        written["confidence_nrrd"] = str(write_volume(confidence, folder / CONFIDENCE_FILE))
    timings["write_volumes"] = time.perf_counter() - t

    t = time.perf_counter()
    mesh_formats = [f for f in ("stl", "ply", "obj") if f in formats]
    surfaces = bone_surfaces(labels.array, [label.value for label in table], labels.affine_lps)
    timings["meshes"] = time.perf_counter() - t
    t = time.perf_counter()
    for label in table:
        if surfaces[label.value] is None:
            continue
        for ext in mesh_formats:
            written.setdefault(f"mesh_{ext}", []).append(str(write_mesh(surfaces[label.value],
                                                                       folder / "meshes" / f"{label.name}.{ext}")))
    if dicom_seg:
        written["dicom_seg"] = str(write_dicom_seg(labels, folder / "segmentation.dcm", model.id, model.version,
                                                   table))
    timings["write_meshes_seg"] = time.perf_counter() - t
    report = {
        "model": {"id": model.id, "version": model.version, "demo": model.metadata["demo"]},
        "notice": "Demo model trained on synthetic data: not for clinical use." if model.metadata["demo"] else "",
        "input": {"shape": list(labels.shape), "spacing_mm": [round(float(s), 4) for s in labels.spacing],
                  "plane": labels.meta.get("plane")},
        "settings": settings,
        "confidence": CONFIDENCE_DESCRIPTION if confidence is not None else None,
        "bones": bone_statistics(labels, table, surfaces, confidence),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "files": {k: ([Path(p).name for p in v] if isinstance(v, list) else Path(v).name) for k, v in written.items()},
    }
    if "report" in formats:
        written["report_json"], written["report_csv"] = map(str, write_report(report, folder))
    return {"files": written, "report": report}


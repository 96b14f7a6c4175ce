"""The ACL read from anatomy: the ligament segmentation, the tear signs measured on it, and the grade the signs
give, or "indeterminate" with the reason. An ACL package that reads anatomy says so in its metadata:

    "anatomy": {"ligament_model": "<id>[@version] of a knee-ligaments package", "grader": {...}}

``read_anatomy`` runs it on a volume; ``reread_anatomy`` measures again on a segmentation the radiologist corrected.
"""

from __future__ import annotations

import numpy as np

from mskai import MskaiError
from mskai.volume import Volume

INDETERMINATE = "indeterminate"


def anatomy_of(package) -> dict | None:
    """The package's anatomy section (checked), or None for an image-only classifier."""
    from mskai.acl.grading import check_grader

    section = package.metadata.get("anatomy")
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("ligament_model"), str):
        raise MskaiError(f"{package.source}: the anatomy section needs a ligament_model (a package id)")
    check_grader(section.get("grader"), package.source)
    return section


def ligament_package(package):
    from mskai.models.registry import resolve_model
    from mskai.models.tasks import KNEE_LIGAMENTS

    return resolve_model(anatomy_of(package)["ligament_model"], KNEE_LIGAMENTS)


def _landmarks_lps(landmarks: dict) -> dict:
    from mskai.acl.signs import frame_to_lps

    frame = landmarks["frame"]
    femoral, tibial = frame_to_lps(frame, [landmarks["acl_femur"], landmarks["acl_tibia"]])
    return {"blumensaat_line_lps": frame_to_lps(frame, landmarks["blumensaat"]).round(2).tolist(),
            "acl_femoral_footprint_lps": femoral.round(2).tolist(),
            "acl_tibial_footprint_lps": tibial.round(2).tolist()}


def grade_anatomy(labels: Volume, image: Volume, grader: dict) -> dict:
    """Signs, landmarks (patient LPS mm) and grade of a ligament label map on ``image``'s grid."""
    from mskai.acl.grading import grade_from_signs, threshold_of
    from mskai.acl.ligaments import LIGAMENT_VALUES
    from mskai.acl.signs import SignsUnavailable, signs_of_volume

    if labels.shape != image.shape or not np.allclose(labels.affine_lps, image.affine_lps, atol=1e-3):
        raise MskaiError("the ligament segmentation is not on the image's grid (another series or a resampled copy)")
    try:
        measured = signs_of_volume(labels, image, LIGAMENT_VALUES)
    except SignsUnavailable as exc:
        return {"grade": INDETERMINATE, "reason": str(exc), "signs": None, "landmarks": None, "probabilities": None,
                "p_torn": None, "threshold": threshold_of(grader)}
    graded = grade_from_signs(measured["signs"], grader)
    grade = graded["grade"] or INDETERMINATE
    return {"grade": grade, "reason": graded["indeterminate"], "signs": measured["signs"],
            "landmarks": _landmarks_lps(measured["landmarks"]), "probabilities": graded["probabilities"],
            "p_torn": graded["p_torn"], "threshold": graded["threshold"]}


def describe(anatomy: dict) -> str:
    """One line: the grade the signs give and the probability of a tear, or indeterminate and why."""
    if anatomy["reason"]:
        return f"{anatomy['grade']}: {anatomy['reason']}"
    from mskai.acl.grading import DEFAULT_THRESHOLD

    threshold = anatomy.get("threshold", DEFAULT_THRESHOLD)  # reports written before graders had one
    return f"{anatomy['grade']} (P torn {anatomy['p_torn']:.2f}, torn from {threshold:.2f})"


def read_anatomy(volume: Volume, package, ligaments=None, network=None) -> tuple:
    """(ligament label map on the volume's grid, grade_anatomy's result) with the package's ligament model
    (``ligaments``: that package already loaded, ``network`` its network)."""
    from mskai.acl.ligaments import segment_ligaments

    section = anatomy_of(package)
    ligaments = ligaments or ligament_package(package)
    labels = segment_ligaments(volume, ligaments, network)
    return labels, grade_anatomy(labels, volume, section["grader"])


def reread_anatomy(segmentation_path, image: Volume, package) -> dict:
    """grade_anatomy on a corrected segmentation (label map, .seg.nrrd or DICOM SEG with femur, tibia, ACL, PCL)."""
    from mskai.acl.ligaments import LIGAMENT_TABLE
    from mskai.segment.outputs import read_segmentation

    section = anatomy_of(package)
    if section is None:
        raise MskaiError(f"{package.id} {package.version} reads no anatomy: it cannot grade a segmentation")
    return grade_anatomy(read_segmentation(segmentation_path, LIGAMENT_TABLE), image, section["grader"])

"""The KneeMRI layout: ``metadata.csv`` and its pickled volumes.

KneeMRI (Štajduhar et al. 2017, Comput Methods Programs Biomed 140:151-164; data page
http://www.riteh.uniri.hr/~istajduh/projects/kneeMRI/, its ``metadata.csv`` and example script): 917 12-bit
sagittal PD fat-suppressed volumes (Siemens Avanto 1.5 T, Rijeka), Python pickles of numpy arrays (.pck) in
``vol01``..``vol10`` (or one ``volumetric_data`` folder). ``metadata.csv`` has a header row with the columns
examId, seriesNo, aclDiagnosis, kneeLR, roiX, roiY, roiZ, roiHeight, roiWidth, roiDepth, volumeFilename
(some copies add patientID first). The official example indexes a volume ``[z, y, x]`` = (slices, rows,
columns) and the ROI as ``[roiZ:roiZ+roiDepth, roiY:roiY+roiHeight, roiX:roiX+roiWidth]``.
aclDiagnosis: 0 healthy, 1 partially injured, 2 completely ruptured.

Label mapping (KNEEMRI_LABELS): 4 classes: 0 healthy -> 0 healthy, 1 partially injured -> 2 partial
rupture, 2 completely ruptured -> 3 complete rupture (KneeMRI has no "minor strain": class 1 stays empty);
2 classes: 0 -> 0 intact, 1 and 2 -> 1 torn (any injury, the MRNet-style "ACL tear" reading of a partial tear).
"""

from __future__ import annotations

import re
from pathlib import Path

from mskai import MskaiError
from mskai.training.acl_data.case import AclCase
from mskai.training.acl_data.common import _check_classes, _fail, _int, _pseudonym, _read_text, _rows

KNEEMRI_LABELS = {4: {0: 0, 1: 2, 2: 3}, 2: {0: 0, 1: 1, 2: 1}}

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_KNEEMRI_REQUIRED = ("examId", "aclDiagnosis", "volumeFilename")
_ROI_COLUMNS = ("roiZ", "roiY", "roiX", "roiDepth", "roiHeight", "roiWidth")


def _kneemri_files(root: Path) -> tuple[dict, list]:
    """.pck files in root and in folders up to two levels below it (vol01.., volumetric_data/vol01..)."""
    found, duplicates = {}, []
    folders = [root]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folders.append(sub)
        folders.extend(sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith(".")))
    for folder in folders:
        for p in sorted(folder.glob("*.pck")):
            if p.name in found:
                duplicates.append(p.name)
            found.setdefault(p.name, p)
    return found, duplicates


def read_kneemri(root, classes: int = 4, use_roi: bool = False) -> list[AclCase]:
    """Cases of a KneeMRI folder: ``root/metadata.csv`` and its .pck volumes (in root or vol01..vol10 folders).

    Labels follow KNEEMRI_LABELS (see the module docstring). subject: a pseudonym of patientID when the CSV has
    that column, else of examId (the series of one exam stay together; other exams of the same patient cannot
    be recognised). The ROI of each row is kept on the case; use_roi=True loads only that box.
    """
    classes = _check_classes(classes)
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise MskaiError(f"{root} is not a KneeMRI folder: metadata.csv is missing")
    rows = list(_rows(_read_text(meta, "KneeMRI metadata")))
    if not rows:
        raise MskaiError(f"{meta} is empty")
    header = {name.lower(): n for n, name in enumerate(rows[0][1])}
    missing = [c for c in _KNEEMRI_REQUIRED if c.lower() not in header]
    if missing:
        raise MskaiError(f"{meta} lacks the column(s) {', '.join(missing)} (found: {', '.join(rows[0][1])[:200]})")
    col = {c: header.get(c.lower()) for c in _KNEEMRI_REQUIRED + _ROI_COLUMNS + ("patientID",)}
    has_roi = all(col[c] is not None for c in _ROI_COLUMNS)
    files, duplicates = _kneemri_files(root)
    problems = [f"{name} is in more than one folder" for name in duplicates]
    cases, seen = [], {}
    for line, cells in rows[1:]:
        def cell(name, cells=cells):
            i = col[name]
            return cells[i] if i is not None and i < len(cells) else ""

        if len(cells) != len(rows[0][1]):
            problems.append(f"line {line}: {len(cells)} columns, the header has {len(rows[0][1])}")
            continue
        diagnosis, name = _int(cell("aclDiagnosis")), cell("volumeFilename")
        if diagnosis not in KNEEMRI_LABELS[classes]:
            problems.append(f"line {line}: aclDiagnosis {cell('aclDiagnosis')[:20]!r} is not 0, 1 or 2")
        if not _SAFE_NAME.fullmatch(name) or not name.lower().endswith(".pck"):
            problems.append(f"line {line}: volumeFilename {name[:60]!r} is not a plain .pck file name")
            continue
        if name not in files:
            problems.append(f"line {line}: {name} not found under {root}")
        if name in seen:
            problems.append(f"line {line}: {name} repeats line {seen[name]}")
        seen.setdefault(name, line)
        roi = None
        if has_roi:
            values = [_int(cell(c)) for c in _ROI_COLUMNS]
            if any(v is None or v < 0 for v in values) or min(values[3:]) < 1:
                problems.append(f"line {line}: the ROI columns are not non-negative whole numbers with a size")
            else:
                roi = tuple(values)
        elif use_roi:
            problems.append(f"line {line}: no ROI columns to crop with")
        who = cell("patientID")
        subject = _pseudonym("kneemri-patient", who) if who else _pseudonym("kneemri-exam", cell("examId"))
        if not who and not cell("examId"):
            problems.append(f"line {line}: neither patientID nor examId")
        cases.append(AclCase(str(files[name].resolve()) if name in files else name,
                             KNEEMRI_LABELS[classes].get(diagnosis, -1), subject, layout="kneemri", roi=roi,
                             crop_roi=use_roi))
    if problems:
        _fail(f"KneeMRI metadata {meta}", problems)
    if not cases:
        raise MskaiError(f"{meta} lists no volumes")
    return cases

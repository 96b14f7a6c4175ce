"""A case list of its own: a CSV of path,label[,subject] (DICOM folders, volume files or bare arrays)."""

from __future__ import annotations

from pathlib import Path

from mskai import MskaiError
from mskai.acl import CLASS_NAMES
from mskai.training.acl_data.case import AclCase, _dicom_subject, _source_kind, _source_problem
from mskai.training.acl_data.common import _check_classes, _fail, _int, _pseudonym, _read_text, _rows


def read_csv(path, classes: int = 4) -> list[AclCase]:
    """Cases of a CSV with columns path,label[,subject] (an optional header row starting with "path").

    Paths are relative to the CSV's folder (absolute paths are kept as written); a path may be a DICOM folder
    holding one series, a volume file or a bare array. label: 0..classes-1 (see CLASS_NAMES). subject: who the
    case belongs to, so that all cases of one patient stay in one part of a split; it is stored as a pseudonym.
    When it is empty, a DICOM source's own patient fields give it (as a pseudonym), any other source is its own
    subject. Missing files, unknown labels and repeated paths are all collected and refused together.
    """
    classes = _check_classes(classes)
    path = Path(path)
    if not path.is_file():
        raise MskaiError(f"case list {path} does not exist")
    base = path.resolve().parent
    rows = list(_rows(_read_text(path, "case list")))
    if rows and rows[0][1][0].lower() in ("path", "source", "file"):
        rows = rows[1:]
    if not rows:
        raise MskaiError(f"case list {path} holds no cases (expected lines: path,label[,subject])")
    problems, parsed, seen = [], [], {}
    for line, cells in rows:
        if len(cells) < 2 or len(cells) > 3 or not cells[0]:
            problems.append(f"line {line}: expected path,label[,subject], found {len(cells)} column(s)")
            continue
        try:
            source = (base / cells[0]).resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL, a loop of links
            problems.append(f"line {line}: {cells[0][:120]!r} is not a usable path")
            continue
        label = _int(cells[1])
        if label is None or not 0 <= label < classes:
            problems.append(f"line {line}: label {cells[1][:20]!r} is not one of 0-{classes - 1} "
                            f"({', '.join(CLASS_NAMES[classes])})")
        if not source.exists():
            problems.append(f"line {line}: {cells[0][:120]} not found")
        elif _source_kind(source) is None:
            problems.append(f"line {line}: {cells[0][:120]} is not a DICOM folder, volume file or array")
        elif (problem := _source_problem(source)) is not None:
            problems.append(f"line {line}: {cells[0][:120]} {problem}")
        if source in seen:
            problems.append(f"line {line}: {cells[0][:120]} repeats line {seen[source]}")
        seen.setdefault(source, line)
        parsed.append((source, label, cells[2] if len(cells) == 3 else ""))
    if problems:
        _fail(f"case list {path}", problems)
    cases = []
    for source, label, subject in parsed:
        if subject:
            subject = _pseudonym("subject", subject)
        else:
            subject = (_dicom_subject(source) if _source_kind(source) == "dicom" else None) \
                or _pseudonym("path", str(source))
        layout = "mrnet" if source.name.lower().endswith(".npy") else "kneemri" \
            if source.name.lower().endswith(".pck") else "array"
        cases.append(AclCase(str(source), label, subject, layout=layout))
    return cases

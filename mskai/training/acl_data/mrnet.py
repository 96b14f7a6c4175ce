"""The MRNet-v1.0 layout (sagittal series only).

MRNet (Bien et al. 2018, PLOS Med; https://stanfordmlgroup.github.io/competitions/mrnet/ and the layout
documented by many users of MRNet-v1.0, e.g. the README of the public "MRNet" loaders):
``<root>/{train,valid}/{axial,coronal,sagittal}/NNNN.npy`` and ``<root>/{train,valid}-{abnormal,acl,meniscus}.csv``
with lines ``case,label`` (zero-padded 4-digit case, 0/1), no header. Each .npy is a uint8 array
``(slices, 256, 256)``; the slice count varies. Train: 1,130 exams of 1,088 patients; valid: 120 exams of 111
patients ("all exams from each patient were put in the same split"). No patient identifiers are published, so
within a split each exam is its own subject (a few patients have two exams: a split of MRNet's train set by
exam is not strictly patient-level).
"""

from __future__ import annotations

from pathlib import Path

from mskai import MskaiError
from mskai.training.acl_data.case import AclCase
from mskai.training.acl_data.common import _fail, _int, _pseudonym, _read_text, _rows

MRNET_TASKS = ("acl", "abnormal", "meniscus")


def read_mrnet(root, split: str = "train", task: str = "acl") -> list[AclCase]:
    """Sagittal cases of an MRNet-v1.0 folder: ``root/<split>/sagittal/NNNN.npy`` with ``root/<split>-<task>.csv``.

    Labels are binary (0 no tear / normal, 1 tear / abnormal). Each exam is its own subject (MRNet publishes
    no patient identifiers; its own train/valid split is already by patient).
    """
    if split not in ("train", "valid"):
        raise MskaiError(f"MRNet split must be 'train' or 'valid', not {split!r}")
    if task not in MRNET_TASKS:
        raise MskaiError(f"MRNet task must be one of {', '.join(MRNET_TASKS)}, not {task!r}")
    root = Path(root)
    labels = next((p for p in (root / f"{split}-{task}.csv", root / f"{split}_{task}.csv") if p.is_file()), None)
    if labels is None:
        raise MskaiError(f"{root} is not an MRNet folder: {split}-{task}.csv is missing")
    folder = root / split / "sagittal"
    if not folder.is_dir():
        raise MskaiError(f"{root} is not an MRNet folder: {split}/sagittal/ is missing")
    problems, cases, seen = [], [], {}
    for line, cells in _rows(_read_text(labels, "MRNet labels")):
        case, label = (_int(cells[0]), _int(cells[1])) if len(cells) == 2 else (None, None)
        if case is None or not 0 <= case <= 99999:
            if line == 1 and cells and not cells[0].isdigit():
                continue  # a header row some copies add
            problems.append(f"line {line}: expected case,label (e.g. 0000,1), found {','.join(cells)[:40]!r}")
            continue
        if label not in (0, 1):
            problems.append(f"line {line}: label {cells[1][:20]!r} is not 0 or 1")
        source = folder / f"{case:04d}.npy"
        if not source.is_file():
            problems.append(f"line {line}: {split}/sagittal/{case:04d}.npy not found")
        if case in seen:
            problems.append(f"line {line}: case {case:04d} repeats line {seen[case]}")
        seen.setdefault(case, line)
        cases.append(AclCase(str(source.resolve()), label if label is not None else -1,
                             _pseudonym("mrnet", f"{split}/{case}"), layout="mrnet"))
    if problems:
        _fail(f"MRNet labels {labels}", problems)
    if not cases:
        raise MskaiError(f"MRNet labels {labels} hold no cases")
    return cases

"""What every ACL list reader shares: size limits, subject pseudonyms, one error for all problems of a list, and
bounded reading of files and CSV text."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

from mskai import MskaiError
from mskai.acl import CLASS_NAMES

MAX_FILE_BYTES = 1 << 30       # a pickled or .npy volume larger than 1 GiB is not a knee series
MAX_CSV_BYTES = 64 << 20
MAX_PROBLEMS_SHOWN = 5
_SALT = "mskai-acl-subject-v1"


def _pseudonym(kind: str, value: str) -> str:
    """A stable pseudonym: the same value always gives the same subject; the value itself is not kept."""
    return "s-" + hashlib.sha256(f"{_SALT}\0{kind}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _check_classes(classes) -> int:
    if classes not in CLASS_NAMES:
        raise MskaiError(f"classes must be 2 (intact/torn) or 4 (healthy/minor strain/partial/complete "
                         f"rupture), not {classes!r}")
    return classes


def _fail(what: str, problems: list[str]):
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    raise MskaiError(f"{what}: {len(problems)} problem(s): {shown}{more}; nothing was read")


def _file_bytes(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise MskaiError(f"{path} is not a file")
        if size > limit:
            raise MskaiError(f"{path.name} is {size / 2**20:.0f} MiB, more than the {limit / 2**20:.0f} MiB a "
                             "knee volume file may have")
        with open(path, "rb") as f:
            data = f.read(min(limit, size) + 1)  # never a buffer larger than the file
    except OSError as exc:
        raise MskaiError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise MskaiError(f"{path.name} grew beyond {limit / 2**20:.0f} MiB while being read")
    return data


def _read_text(path: Path, what: str) -> str:
    data = _file_bytes(path, MAX_CSV_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MskaiError(f"{what} {path} is not UTF-8 text") from None


def _rows(text: str):
    """(line number, cells) of each non-empty CSV row."""
    reader = csv.reader(io.StringIO(text))
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                yield reader.line_num, [c.strip() for c in cells]
    except csv.Error as exc:
        raise MskaiError(f"malformed CSV at line {reader.line_num}: {exc}") from None


def _int(text: str):
    return int(text) if re.fullmatch(r"[+-]?\d{1,9}", text or "") else None

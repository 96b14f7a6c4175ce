"""The case library: corrected segmentations kept for fine-tuning, one folder per model family.

A case is ``<library>/<case id>/`` with ``image.nrrd`` (the source volume), ``labels.nrrd`` (the corrected label map
on the same grid, project label values) and ``case.json`` (provenance: the model that made the first draft, voxels
the radiologist changed per bone, when it was saved). Nothing identifies the patient: NRRD files carry geometry
and voxels only, the record holds no free text, and the case id is a keyed hash of the image (the key stays in the
library, so a saved case cannot be matched to a series from outside it); saving the same image again replaces its
case. ``export`` writes a zip in the ``images/`` + ``labels/`` layout that `mskai train-seg` reads.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mskai import MskaiError
from mskai.models.package import inside
from mskai.outputs import atomic_output, remove_stale, swap_in
from mskai.volume import Volume

IMAGE, LABELS, RECORD = "image.nrrd", "labels.nrrd", "case.json"
KEY_FILE = ".library-key"
CASE_ID = re.compile(r"case-[0-9a-f]{12}\Z")
FAMILY = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9._-]{0,63}\Z")
MODEL_NAME = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9._-]{0,63}@[0-9A-Za-z][0-9A-Za-z.+-]{0,31}\Z")
MAX_RECORD_BYTES = 1 << 16
RECORD_FORMAT = 1
STAGING = ".mskai-"  # prefix part of a case being written: .<case id>.mskai-new-<pid>-<random>


def cases_root() -> Path:
    """Where case libraries live: $MSKAI_CASES_DIR, else ~/.mskai/cases."""
    return Path(os.environ.get("MSKAI_CASES_DIR", Path.home() / ".mskai" / "cases"))


def family_of(model_id: str) -> str:
    """The library a model's cases go to: its id (every version and local fine-tune of a model shares them)."""
    if not FAMILY.match(model_id or ""):
        raise MskaiError(f"Not a model id: {str(model_id)[:80]!r}")
    return model_id


@dataclass
class Case:
    id: str
    folder: Path
    record: dict

    def image(self) -> Volume:
        from mskai.volume_files import read_volume_file

        return read_volume_file(self.folder / IMAGE)

    def labels(self) -> Volume:
        from mskai.volume_files import read_volume_file

        return read_volume_file(self.folder / LABELS)


class CaseLibrary:
    """The cases of one model family in ``folder`` (created on the first save)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    @classmethod
    def for_model(cls, model_id: str, root=None) -> "CaseLibrary":
        return cls(inside(Path(root) if root else cases_root(), family_of(model_id)))

    # --- identity ------------------------------------------------------------------------------------

    def _key(self) -> bytes:
        path = self.folder / KEY_FILE
        if not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(path) as tmp:
                tmp.write_text(secrets.token_hex(32))
        key = path.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise MskaiError(f"The case library's key {path} is damaged; remove the library or restore the file")
        return bytes.fromhex(key)

    def case_id(self, image: Volume) -> str:
        """The pseudonymous id of an image: a keyed hash of its voxels and geometry."""
        digest = hmac.new(self._key(), digestmod=hashlib.sha256)
        array = np.ascontiguousarray(image.array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.round(image.affine_lps, 4).tobytes())
        digest.update(array.tobytes())
        return "case-" + digest.hexdigest()[:12]

    # --- writing -------------------------------------------------------------------------------------

    def add(self, image: Volume, labels: Volume, values, model: str | None = None, draft: Volume | None = None,
            now: datetime.datetime | None = None) -> Case:
        """Save (or replace) the case of ``image`` with the corrected ``labels`` (same grid; ``values`` the
        label values allowed, e.g. the model's bone table). ``draft``: the model's first draft on the same grid,
        to count what the radiologist changed; ``model``: "id@version" of the model that drew it."""
        from mskai.volume_files import write_volume

        label_array = _checked_labels(image, labels, values, "labels")
        draft_array = _checked_labels(image, draft, values, "first draft") if draft is not None else None
        if model is not None and not MODEL_NAME.match(model):
            raise MskaiError(f"Not a model name (id@version): {str(model)[:80]!r}")
        case_id = self.case_id(image)
        now = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
        record = {
            "format": RECORD_FORMAT, "case": case_id, "model": model, "saved_utc": now.strftime("%Y-%m-%dT%H:%MZ"),
            "shape": list(image.shape), "spacing_mm": [round(float(s), 4) for s in image.spacing],
            "bone_voxels": {str(v): int(np.count_nonzero(label_array == v)) for v in sorted(values)},
            "changed_voxels": None if draft_array is None else
            {str(v): int(np.count_nonzero((label_array == v) != (draft_array == v))) for v in sorted(values)},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale(self.folder, f".{case_id}{STAGING}")
        staging = self.folder / f".{case_id}{STAGING}new-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            write_volume(Volume(np.asarray(image.array), image.affine_lps), staging / IMAGE)
            write_volume(Volume(label_array, image.affine_lps), staging / LABELS)
            (staging / RECORD).write_text(json.dumps(record, indent=2))
            swap_in(staging, self.folder / case_id)
        except OSError as exc:
            raise MskaiError(f"Cannot save the case into {self.folder}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Case(case_id, self.folder / case_id, record)

    def remove(self, case_id: str):
        if not CASE_ID.match(case_id or ""):
            raise MskaiError(f"Not a case id: {str(case_id)[:80]!r} (case- and 12 hexadecimal digits)")
        folder = self.folder / case_id
        if not folder.is_dir():
            raise MskaiError(f"No case {case_id} in {self.folder}")
        shutil.rmtree(folder)

    # --- reading -------------------------------------------------------------------------------------

    def cases(self) -> tuple[list[Case], list[str]]:
        """(the readable cases by id, one line per case folder that is damaged: its name and what is wrong)."""
        found, problems = [], []
        if not self.folder.is_dir():
            return found, problems
        for entry in sorted(self.folder.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                found.append(_read_case(entry))
            except MskaiError as exc:
                problems.append(f"{entry.name}: {exc}")
        return found, problems

    def export(self, path) -> int:
        """Write every readable case into the zip ``path`` (images/, labels/, cases.json); returns how many."""
        cases, _ = self.cases()
        if not cases:
            raise MskaiError(f"No cases to export in {self.folder}")
        with atomic_output(path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:  # the NRRDs are gzip-encoded already
                for case in cases:
                    archive.write(case.folder / IMAGE, f"images/{case.id}.nrrd")
                    archive.write(case.folder / LABELS, f"labels/{case.id}.nrrd")
                archive.writestr("cases.json", json.dumps([c.record for c in cases], indent=2))
        return len(cases)


def _checked_labels(image: Volume, labels: Volume, values, what: str) -> np.ndarray:
    """``labels``' voxels as uint8 if they lie on ``image``'s grid and hold only 0 and ``values``."""
    if tuple(labels.shape) != tuple(image.shape) or not np.allclose(labels.affine_lps, image.affine_lps, atol=1e-3):
        raise MskaiError(f"The {what} is not on the image's grid ({list(labels.shape)} vs {list(image.shape)} "
                         "voxels, or another position); save it on the source volume's geometry")
    array = np.asarray(labels.array)
    present = np.unique(array)
    unknown = sorted(set(present.tolist()) - {0, *values})
    if unknown:
        raise MskaiError(f"The {what} holds label values {unknown[:8]} that are not bones of the model "
                         f"({sorted(values)})")
    return array.astype(np.uint8)


def _read_case(folder: Path) -> Case:
    if not CASE_ID.match(folder.name):
        raise MskaiError("not a case folder name (case- and 12 hexadecimal digits)")
    for name in (IMAGE, LABELS, RECORD):
        if not (folder / name).is_file():
            raise MskaiError(f"{name} is missing")
    if (folder / RECORD).stat().st_size > MAX_RECORD_BYTES:
        raise MskaiError(f"{RECORD} is larger than {MAX_RECORD_BYTES} bytes")
    try:
        record = json.loads((folder / RECORD).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise MskaiError(f"{RECORD} is not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(record, dict) or record.get("case") != folder.name or record.get("format") != RECORD_FORMAT:
        raise MskaiError(f"{RECORD} does not describe this case")
    return Case(folder.name, folder, record)

"""The output transaction, the one owner of how mskai writes: every file to a temporary name renamed into place,
output folders staged beside their final place and swapped in as a whole, the marker that says a folder is an mskai
output (and of which kind), and the cleanup of what killed runs left behind."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from mskai import MskaiError


def suffix_of(path) -> str:
    """The kind of a file name: .nii.gz and .seg.nrrd whole, else the last suffix (lower case)."""
    name = str(path).lower()
    for s in (".nii.gz", ".seg.nrrd"):
        if name.endswith(s):
            return s
    return Path(name).suffix


_UMASK = os.umask(0)
os.umask(_UMASK)


def _writable_error(path, exc: OSError) -> MskaiError:
    return MskaiError(f"Cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_outputs(paths):
    """Yield temporary paths beside ``paths``; they take their final names together, only if the block succeeds.

    The temporary files are created on entry, so an unwritable target fails before any work. If a rename fails
    half-way, the files already renamed are rolled back (earlier files at those names are restored).
    """
    paths = [Path(p) for p in paths]
    temps = []
    try:
        for path in paths:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix_of(path), dir=path.parent)
            except OSError as exc:
                raise _writable_error(path, exc) from None
            os.close(fd)
            temps.append(Path(tmp))
        yield list(temps)
        _rename_all(temps, paths)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def _rename_all(temps, paths):
    """Rename every temp to its path, or none: earlier files are kept as hard links until all succeeded."""
    backups, done = {}, []
    try:
        for tmp, path in zip(temps, paths):
            if path.is_file():
                backups[path] = tmp.with_name(tmp.name + ".old")
                os.link(path, backups[path])
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
            done.append(path)
    except OSError as exc:
        for path in done:
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                os.remove(path)
        raise _writable_error(paths[len(done)], exc) from None
    finally:
        for backup in backups.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(backup)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    with atomic_outputs([path]) as (tmp,):
        yield tmp


def write_csv(path, rows, fields=None) -> Path:
    """Rows (dicts) as a CSV file with a header, written atomically. fields: the columns, in order (default: the
    first row's keys); keys of a row that are not columns are left out."""
    import csv
    import io

    fields = list(fields if fields is not None else (rows[0] if rows else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return Path(path)


OUTPUT_MARKER = ".mskai-output.json"
MARKER_BYTES = 1 << 16


def read_marker(path, limit: int = MARKER_BYTES) -> dict | None:
    """The JSON object of an mskai marker or manifest file, None when there is none; MskaiError when ``path`` is a
    symbolic link, not a regular file, larger than ``limit`` bytes or not a JSON object (a forged or damaged
    marker is never followed or trusted)."""
    import json
    import stat

    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MskaiError(f"Cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise MskaiError(f"{path} is {'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a regular file'}; "
                         "mskai never follows its own marker files: remove it or choose another output folder")
    if info.st_size > limit:
        raise MskaiError(f"{path} is too large to be an mskai marker or manifest")
    try:
        with open(path, "rb") as fh:
            found = json.loads(fh.read(limit).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        raise MskaiError(f"{path} is damaged (not mskai's JSON): remove it or choose another output folder") from None
    if not isinstance(found, dict):
        raise MskaiError(f"{path} is damaged (not a JSON object): remove it or choose another output folder")
    return found


def write_marker(path, data: dict):
    """Write a marker file by renaming a new file into place: a symbolic link at ``path`` is replaced, never
    followed."""
    import json

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data))


def _overlap(output: Path, source: Path) -> str | None:
    if output == source:
        return "is"
    if source in output.parents:
        return "lies inside"
    if output in source.parents:
        return "contains"
    return None


def check_output_folder(folder, kind: str, inputs=(), marker: str = OUTPUT_MARKER) -> Path:
    """The resolved output folder, after the checks every command makes before any work.

    Refused: a file; a symbolic link as the folder itself; a folder that is, contains or lies inside one of
    ``inputs`` (replacing it would delete the input); a folder of other files (no ``marker``); an earlier mskai
    output of another kind (``marker``'s "kind" differs: a classification never replaces a segmentation).
    """
    given = Path(folder).expanduser()
    if given.is_symlink():
        raise MskaiError(f"Output folder {given} is a symbolic link; give the folder it points to, or a new one")
    folder = given.resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        sources = [source, source.parent] if source.suffix == ".sql" and source.is_file() else [source]
        for where in sources:
            how = _overlap(folder, where)
            if how == "is":
                raise MskaiError(f"Refusing to write onto itself: the output folder {folder} is the input; "
                                 "choose an output folder apart from the input")
            if how:
                raise MskaiError(f"Output folder {folder} {how} the input {where}: writing it would replace the "
                                 "input; choose an output folder apart from the input")
    if folder.exists() and not folder.is_dir():
        raise MskaiError(f"Output folder {folder} is a file")
    if folder.is_dir() and any(folder.iterdir()):
        found = read_marker(folder / marker)
        if found is None:
            raise MskaiError(f"Output folder {folder} holds files that are not an earlier mskai "
                             f"{'batch' if kind == 'batch' else 'output'}; choose a new or empty folder")
        if found.get("kind") != kind:
            raise MskaiError(f"Output folder {folder} holds an earlier mskai {str(found.get('kind'))[:40]!r} output; "
                             f"this is a {kind!r} run: choose another folder (nothing was changed)")
    return folder


@contextlib.contextmanager
def output_folder(folder, kind: str, inputs=()):
    """Yield an empty staging folder that replaces ``folder`` as a whole when the block succeeds.

    ``folder`` must be new, empty, or an earlier mskai output of the same ``kind`` (it holds OUTPUT_MARKER), and
    apart from every path of ``inputs`` (see ``check_output_folder``): an earlier run's files never mix with this
    run's, and neither the user's own files nor the input are ever replaced. Checked, and the staging folder
    created beside it, on entry: before any expensive work. Staging folders of runs that were killed are
    removed. A failure leaves ``folder`` as it was.
    """
    from mskai import __version__

    folder = check_output_folder(folder, kind, inputs)
    prefix = f".{folder.name}.mskai-"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(folder.parent, prefix)
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}staging-{os.getpid()}-", dir=folder.parent))
    except OSError as exc:
        raise _writable_error(folder, exc) from None
    try:
        os.chmod(staging, 0o777 & ~_UMASK)
        yield staging
        write_marker(staging / OUTPUT_MARKER, {"kind": kind, "mskai": __version__})
        swap_in(staging, folder)
    except OSError as exc:
        raise _writable_error(folder, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(staging: Path, folder: Path):
    """Rename ``staging`` to ``folder``; an existing ``folder`` is moved aside first, put back if the rename fails
    (or is interrupted), and removed once the new one is in place."""
    old = folder.with_name(f".{folder.name}.mskai-old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if os.path.lexists(folder):
        os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(folder):
            os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(parent: Path, prefix: str):
    """Remove staging and set-aside folders left by mskai runs that no longer exist (killed, crashed)."""
    import psutil

    for entry in parent.glob(f"{glob.escape(prefix)}*"):
        pid = entry.name[len(prefix):].partition("-")[2].partition("-")[0]
        if entry.is_dir() and not entry.is_symlink() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)

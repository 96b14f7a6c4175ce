"""Where models live: the bundled ones (Resources/Models), the user's folder, and installs from a path or URL."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mskai import MskaiError
from mskai.models.package import MAX_PACKAGE_BYTES, ModelPackage, check_name, inside, load_package, sha256_bytes
from mskai.models.tasks import DEFAULT_MODEL
from mskai.outputs import swap_in
from mskai.text import one_line

_HERE = Path(__file__).resolve()
URL_SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20


def bundled_dir() -> Path:
    """Resources/Models beside the mskai package (the repository, or Slicer's qt-scripted-modules folder)."""
    return Path(os.environ.get("MSKAI_BUNDLED_MODELS", _HERE.parents[2] / "Resources" / "Models"))


def user_dir() -> Path:
    return Path(os.environ.get("MSKAI_MODELS_DIR", Path.home() / ".mskai" / "models"))


def _candidates(folder: Path):
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()  # dot-folders: installs and local training in progress
                  if not p.name.startswith(".") and ((p / "metadata.json").is_file() or p.suffix == ".zip"))


DEFAULTS = "defaults.json"  # user models folder: {model id: the version used when none is named}


def _defaults() -> dict:
    path = user_dir() / DEFAULTS
    try:
        found = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 1 << 16 else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(found, dict) \
        else {}


def default_version(model_id: str) -> str | None:
    """The version of ``model_id`` chosen as the default (``set_default``), or None: the newest accepted."""
    return _defaults().get(model_id)


def set_default(model_id: str, version: str | None):
    """Use ``model_id@version`` whenever the model is named without a version (None: the newest again)."""
    from mskai.outputs import atomic_output

    defaults = _defaults()
    if version is None:
        defaults.pop(model_id, None)
    else:
        check_name(model_id, version)
        defaults[model_id] = version
    user_dir().mkdir(parents=True, exist_ok=True)
    with atomic_output(user_dir() / DEFAULTS) as tmp:
        tmp.write_text(json.dumps(defaults, indent=2, sort_keys=True))


def shipped_version(model_id: str) -> str:
    """The newest version of ``model_id`` in the bundled folder (what the extension ships)."""
    bundled = bundled_dir().resolve()
    shipped = [p for p in list_models() if p.id == model_id and Path(p.source).resolve().is_relative_to(bundled)]
    if not shipped:
        raise MskaiError(f"No shipped model {model_id!r} in {bundled}")
    return max(shipped, key=lambda p: _version_key(p.version)).version


def local_summary(local: dict) -> str:
    """One line on a local fine-tune: its lineage, held-out figures and whether it was better."""
    lineage = " -> ".join([*(v.partition("@")[2] for v in local.get("lineage", [])), "this"])
    before, after = local.get("before", {}), local.get("after", {})
    figures = ", ".join(f"{b} {before[b]['dice']:.3f}->{after[b]['dice']:.3f}" for b in sorted(before) if b in after)
    verdict = "better" if local.get("accepted") else "not better: kept aside"
    return (f"local: {lineage}; {local.get('training_cases', '?')} cases, held-out Dice {figures or 'n/a'} "
            f"({verdict})")


def kept_aside(package: ModelPackage) -> bool:
    """A local fine-tune that was not better than its parent on the held-out cases: used only when named."""
    return package.metadata.get("local", {}).get("accepted") is False


def list_models(task: str | None = None) -> list[ModelPackage]:
    """Every valid package in the user folder and the bundled folder (user first); broken ones are skipped."""
    found = []
    for folder in (user_dir(), bundled_dir()):
        for path in _candidates(folder):
            try:
                package = load_package(path)
            except MskaiError:
                continue
            if task is None or package.metadata["task"] == task:
                found.append(package)
    return found


def _version_key(version: str):
    """Numeric parts compare as numbers, and after text parts (so versions mixing both still sort)."""
    return tuple((1, int(p), "") if p.isdigit() else (0, 0, p) for p in re.split(r"[.+-]", version))


def is_path(name: str) -> bool:
    """Whether a model name is explicitly a path: a separator, a leading ``.`` or ``~``, or a ``.zip`` ending."""
    return "/" in name or "\\" in name or name.startswith((".", "~")) or name.lower().endswith(".zip")


def check_task(package: ModelPackage, task: str | None, name: str | None = None) -> ModelPackage:
    """``package`` if it is a ``task`` model (any model when task is None), else one clear error."""
    actual = package.metadata.get("task")
    if task and actual != task:
        raise MskaiError(f"Model {name or package.id} is a {actual} model, not a {task} model")
    return package


def resolve_model(model, task: str) -> ModelPackage:
    """The ``task`` model ``model`` names: a loaded package as it is, a ``Path`` as a path (never a registry id),
    an id[@version] or path string, or None for the task's bundled default (``tasks.DEFAULT_MODEL``)."""
    if model is None:
        model = DEFAULT_MODEL[task]
    if isinstance(model, Path):
        return find_model(str(model.expanduser().resolve()), task)
    if isinstance(model, str):
        return find_model(model, task)
    if not hasattr(model, "metadata") or not hasattr(model, "build_network"):
        raise MskaiError(f"Not a model package: {model!r}")
    return check_task(model, task)


def find_model(name: str, task: str | None = None) -> ModelPackage:
    """A package by ``id`` or ``id@version`` from the registry, or by path when ``name`` is explicitly one
    (``is_path``); a folder in the current directory never shadows a model. Without a version: the one chosen with
    ``set_default``, else the newest that is not kept aside (a local fine-tune that was not better).
    """
    if is_path(name):
        return check_task(load_package(Path(name).expanduser()), task, name)
    model_id, _, version = name.partition("@")
    matches = [p for p in list_models(task) if p.id == model_id and (not version or p.version == version)]
    if not matches:
        known = ", ".join(sorted({f"{p.id}@{p.version}" for p in list_models(task)})) or "none"
        raise MskaiError(f"No model {name!r}; installed: {known}")
    if not version:
        chosen = [p for p in matches if p.version == default_version(model_id)]
        matches = chosen or [p for p in matches if not kept_aside(p)] or matches
    return max(matches, key=lambda p: _version_key(p.version))


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https URLs only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise MskaiError(f"Refusing the redirect of {req.full_url} to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, folder: Path, sha256: str, timeout_s: float, deadline_s: float, max_bytes: int) -> Path:
    """Stream ``url`` into ``folder`` in chunks, hashing as it goes: at most ``max_bytes``, all within ``deadline_s``
    seconds (``timeout_s`` per network wait), as many bytes as announced, and the expected sha256."""
    deadline = time.monotonic() + deadline_s
    target, digest, size = folder / "package.zip", hashlib.sha256(), 0
    try:
        opener = urllib.request.build_opener(_HttpRedirectsOnly)
        with opener.open(url, timeout=min(timeout_s, deadline_s)) as response, target.open("wb") as out:
            announced = int(response.headers.get("Content-Length") or -1)
            if announced > max_bytes:
                raise MskaiError(f"{url} is {announced} bytes, more than the limit of {max_bytes}")
            while True:
                chunk = response.read1(CHUNK)  # returns what has arrived, so the deadline is checked as data drips
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise MskaiError(f"{url} is more than the limit of {max_bytes} bytes; download stopped")
                if time.monotonic() > deadline:
                    raise MskaiError(f"Downloading {url} took more than {deadline_s:g} s; download stopped")
                digest.update(chunk)
                out.write(chunk)
    except MskaiError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise MskaiError(f"Cannot download {url}: {one_line(exc)}") from None
    if size < announced:
        raise MskaiError(f"Download of {url} ended after {size} of {announced} bytes; not installed")
    if digest.hexdigest() != sha256:
        raise MskaiError(f"Download {url} does not match the expected sha256; not installed")
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _install(path: Path, sha256: str | None) -> ModelPackage:
    """Install the package at ``path`` (see install_model) from exactly the bytes that were checked."""
    if sha256 and path.is_file() and _file_sha256(path) != sha256:
        raise MskaiError(f"{path} does not match the expected sha256; not installed")
    package = load_package(path)
    files = package.files()
    if sha256 and path.is_dir() and sha256_bytes(files[package.metadata["weights"]["file"]]) != sha256:
        raise MskaiError(f"The weights file of {path} does not match the expected sha256; not installed")
    root = user_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        target = inside(root, f"{package.id}-{package.version}")
        staging = Path(tempfile.mkdtemp(prefix=".mskai-install-", dir=root))
        try:
            for name, data in files.items():
                inside(staging, name).write_bytes(data)
            load_package(staging).build_network()  # what will be installed loads and runs its weights
            swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise MskaiError(f"Cannot install into {root}: {one_line(exc)}") from None
    return load_package(target)


def install_model(source: str, sha256: str | None = None, timeout_s: float = 60.0, deadline_s: float = 3600.0,
                  max_bytes: int = MAX_PACKAGE_BYTES) -> ModelPackage:
    """Install a package (folder, .zip, or http/https/file URL of a .zip) as ``user_dir()/<id>-<version>``.

    sha256: 64 hex digits (a malformed value is refused before anything else). For a URL (required there) or a
    .zip it is the file's sha256; for a folder it is the sha256 of the package's weights file.
    Downloads are streamed to a temporary folder (removed whatever happens): at most ``max_bytes``, within
    ``deadline_s`` seconds overall and ``timeout_s`` per network wait. The package's metadata.json, weights and
    documentation files are read once, checked, written to a staging folder, loaded from there and swapped in
    whole; a failed install leaves an earlier install of the same id@version as it was.
    """
    if sha256 is not None and not re.fullmatch(r"[0-9A-Fa-f]{64}", sha256):
        raise MskaiError(f"The sha256 must be 64 hexadecimal digits, not {sha256[:80]!r}")
    sha256 = sha256 and sha256.lower()
    scheme = urllib.parse.urlparse(source).scheme.lower()
    if scheme in URL_SCHEMES or "://" in source:
        if scheme not in URL_SCHEMES:
            raise MskaiError(f"Cannot install from {source}: only http, https and file URLs are supported")
        if not sha256:
            raise MskaiError("Installing from a URL needs the file's sha256 (--sha256)")
        with tempfile.TemporaryDirectory(prefix="mskai-download-") as tmp:
            return _install(_download(source, Path(tmp), sha256, timeout_s, deadline_s, max_bytes), None)
    return _install(Path(source).expanduser(), sha256)

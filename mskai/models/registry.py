"""Where models live: the bundled ones (Resources/Models), the user's folder, and installs from a path or URL."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from mskai import MskaiError
from mskai.models.package import ModelPackage, load_package, sha256_bytes

_HERE = Path(__file__).resolve()


def bundled_dir() -> Path:
    """Resources/Models beside the mskai package (the repository, or Slicer's qt-scripted-modules folder)."""
    return Path(os.environ.get("MSKAI_BUNDLED_MODELS", _HERE.parents[2] / "Resources" / "Models"))


def user_dir() -> Path:
    return Path(os.environ.get("MSKAI_MODELS_DIR", Path.home() / ".mskai" / "models"))


def _candidates(folder: Path):
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "metadata.json").is_file() or p.suffix == ".zip")


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
    return tuple(int(p) if p.isdigit() else p for p in version.replace("-", ".").split("."))


def find_model(name: str, task: str | None = None) -> ModelPackage:
    """A package by path, by ``id``, or by ``id@version``; the newest version wins when none is given."""
    if Path(name).exists():
        return load_package(name)
    model_id, _, version = name.partition("@")
    matches = [p for p in list_models(task) if p.id == model_id and (not version or p.version == version)]
    if not matches:
        known = ", ".join(sorted({f"{p.id}@{p.version}" for p in list_models(task)})) or "none"
        raise MskaiError(f"No model {name!r}; installed: {known}")
    return max(matches, key=lambda p: _version_key(p.version))


def _download(url: str, sha256: str, timeout_s: float) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="mskai-download-"))
    target = tmp / (Path(urllib.parse.urlparse(url).path).name or "model.zip")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read()
    except Exception as exc:
        shutil.rmtree(tmp)
        raise MskaiError(f"Cannot download {url}: {exc}") from None
    if sha256_bytes(data) != sha256.lower():
        shutil.rmtree(tmp)
        raise MskaiError(f"Download {url} does not match the expected sha256; not installed")
    target.write_bytes(data)
    return target


def install_model(source: str, sha256: str | None = None, timeout_s: float = 60.0) -> ModelPackage:
    """Install a package (folder, .zip, or http(s)/file URL of a .zip) into the user models folder.

    sha256: required for URLs: the checksum of the downloaded file. The package is validated
    (schema and weights checksum) before it is copied in; an existing same id@version is replaced.
    """
    downloaded = None
    if urllib.parse.urlparse(source).scheme in ("http", "https", "file"):
        if not sha256:
            raise MskaiError("Installing from a URL needs the file's sha256 (--sha256)")
        downloaded = _download(source, sha256, timeout_s)
        source = str(downloaded)
    try:
        package = load_package(source)
        package.state_dict()  # checks the weights' checksum
        target = user_dir() / f"{package.id}-{package.version}"
        staging = user_dir() / f".{target.name}.part"
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        if package.source.is_dir():
            shutil.copytree(package.source, staging)
        else:
            import zipfile

            with zipfile.ZipFile(package.source) as zf:
                zf.extractall(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        return load_package(target)
    finally:
        if downloaded:
            shutil.rmtree(downloaded.parent, ignore_errors=True)

"""Model packages: a folder or .zip holding ``metadata.json`` and safetensors weights.

One format for every model of the project (bone segmentation, ACL classification). Loading
checks the schema and the weights' sha256, and never unpickles anything. Every package file is
read through one reader that refuses symbolic links, paths leaving the package, unsafe or
duplicate archive entries, and sizes above the caps below.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from mskai import MskaiError
from mskai.models.tasks import ACL_CLASSIFICATION, KNEE_LIGAMENTS, SEGMENTATION
from mskai.outputs import atomic_output
from mskai.text import one_line

METADATA = "metadata.json"
FORMAT_VERSION = 1
MAX_METADATA_BYTES = 1 << 20  # metadata.json
MAX_PACKAGE_BYTES = 2 << 30  # a whole package: every file of a folder read, every entry of a zip declared
# Documentation copied on install besides metadata.json and the weights; other files are left behind.
DOCS = re.compile(r"(README|NOTICE|LICENSE)(\.md|\.txt)?|training_(log|curves)[A-Za-z0-9_-]*\.(json|png)")

_SPACING = {"type": "array", "items": {"type": "number", "minimum": 0.05, "maximum": 20}, "minItems": 3, "maxItems": 3}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 64}
SCHEMA = {
    "type": "object",
    "required": ["format_version", "id", "version", "task", "demo", "licence", "training_data", "input", "network",
                 "weights"],
    "properties": {
        "format_version": {"const": FORMAT_VERSION},
        # id and version name the install folder <id>-<version>: one path component, no "..".
        "id": {"type": "string", "pattern": r"^(?!.*\.\.)[a-z0-9][a-z0-9._-]{0,63}\Z"},
        "version": {"type": "string", "pattern": r"^(?!.*\.\.)[0-9A-Za-z][0-9A-Za-z.+-]{0,31}\Z"},
        "task": {"enum": [SEGMENTATION, ACL_CLASSIFICATION, KNEE_LIGAMENTS]},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "demo": {"type": "boolean"},
        "licence": {"type": "string"},
        "training_data": {"type": "string"},
        "labels": {"type": "array", "minItems": 1, "maxItems": 255, "items": {
            "type": "object",
            "required": ["value", "name", "color", "snomed_code", "snomed_meaning"],
            "properties": {
                "value": {"type": "integer", "minimum": 1, "maximum": 255},
                "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,63}\Z"},  # names output files
                "color": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                          "minItems": 3, "maxItems": 3},
                "snomed_code": {"type": "string", "pattern": r"^[0-9]{1,18}\Z"},
                "snomed_meaning": dict(_TEXT, pattern="^[^~^]+$"),  # ~ and ^ separate Slicer terminology fields
            }}},
        "classes": {"type": "array", "minItems": 2, "maxItems": 64, "items": _TEXT},
        "input": {
            "type": "object",
            "required": ["modality", "plane"],
            "properties": {
                "modality": _TEXT,
                "plane": {"enum": ["any", "sagittal", "coronal", "axial"]},
                "spacing_mm": _SPACING,
                "fast_spacing_mm": _SPACING,
                "intensity": {"type": "object", "required": ["method"],
                              "properties": {"method": {"enum": ["percentile"]},
                                             "lower": {"type": "number", "minimum": 0, "maximum": 100},
                                             "upper": {"type": "number", "minimum": 0, "maximum": 100}}},
                "patch_size": {"type": "array", "items": {"type": "integer", "minimum": 8, "maximum": 512},
                               "minItems": 3, "maxItems": 3},
            },
        },
        "network": {"type": "object", "required": ["class", "args"],
                    "properties": {"class": {"type": "string"}, "args": {"type": "object"}}},
        "weights": {
            "type": "object",
            "required": ["file", "sha256"],
            "properties": {"file": {"type": "string",
                                    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.(safetensors|pt|pth)\Z"},
                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        },
        "preprocessing": {"type": "object"},  # acl-classification: mskai.acl.preprocess.AclPreprocessing
        "anatomy": {"type": "object"},  # acl-classification reading anatomy: mskai.acl.anatomy
        "metrics": {"type": "object"},
    },
    "allOf": [{"if": {"properties": {"task": {"const": SEGMENTATION}}},
               "then": {"required": ["labels"], "properties": {
                   "input": {"required": ["spacing_mm", "intensity", "patch_size"]}}}},
              {"if": {"properties": {"task": {"const": ACL_CLASSIFICATION}}},
               "then": {"required": ["classes", "preprocessing"]}},
              {"if": {"properties": {"task": {"const": KNEE_LIGAMENTS}}},
               "then": {"required": ["labels"], "properties": {
                   "input": {"required": ["in_plane_mm", "size", "context_slices"]}}}}],
}


def inside(folder, *parts) -> Path:
    """``folder/parts`` resolved; MskaiError unless it lies inside ``folder``. Used for every path built from data."""
    root = Path(folder).resolve()
    path = root.joinpath(*parts).resolve()
    if path == root or root not in path.parents:
        raise MskaiError(f"{'/'.join(parts)!r} leads outside {root}; refusing it")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ModelPackage:
    """A validated model package. ``source`` is the folder or .zip it came from."""

    metadata: dict
    source: Path

    @property
    def id(self) -> str:
        return self.metadata["id"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def input(self) -> dict:
        return self.metadata["input"]

    def read(self, name: str, limit: int | None = None) -> bytes:
        """One file of the package (see ``read_file``)."""
        return read_file(self.source, name, MAX_PACKAGE_BYTES if limit is None else limit)

    def weights_bytes(self) -> bytes:
        """The weights file's bytes, after checking their sha256 against the metadata."""
        spec = self.metadata["weights"]
        data = self.read(spec["file"])
        if sha256_bytes(data) != spec["sha256"]:
            raise MskaiError(f"Model package {self.source}: the weights' checksum does not match metadata.json "
                             "(damaged or tampered package); refusing to load it")
        return data

    def state_dict(self) -> dict:
        """The weights (checksum checked) as tensors; never unpickles anything."""
        return decode_weights(self.weights_bytes(), self.metadata["weights"]["file"], self.source)

    def build_network(self):
        """The network, with the package's weights loaded, in eval mode on the CPU."""
        from mskai.models.networks import build_network

        return build_network(self.metadata["network"], self.state_dict(), where=self.source).eval()

    def files(self) -> dict:
        """{name: bytes} of metadata.json, the weights and the documentation files (``DOCS``), each read once.

        These bytes are checked (metadata schema and equality with ``self.metadata``, weights checksum): an
        install writes exactly them.
        """
        text = self.read(METADATA, MAX_METADATA_BYTES)
        if parse_metadata(text, f"{self.source}/{METADATA}") != self.metadata:
            raise MskaiError(f"Model package {self.source} changed while being read")
        files = {METADATA: text, self.metadata["weights"]["file"]: self.weights_bytes()}
        files.update((name, self.read(name)) for name in doc_names(self.source))
        if sum(map(len, files.values())) > MAX_PACKAGE_BYTES:
            raise MskaiError(f"Model package {self.source} is larger than {MAX_PACKAGE_BYTES} bytes")
        return files


def decode_weights(data: bytes, name: str, where) -> dict:
    """Tensors from safetensors bytes, or from a .pt/.pth file that torch loads with ``weights_only=True``."""
    import torch

    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load

            state = load(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # each loader has its own error types for a malformed or malicious file
        kind = "safetensors file" if name.endswith(".safetensors") else "weights_only torch file (plain tensors)"
        detail = one_line(exc) if name.endswith(".safetensors") else type(exc).__name__
        raise MskaiError(f"Model package {where}: {name} is not a valid {kind} ({detail})") from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise MskaiError(f"Model package {where}: {name} is not a flat mapping of names to tensors")
    return state


def _entry_is_safe(name: str) -> bool:
    """A relative archive name without "..", ".", empty parts, backslashes, drive letters or control characters."""
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    return not (name.startswith("/") or re.search(r"[\\:\x00-\x1f]", name) or {"", ".", ".."} & set(parts))


def zip_members(zf: zipfile.ZipFile, where) -> dict:
    """The entries of a package archive by name; refuses unsafe names, duplicates, symlinks and oversized totals."""
    members = {}
    for info in zf.infolist():
        if not _entry_is_safe(info.orig_filename):
            raise MskaiError(f"{where}: unsafe entry name {info.orig_filename!r} in the archive; refusing it")
        if info.filename in members:
            raise MskaiError(f"{where}: the archive holds {info.filename!r} twice; refusing it")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise MskaiError(f"{where}: the archive entry {info.filename!r} is a symbolic link; refusing it")
        members[info.filename] = info
    if sum(info.file_size for info in members.values()) > MAX_PACKAGE_BYTES:
        raise MskaiError(f"{where}: the archive unpacks to more than {MAX_PACKAGE_BYTES} bytes; refusing it")
    return members


def read_file(source: Path, name: str, limit: int) -> bytes:
    """The bytes of ``name`` in a package folder or .zip, at most ``limit`` of them.

    Folder: a symbolic link or a path resolving outside the folder is refused. Zip: the whole archive must pass
    ``zip_members``; the entry's declared size and the bytes actually read are both held to ``limit``.
    """
    source = Path(source)
    if source.is_dir():
        if (source / name).is_symlink():
            raise MskaiError(f"Model package {source}: {name} is a symbolic link; packages hold plain files")
        path = inside(source, name)
        if not path.is_file():
            raise MskaiError(f"Model package {source} lacks {name}")
        if path.stat().st_size > limit:
            raise MskaiError(f"Model package {source}: {name} is larger than {limit} bytes")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    else:
        try:
            with zipfile.ZipFile(source) as zf:
                info = zip_members(zf, source).get(name)
                if info is None or info.is_dir():
                    raise MskaiError(f"Model package {source} lacks {name}")
                if info.file_size > limit:
                    raise MskaiError(f"Model package {source}: {name} is larger than {limit} bytes")
                with zf.open(info) as f:
                    data = f.read(limit + 1)
        except MskaiError:
            raise
        except Exception as exc:  # zipfile, zlib, bz2, lzma: any failure to decode the archive
            raise MskaiError(f"{source}: damaged zip file ({one_line(exc)})") from None
    if len(data) > limit:
        raise MskaiError(f"Model package {source}: {name} is larger than {limit} bytes")
    return data


def doc_names(source: Path) -> list:
    """The documentation files (``DOCS``) at the top of a package folder or .zip."""
    if source.is_dir():
        names = [p.name for p in source.iterdir() if p.is_file()]
    else:
        with zipfile.ZipFile(source) as zf:
            names = list(zip_members(zf, source))
    return sorted(n for n in names if DOCS.fullmatch(n))


def check_name(package_id: str, version: str):
    """Refuse, before any training, a package id or version the package format would refuse when it is saved
    (they name the install folder: one path component, no "..")."""
    for what, value in (("id", package_id), ("version", version)):
        try:
            jsonschema.validate(value, SCHEMA["properties"][what])
        except jsonschema.ValidationError:
            raise MskaiError(f"package {what} {str(value)[:80]!r} is not allowed: "
                             + ("lower-case letters, digits, '.', '_' and '-', at most 64, starting with a letter or "
                                "digit" if what == "id" else "letters, digits, '.', '+' and '-', at most 32")
                             + ", no '..'") from None


def validate_metadata(metadata: dict, where: str = "metadata.json") -> dict:
    """The metadata if it fits ``SCHEMA`` and its label values and names are unique; else MskaiError."""
    try:
        jsonschema.validate(metadata, SCHEMA)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise MskaiError(f"{where}: invalid model metadata at {path}: {one_line(exc.message)}") from None
    for key in ("value", "name"):
        values = [label[key] for label in metadata.get("labels", [])]
        if len(set(values)) != len(values):
            raise MskaiError(f"{where}: invalid model metadata at labels: each label needs its own {key}")
    return metadata


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_metadata(text: bytes, where: str) -> dict:
    """Parse and validate metadata.json's bytes (at most MAX_METADATA_BYTES; NaN, Infinity and deep nesting refused)."""
    if len(text) > MAX_METADATA_BYTES:
        raise MskaiError(f"{where} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        metadata = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise MskaiError(f"{where} is nested too deeply to be model metadata") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MskaiError(f"{where} is not valid JSON ({one_line(exc)})") from None
    return validate_metadata(metadata, where)


def load_package(path) -> ModelPackage:
    """Open a model package (folder or .zip) and validate its metadata. Weights are checked when loaded."""
    path = Path(path)
    if not path.exists():
        raise MskaiError(f"Model package {path} does not exist")
    if not path.is_dir() and not zipfile.is_zipfile(path):
        raise MskaiError(f"{path} is neither a model package folder nor a .zip")
    return ModelPackage(parse_metadata(read_file(path, METADATA, MAX_METADATA_BYTES), f"{path}/{METADATA}"), path)


def save_package(folder, metadata: dict, state_dict: dict, zip_path=None) -> Path:
    """Write a package folder (metadata.json + model.safetensors); also a .zip of it if zip_path is given."""
    from safetensors.torch import save as save_safetensors

    folder = Path(folder)
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    metadata = dict(metadata, format_version=FORMAT_VERSION,
                    weights={"file": "model.safetensors", "sha256": sha256_bytes(weights)})
    validate_metadata(metadata)
    text = json.dumps(metadata, indent=2).encode()
    with atomic_output(folder / "model.safetensors") as tmp:
        tmp.write_bytes(weights)
    with atomic_output(folder / METADATA) as tmp:
        tmp.write_bytes(text)
    if zip_path:
        with atomic_output(zip_path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr(METADATA, text)
                zf.writestr("model.safetensors", weights)
    return folder

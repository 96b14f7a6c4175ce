"""Model packages: a folder or .zip holding ``metadata.json`` and safetensors weights.

One format for every model of the project (bone segmentation, ACL classification). Loading
checks the schema and the weights' sha256, and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from mskai import MskaiError
from mskai.io import atomic_output

METADATA = "metadata.json"
FORMAT_VERSION = 1

SCHEMA = {
    "type": "object",
    "required": ["format_version", "id", "version", "task", "demo", "licence", "training_data", "input", "network",
                 "weights"],
    "properties": {
        "format_version": {"const": FORMAT_VERSION},
        "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
        "version": {"type": "string", "minLength": 1},
        "task": {"enum": ["segmentation", "classification"]},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "demo": {"type": "boolean"},
        "licence": {"type": "string"},
        "training_data": {"type": "string"},
        "labels": {"type": "array", "items": {"type": "object", "required": ["value", "name"]}},
        "classes": {"type": "array", "items": {"type": "string"}},
        "input": {
            "type": "object",
            "required": ["modality", "plane", "spacing_mm", "intensity", "patch_size"],
            "properties": {
                "modality": {"type": "string"},
                "plane": {"enum": ["any", "sagittal", "coronal", "axial"]},
                "spacing_mm": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3,
                               "maxItems": 3},
                "fast_spacing_mm": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                                    "minItems": 3, "maxItems": 3},
                "intensity": {"type": "object", "required": ["method"]},
                "patch_size": {"type": "array", "items": {"type": "integer", "minimum": 8}, "minItems": 3,
                               "maxItems": 3},
            },
        },
        "network": {"type": "object", "required": ["class", "args"]},
        "weights": {
            "type": "object",
            "required": ["file", "sha256"],
            "properties": {"file": {"type": "string", "pattern": r"^[^/\\]+\.(safetensors|pt|pth)$"},
                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        },
        "metrics": {"type": "object"},
    },
    "allOf": [{"if": {"properties": {"task": {"const": "segmentation"}}}, "then": {"required": ["labels"]}},
              {"if": {"properties": {"task": {"const": "classification"}}}, "then": {"required": ["classes"]}}],
}


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

    def _read(self, name: str) -> bytes:
        try:
            if self.source.is_dir():
                return (self.source / name).read_bytes()
            with zipfile.ZipFile(self.source) as zf:
                return zf.read(name)
        except (KeyError, FileNotFoundError):
            raise MskaiError(f"Model package {self.source} lacks {name}") from None

    def state_dict(self) -> dict:
        """The weights, after checking their sha256 against the metadata."""
        import torch
        from safetensors.torch import load as load_safetensors

        spec = self.metadata["weights"]
        data = self._read(spec["file"])
        if sha256_bytes(data) != spec["sha256"]:
            raise MskaiError(f"Model package {self.source}: the weights' checksum does not match metadata.json "
                             "(damaged or tampered package); refusing to load it")
        if spec["file"].endswith(".safetensors"):
            return load_safetensors(data)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def build_network(self):
        """The network, with the package's weights loaded, in eval mode on the CPU."""
        from mskai.models.networks import build_network

        net = build_network(self.metadata["network"])
        try:
            net.load_state_dict(self.state_dict())
        except RuntimeError as exc:
            raise MskaiError(f"Model package {self.source}: weights do not fit the network ({exc})") from None
        return net.eval()


def validate_metadata(metadata: dict, where: str = "metadata.json") -> dict:
    try:
        jsonschema.validate(metadata, SCHEMA)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise MskaiError(f"{where}: invalid model metadata at {path}: {exc.message}") from None
    return metadata


def load_package(path) -> ModelPackage:
    """Open a model package (folder or .zip) and validate its metadata. Weights are checked when loaded."""
    path = Path(path)
    if not path.exists():
        raise MskaiError(f"Model package {path} does not exist")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise MskaiError(f"{path} is neither a model package folder nor a .zip")
    package = ModelPackage({}, path)
    try:
        metadata = json.loads(package._read(METADATA))
    except json.JSONDecodeError as exc:
        raise MskaiError(f"{path}: metadata.json is not valid JSON ({exc})") from None
    except zipfile.BadZipFile as exc:
        raise MskaiError(f"{path}: damaged zip file ({exc})") from None
    package.metadata = validate_metadata(metadata, f"{path}/{METADATA}")
    return package


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

"""Networks a model package may name: MONAI classes only, built from their keyword arguments."""

from __future__ import annotations

from mskai import MskaiError

ALLOWED = ("UNet", "BasicUNet", "SegResNet", "DynUNet", "DenseNet121", "ResNet")


def build_network(spec: dict):
    """A MONAI network from ``{"class": name, "args": {...}}``; only the classes in ALLOWED."""
    import monai.networks.nets as nets

    name = spec.get("class")
    if name not in ALLOWED:
        raise MskaiError(f"Unknown network class {name!r}; model packages may use {', '.join(ALLOWED)}")
    try:
        return getattr(nets, name)(**spec.get("args", {}))
    except TypeError as exc:
        raise MskaiError(f"Cannot build {name} from the package's arguments: {exc}") from None

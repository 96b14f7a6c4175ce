"""Networks a model package may name: MONAI classes only, built from their keyword arguments."""

from __future__ import annotations

from mskai import MskaiError
from mskai.text import one_line

ALLOWED = ("UNet", "BasicUNet", "SegResNet", "DynUNet", "DenseNet121", "ResNet")
PROJECT = ("MRNetStyle",)  # the project's own networks (mskai.models.mrnet, built from MONAI blocks)


def _network_class(name):
    if name in PROJECT:
        from mskai.models import mrnet

        return getattr(mrnet, name)
    import monai.networks.nets as nets

    return getattr(nets, name)


def build_network(spec: dict, state_dict: dict | None = None, where="the model package"):
    """A network from ``{"class": name, "args": {...}}``; only the MONAI classes in ALLOWED and the project's own.

    With ``state_dict``, the weights' names and shapes are first compared with a copy of the network built on
    the meta device (no memory spent on absurd arguments), then loaded. Every failure is an MskaiError.
    """
    import torch

    name, args = spec.get("class"), spec.get("args", {})
    if name not in ALLOWED and name not in PROJECT:
        raise MskaiError(f"Unknown network class {name!r}; model packages may use {', '.join(ALLOWED + PROJECT)}")
    if not isinstance(args, dict):
        raise MskaiError(f"{where}: the network's args must be an object")
    try:
        if state_dict is not None:
            with torch.device("meta"):
                expected = {k: tuple(v.shape) for k, v in _network_class(name)(**args).state_dict().items()}
            given = {k: tuple(v.shape) for k, v in state_dict.items()}
            if expected != given:
                first = sorted(expected.items() ^ given.items())[0][0]
                raise MskaiError(f"{where}: the weights do not fit the {name} network (first difference: {first})")
        net = _network_class(name)(**args)
        if state_dict is not None:
            net.load_state_dict(state_dict)
    except MskaiError:
        raise
    except Exception as exc:  # MONAI reports bad arguments as TypeError, ValueError, AssertionError, IndexError...
        raise MskaiError(f"{where}: cannot build {name} from the package's arguments and weights "
                         f"({type(exc).__name__}: {one_line(exc)})") from None
    return net

"""A segmentation package's network run by ONNX Runtime on the CPU: no MONAI import at inference time.

The network is exported to ONNX once per package (the only time MONAI is imported), checked against the torch network
on a random window, and cached under the user's cache folder by a hash of the weights, the network and the window
size. ``onnx_runner`` returns None, and the caller uses torch, when ONNX Runtime or the exporter is missing or the
export does not reproduce the torch network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings

import numpy as np

from mskai.cache import user_cache_dir
from mskai.outputs import atomic_output

OPSET = 17
TOLERANCE = 1e-2  # largest logit difference between the exported network and torch's on the check window
_SESSIONS = {}  # one session per cached file and thread count, for the life of the process


def _cache_path(package, roi):
    key = json.dumps({"weights": package.metadata["weights"]["sha256"], "network": package.metadata["network"],
                      "roi": list(roi), "opset": OPSET}, sort_keys=True)
    return user_cache_dir("onnx") / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def _export(package, roi, path):
    """Export the package's network (batch size dynamic) and check it reproduces torch's logits."""
    import torch

    net = package.build_network().eval()
    channels = package.metadata["network"]["args"].get("in_channels", 1)
    window = torch.from_numpy(np.random.default_rng(0).normal(0.5, 0.3, (1, channels, *roi)).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and instance-norm notes
        torch.onnx.export(net, (window,), str(tmp), dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET)
        with torch.inference_mode():
            expected = net(window).numpy()
        got = _session(tmp, 1).run(None, {"image": window.numpy()})[0]
        if not np.allclose(got, expected, atol=TOLERANCE):
            raise ValueError(f"the exported network differs from torch's by {np.abs(got - expected).max():.3g}")


def _session(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(package, roi, threads: int | None = None):
    """``run(windows)`` (B x channels x roi float32 -> B x classes x roi) by ONNX Runtime, or None (use torch)."""
    if os.environ.get("MSKAI_RUNTIME", "").lower() == "torch":
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    path = _cache_path(package, roi)
    threads = threads or os.cpu_count() or 1
    try:
        if not path.is_file():
            _export(package, roi, path)
        key = (str(path), threads)
        if key not in _SESSIONS:
            _SESSIONS[key] = _session(path, threads)
    except Exception as exc:  # no exporter, an operator ONNX lacks, a damaged cache file: torch does the work
        path.unlink(missing_ok=True)  # exported again next time
        warnings.warn(f"ONNX Runtime not used ({exc.__class__.__name__}: {exc}); running the network with torch")
        return None
    session = _SESSIONS[key]
    return lambda windows: session.run(None, {"image": windows})[0]

"""Grad-CAM for the slice-wise classifier: where, slice by slice, the evidence for a class lies."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def grad_cam(net, image: torch.Tensor, target: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Class probabilities, a Grad-CAM per slice, and the explained class (the predicted one by default).

    image: (1, channels, slices, H, W). Returns (probabilities (n_classes,), cam (slices, H, W) in [0, 1] scaled by
    its maximum over all slices, so slices compare; all zeros when nothing speaks for the class), target.
    """
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["activations"] = output

    hook = net.cam_layer.register_forward_hook(keep)
    try:
        net.eval()
        net.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = net(image)
            probabilities = torch.softmax(logits, dim=1)[0]
            target = int(probabilities.argmax()) if target is None else int(target)
            logits[0, target].backward()
    finally:
        hook.remove()
    activations = captured["activations"]  # (slices, features, h, w)
    weights = activations.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = float(cam.max())
    cam = (cam / peak if peak > 0 else torch.zeros_like(cam)).numpy().astype(np.float32)
    net.zero_grad(set_to_none=True)
    return probabilities.detach().numpy().astype(np.float64), cam, target

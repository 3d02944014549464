"""Data augmentation of whole batches on the device: no per-sample Python.

Every function takes images ``x`` of shape (B, C, H, W) (float, any range), a
``torch.Generator`` on the CPU for reproducibility (only B-sized random draws are made, then
moved to ``x``'s device), and returns a new tensor of the same shape, dtype and device; the
input is never modified. Values stay within the input's range: crops pad with zeros and erasing
writes zeros (black, the Fashion-MNIST background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _to(draw: torch.Tensor, device) -> torch.Tensor:
    """Return a CPU draw on ``device``; to a GPU through pinned memory without blocking the host.

    A pageable copy makes the host wait for the GPU at every draw (8 stream syncs a step); a
    pinned, non-blocking one is queued. PyTorch's caching host allocator keeps the pinned buffer
    alive until its copy is done. The values are the CPU generator's, so a seed fixes them anywhere.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return draw.pin_memory().to(device, non_blocking=True)
    return draw.to(device)


def _uniform(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return _to(torch.rand(n, generator=generator), device)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Return each image shifted by up to ``pad`` pixels (zero padding, then a random HxW crop)."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return x.clone()
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dy = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), x.device)
    dx = _to(torch.randint(0, 2 * pad + 1, (b,), generator=generator), x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]  # (B, C, H, W)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Return the batch with each image mirrored left-right with probability ``p``."""
    flip = _uniform(len(x), generator, x.device) < p  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_erase(
    x: torch.Tensor, generator: torch.Generator, p: float = 0.5, area: tuple[float, float] = (0.02, 0.25)
) -> torch.Tensor:
    """Return the batch with, in each image with probability ``p``, a random rectangle set to 0.

    The rectangle covers a fraction of the image drawn uniformly from ``area`` with an aspect
    ratio between 1/3 and 3 (as in Zhong et al. 2017).
    """
    b, _, h, w = x.shape
    frac = area[0] + (area[1] - area[0]) * _uniform(b, generator, x.device)
    log_ratio = (_uniform(b, generator, x.device) * 2 - 1) * math.log(3.0)
    ratio = log_ratio.exp()
    eh = (frac * h * w * ratio).sqrt().clamp(1, h).floor()
    ew = (frac * h * w / ratio).sqrt().clamp(1, w).floor()
    y0 = (_uniform(b, generator, x.device) * (h - eh + 1)).floor()
    x0 = (_uniform(b, generator, x.device) * (w - ew + 1)).floor()
    apply = _uniform(b, generator, x.device) < p
    r = torch.arange(h, device=x.device)[None, :, None]  # (1, H, 1)
    c = torch.arange(w, device=x.device)[None, None, :]  # (1, 1, W)
    inside = (
        (r >= y0[:, None, None]) & (r < (y0 + eh)[:, None, None])
        & (c >= x0[:, None, None]) & (c < (x0 + ew)[:, None, None])
        & apply[:, None, None]
    )  # (B, H, W)
    return x.masked_fill(inside[:, None], 0)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, crop_pad: int = 0, flip: bool = False, erase: float = 0.0
) -> torch.Tensor:
    """Return ``x`` through the enabled augmentations: crop, then flip, then erase."""
    if crop_pad:
        x = random_crop(x, crop_pad, generator)
    if flip:
        x = random_flip(x, generator)
    if erase > 0:
        x = random_erase(x, generator, p=erase)
    return x

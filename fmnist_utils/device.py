"""Choose the device and numeric precision, by detection rather than assumption."""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16")


DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N | mps"


def parse_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a torch.device, or raise ValueError listing the allowed spellings.

    Only the spelling is checked (``cuda:abc`` and ``foo`` are errors); whether the device exists
    here is :func:`resolve_device`'s business, so a config can be written on one machine and run
    on another.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device).strip())
        except (RuntimeError, ValueError, TypeError):  # torch's message lists every backend it knows
            raise ValueError(f"not a device name; use {DEVICE_CHOICES}") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"the kit runs on {', '.join(DEVICE_TYPES)} only; use {DEVICE_CHOICES}")
    return dev


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return ``device``, or for ``"auto"`` the best available: CUDA, then Apple MPS, then CPU.

    Raises ValueError when the device is misspelt or not available on this machine.
    """
    if str(device) != "auto":
        try:
            dev = parse_device(device)
        except ValueError as exc:
            raise ValueError(f"device={device!r}: {exc}") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'auto' or 'cpu'")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ValueError(
                    f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                    f"numbered from 0; use 'cuda' or a smaller index"
                )
        if dev.type == "mps" and not _mps_available():
            raise ValueError(f"device={device!r}: Apple's MPS backend is not available on this machine; use 'auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cpu_has_fast_bf16() -> bool:
    """Return True when this CPU computes bf16 natively (AVX512-BF16 or AMX).

    Without them bf16 is emulated and slower than fp32. ``FMNIST_CPU_BF16=0/1`` overrides.
    """
    env = os.environ.get("FMNIST_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return ``"bf16"`` or ``"fp32"``: ``"auto"`` picks bf16 where the hardware runs it fast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """Return a context that runs the forward pass in ``precision`` ("bf16" or "fp32")."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_count() -> int:
    """Return the CPU cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe(device: torch.device) -> str:
    """Return a one-line human description of ``device`` (GPU name, or CPU model and threads)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    if device.type == "cpu":
        model = "CPU"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return f"{model}, {torch.get_num_threads()} threads"
    return device.type

"""Choose the device and numeric precision, by detection rather than assumption."""

from __future__ import annotations

import contextlib
import os

import torch

from . import env

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CUDA compute capabilities (major, minor) from which a precision runs natively and fast: bf16
# tensor cores arrived with Ampere (8.0); Volta and Turing (7.x: V100, T4) have fp16 tensor cores
# only. torch.cuda.is_bf16_supported() answers True on a T4 through emulation, slower than fp32,
# so the kit decides by capability instead.
BF16_CAPABILITY = (8, 0)
FP16_CAPABILITY = (7, 0)
# Autocast dtype of each reduced precision ("fp32" runs without autocast).
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    forced = env.flag("FMNIST_CPU_BF16")
    if forced is not None:
        return forced
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Return ``"bf16"``, ``"fp16"`` or ``"fp32"``: ``"auto"`` picks what the hardware runs fast.

    On CUDA: bf16 from compute capability 8.0, fp16 (with loss scaling, see
    :func:`needs_grad_scaler`) on 7.x, fp32 below. On a CPU: bf16 where it is native
    (:func:`cpu_has_fast_bf16`), else fp32. Elsewhere fp32. :func:`precision_reason` says why.
    """
    return _auto_precision(precision, device)[0]


def precision_reason(device: torch.device) -> str:
    """Return one line saying which precision ``"auto"`` picks on ``device`` and why (for reports)."""
    return _auto_precision("auto", device)[1]


def _auto_precision(precision: str, device: torch.device) -> tuple[str, str]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision, f"{precision}: asked for explicitly"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        cc = f"compute capability {capability[0]}.{capability[1]}"
        if capability >= BF16_CAPABILITY:
            return "bf16", f"bf16 autocast: {cc} has native bf16 tensor cores (>= 8.0)"
        if capability >= FP16_CAPABILITY:
            return "fp16", (f"fp16 autocast with loss scaling: {cc} has fp16 tensor cores but emulates bf16 "
                            "(slower than fp32)")
        return "fp32", f"fp32: {cc} has no half-precision tensor cores (< 7.0)"
    if device.type == "cpu":
        forced = env.flag("FMNIST_CPU_BF16") is not None
        why = "FMNIST_CPU_BF16 is set" if forced else None
        if cpu_has_fast_bf16():
            return "bf16", f"bf16 autocast: {why or 'this CPU computes bf16 natively (AVX512-BF16 or AMX)'}"
        return "fp32", f"fp32: {why or 'this CPU lacks AVX512-BF16 and AMX, so bf16 would be emulated and slower'}"
    return "fp32", f"fp32: the kit does not use autocast on {device.type}"


def needs_grad_scaler(precision: str) -> bool:
    """Return True when training in ``precision`` needs a ``torch.amp.GradScaler`` (fp16: small
    gradients underflow to zero without loss scaling; bf16 has fp32's exponent range and does not).
    """
    return precision == "fp16"


def autocast(device: torch.device, precision: str):
    """Return a context that runs the forward pass in ``precision`` ("bf16", "fp16" or "fp32")."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
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

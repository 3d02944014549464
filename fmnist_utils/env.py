"""The kit's environment variables, read in this one place: :func:`env` and :func:`flag` (one
yes/no parser). It imports nothing of the kit, so every module may use it at import time, the
lowest layers (paths, device, data, progress, models) included; :mod:`fmnist_utils.settings`
re-exports both names.
"""

from __future__ import annotations

import os

ENVIRONMENT = {
    "FMNIST_ROOT": "the kit's root folder (default: the checkout)",
    "FMNIST_RUNS": "the folder of run folders (default: <root>/runs)",
    "FMNIST_REPORT": "the report folder (default: <root>/report)",
    "FMNIST_DATA": "a folder holding Fashion-MNIST's four files",
    "FMNIST_DATA_UNVERIFIED": "yes: load the data without its SHA-256 check",
    "FMNIST_CPU_BF16": "yes/no: force bf16 autocast on the CPU on or off (unset: where the CPU runs it natively)",
    "FMNIST_RESNET18_WEIGHTS": "the ImageNet ResNet-18 weights file (resnet18-f37072fd.pth)",
    "FMNIST_PROGRESS": "bar | lines | off: how training shows its progress",
    "FMNIST_CHROMIUM": "the Chrome or Chromium executable that prints the PDF",
    "FMNIST_IGNORE_ESTIMATE": "yes: run the full profile even where its estimate says hours",
}
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def env(name: str) -> str | None:
    """Return the value of the kit's environment variable ``name`` (a key of :data:`ENVIRONMENT`),
    stripped of surrounding blanks; None when it is unset or blank."""
    if name not in ENVIRONMENT:
        raise KeyError(f"{name} is not one of the kit's environment variables: {sorted(ENVIRONMENT)}")
    value = os.environ.get(name, "").strip()
    return value or None


def flag(name: str) -> bool | None:
    """Return a yes/no environment variable: True for 1/true/yes/on, False for 0/false/no/off (any
    case), None when unset or blank; any other value raises ValueError naming the variable."""
    value = env(name)
    if value is None:
        return None
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise ValueError(f"${name}={value!r} is not a yes/no value: set it to one of {TRUE_WORDS} or {FALSE_WORDS}, "
                     f"or unset it ({ENVIRONMENT[name]})")

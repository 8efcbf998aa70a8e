"""Device choice: the GPU when there is one, the CPU otherwise, so every path runs on both."""

from __future__ import annotations

import torch

from common.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def gpu_available() -> bool:
    """True when torch sees a CUDA device."""
    return torch.cuda.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda when available; asking for cuda without one is an error, not a silent CPU run."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    if name == "cuda" and not gpu_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no GPU; use 'cpu' or 'auto'")
    if name == "auto":
        name = "cuda" if gpu_available() else "cpu"
    return torch.device(name)


def reserved_device(gpus: float, role: str) -> torch.device:
    """The device of a Ray process given `gpus` by Ray: resolve_device's "auto" when it holds a GPU, else the CPU.

    A GPU Ray reserved is used when this process sees CUDA; where it does not (a node without a CUDA build
    of torch, or a test cluster's declared GPU) the process runs on the CPU and says so in one line.
    """
    device = resolve_device("auto" if gpus > 0 else "cpu")
    if gpus > 0 and device.type == "cpu":
        print(f"{role}: a GPU was reserved but torch sees no CUDA device here; running on the CPU", flush=True)
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check), where bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_warning(config, device: torch.device) -> str | None:
    """One line when a preset asks for bf16 autocast on a CPU that would emulate it (slowly), else None."""
    if device.type != "cpu" or not (config.acting.bf16 or config.learning.bf16) or cpu_has_native_bf16():
        return None
    return ("warning: acting.bf16/learning.bf16 are on but this CPU has no native bfloat16; they will be slow "
            "here: add --set acting.bf16=false --set learning.bf16=false")

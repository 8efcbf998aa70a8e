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


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` computes bfloat16 natively, and the evidence in words (for the start-up line)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"{torch.cuda.get_device_name(device)} {'computes' if supported else 'lacks'} bfloat16"
    if cpu_has_native_bf16():
        return True, f"this CPU computes bfloat16 natively (oneDNN, ISA {torch.backends.cpu.get_cpu_capability()})"
    return False, (f"this CPU has no native bfloat16 (oneDNN, ISA {torch.backends.cpu.get_cpu_capability()}): "
                   "autocast would emulate it, several times slower than float32")


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """acting.bf16 / learning.bf16 for this process's device: "auto" is on exactly where bf16 is native.

    Each process resolves on its own device (a GPU learner, CPU rollout actors), so a checkpoint resumed on
    other hardware re-resolves "auto"; an explicit true or false is kept as given.
    """
    return native_bf16(device)[0] if setting == "auto" else bool(setting)


def precision_line(config, device: torch.device) -> str:
    """The start-up line: the precision acting and learning run at on `device`, and why."""
    native, why = native_bf16(device)
    parts = []
    for role, setting in (("acting", config.acting.bf16), ("learning", config.learning.bf16)):
        resolved = "bf16 autocast" if resolve_bf16(setting, device) else "float32"
        parts.append(f"{role} {resolved} ({'auto' if setting == 'auto' else 'set'})")
    line = f"precision on {device.type}: {', '.join(parts)}; {why}"
    explicit_slow = not native and device.type == "cpu" and (config.acting.bf16 is True or config.learning.bf16 is True)
    if explicit_slow:
        line += ("\nwarning: bf16 was set explicitly on a CPU without native bfloat16; it runs, slowly: "
                 "--set acting.bf16=auto --set learning.bf16=auto picks float32 here")
    return line

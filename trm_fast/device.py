"""The torch device a config or command line names ("auto": CUDA where available, else the CPU)."""
from __future__ import annotations

import torch


def resolve_device(name: str, flag: str | None = None) -> torch.device:
    """`flag` is the command-line flag the user typed the name with (errors name it); None: the config field
    train.device."""
    said = f"{flag} {name}" if flag else f"config field train.device = {name!r}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{said}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{said}: no CUDA device is available")
    return device

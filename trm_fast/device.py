"""The torch device a config or command line names ("auto": CUDA where available, else the CPU)."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config field train.device = {name!r}, but no CUDA device is available")
    return device

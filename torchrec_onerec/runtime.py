"""Process-wide runtime choices: the device and the seed every random generator derives from."""

from __future__ import annotations

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """Turn a config's ``device`` into a ``torch.device``.

    Args:
        name: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device={name!r} is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available here; use device=auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r}: only cpu and cuda are supported")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from the config's one ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""Picking a device and making runs repeatable.

Every lesson starts with `device = get_device()`: the same notebook then runs on an NVIDIA
GPU (cuda), an Apple GPU (mps) or the CPU without edits. Nothing else in tantra_lib names a
device: functions take it from their inputs. Tested in tests/test_lib_device.py.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["get_device", "seed_everything"]


def get_device() -> torch.device:
    """The best device here: cuda if available, else mps, else cpu.

    The environment variable ``TANTRA_DEVICE`` (e.g. ``cpu``) overrides the choice.
    """
    forced = os.environ.get("TANTRA_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's random generators (every device) with `seed`."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every cuda/mps device

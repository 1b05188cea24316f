"""Shared fixtures. `device` runs a test on every device present: cpu always, cuda / mps
when available."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TANTRA_QUICK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def available_devices() -> list[str]:
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    return devs


@pytest.fixture(params=available_devices())
def device(request, monkeypatch) -> torch.device:
    """Each test that takes `device` runs once per available device; tantra_lib.get_device()
    (used by the checks) follows it."""
    monkeypatch.setenv("TANTRA_DEVICE", request.param)
    return torch.device(request.param)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (restored afterwards): tiny models run faster on one
    thread than on two, and are then immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

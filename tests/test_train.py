"""tantra_lib.train: the schedule, the optimizer groups, a short real training run on
Shakespeare, checkpoints (round trip and every kind of bad file) and the CLI end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tantra_lib import GPT, GPTConfig
from tantra_lib.cli import main
from tantra_lib.data import CharTokenizer, shakespeare_text, train_val_split
from tantra_lib.train import (
    RECIPE,
    CheckpointError,
    configure_optimizer,
    load_checkpoint,
    lr_at,
    plot_history,
    save_checkpoint,
    train,
)

REPO = Path(__file__).resolve().parents[1]


# Small models: one thread is faster than two (the `one_thread` fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    text = shakespeare_text()
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tok.encode(text))
    return tok, train_ids, val_ids


def small_model(vocab_size=84, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=vocab_size, block_size=32, d_model=48))


def test_lr_schedule():
    kw = dict(steps=1000, lr=1e-3, warmup_steps=100, min_lr=1e-4)
    lrs = [lr_at(s, **kw) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)  # linear warm-up
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100]))
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:]))  # then only down
    assert lrs[550] == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-6)  # cosine half-way point
    assert lr_at(1000, **kw) == pytest.approx(1e-4)
    assert lr_at(300, **kw, progress=1.0) == pytest.approx(1e-4)  # a time budget can finish it early


def test_weight_decay_only_on_matrices():
    model = small_model()
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # the tied matrix once
    assert any(p is model.tok_emb.weight for p in decay["params"])
    assert any(p is model.ln_f.weight for p in no_decay["params"])


def test_200_steps_on_shakespeare_learn(corpus):
    tok, train_ids, val_ids = corpus
    model = small_model(tok.vocab_size)
    history = train(model, train_ids, val_ids, steps=200, batch_size=32, lr=1e-2, warmup_steps=20,
                    min_lr=1e-3, eval_every=100, progress=False)
    assert history["step"] == list(range(1, 201))
    assert len(history["train_loss"]) == len(history["lr"]) == 200
    assert history["eval_step"] == [100, 200]
    assert len(history["val_loss"]) == len(history["tokens_per_s"]) == len(history["elapsed_s"]) == 2
    assert all(t > 0 for t in history["tokens_per_s"])
    assert math.log(tok.vocab_size) == pytest.approx(4.43, abs=0.01)
    assert history["val_loss"][-1] < 2.5, history["val_loss"]  # the uniform guess is ln 84 = 4.43
    assert history["lr"][19] == pytest.approx(1e-2) and history["lr"][-1] < 1.1e-3
    ax = plot_history(history)
    assert len(ax.lines) == 3


def test_time_budget_stops_early(corpus):
    tok, train_ids, val_ids = corpus
    model = small_model(tok.vocab_size)
    history = train(model, train_ids, val_ids, steps=100_000, batch_size=4, lr=1e-3, warmup_steps=0,
                    min_lr=1e-4, eval_every=1000, progress=False, max_seconds=0.5, eval_batches=2)
    assert 0 < len(history["step"]) < 100_000
    assert history["eval_step"] == [history["step"][-1]]  # measured where it stopped
    assert history["lr"][-1] < history["lr"][0]  # the cosine followed the clock


def test_train_rejects_bad_arguments(corpus):
    tok, train_ids, val_ids = corpus
    model = small_model(tok.vocab_size)
    common = dict(batch_size=2, lr=1e-3, warmup_steps=0, min_lr=1e-4, eval_every=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(model, train_ids, val_ids, steps=0, **common)
    with pytest.raises(ValueError, match="min_lr"):
        train(model, train_ids, val_ids, steps=1, **{**common, "min_lr": 1.0})


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    tok = CharTokenizer.from_text("abcdefg \n")
    model = small_model(tok.vocab_size)
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", model, tok, extra={"val_loss": 1.5})
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    # plain types only: loadable with weights_only=True
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == model.config.to_dict() and payload["vocab"] == "".join(tok.chars)
    loaded, tok2 = load_checkpoint(path)
    assert tok2 == tok and loaded.config == model.config and not loaded.training
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    idx = torch.tensor([tok.encode("bad cafe")])
    model.eval()
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_truncated_and_corrupted_checkpoints(tmp_path):
    tok = CharTokenizer.from_text("abcdefg")
    good = save_checkpoint(tmp_path / "good.pt", small_model(tok.vocab_size), tok)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, empty):
        with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
            load_checkpoint(bad)
        assert "Traceback" not in str(err.value)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


class NotAllowed:  # an arbitrary pickled class: weights_only=True must refuse it
    pass


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "tantra-gpt", "payload": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a tantra GPT checkpoint"):
        load_checkpoint(other)


def test_mismatched_checkpoints(tmp_path):
    tok = CharTokenizer.from_text("abcdefg")
    model = small_model(tok.vocab_size)
    path = save_checkpoint(tmp_path / "ck.pt", model, tok)
    payload = torch.load(path, weights_only=True)

    def write(name, **changes):
        p = tmp_path / name
        torch.save({**payload, **changes}, p)
        return p

    sd = dict(payload["state_dict"])
    del sd["blocks.1.ffn.fc_in.weight"]
    sd["blocks.9.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing 1 key.*blocks\.1\.ffn\.fc_in\.weight.*unexpected.*blocks\.9"):
        load_checkpoint(write("keys.pt", state_dict=sd))
    bigger = {**payload["config"], "d_model": 64}
    with pytest.raises(CheckpointError, match=r"shape mismatch.*tok_emb\.weight"):
        load_checkpoint(write("shape.pt", config=bigger))
    with pytest.raises(CheckpointError, match="vocabulary has 8 characters"):
        load_checkpoint(write("vocab.pt", vocab="abcdefgh"))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(write("config.pt", config={**payload["config"], "n_experts": 4}))
    with pytest.raises(ValueError, match="tokenizer has"):
        save_checkpoint(tmp_path / "x.pt", model, CharTokenizer("ab"))


# ---------------------------------------------------------------- the CLI


def run_cli(*args, timeout=180):
    env = {**os.environ, "TANTRA_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tantra_lib", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_train_then_sample(tmp_path, capsys, monkeypatch):
    ck = tmp_path / "ck.pt"
    res = run_cli("train", "--steps", "20", "--out", str(ck), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert ck.is_file() and "validation loss" in res.stdout and "wrote" in res.stdout
    assert "step" in res.stderr  # the tqdm progress bar
    model, tok = load_checkpoint(ck)
    assert model.config == GPTConfig.preset(RECIPE["preset"], vocab_size=84)

    res = run_cli("sample", str(ck), "--prompt", "ROMEO:", "--tokens", "40", "--seed", "1", "--top-k", "10")
    assert res.returncode == 0, res.stderr
    out = res.stdout[:-1]  # print's newline
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 40

    # the rest in-process (same entry point, no interpreter start-up)
    monkeypatch.setenv("TANTRA_DEVICE", "cpu")

    def cli(*args):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, again, _ = cli("sample", str(ck), "--prompt", "ROMEO:", "--tokens", "40", "--seed", "1", "--top-k", "10")
    assert code == 0 and again == res.stdout  # the seed makes it repeatable
    code, greedy, _ = cli("sample", str(ck), "--prompt", "To be", "--tokens", "10", "--temperature", "0")
    assert code == 0 and greedy.startswith("To be") and len(greedy) == len("To be") + 10 + 1

    code, _, err = cli("sample", str(ck), "--prompt", "Grüß")
    assert code == 2 and "'ü'" in err
    code, _, err = cli("sample", str(tmp_path / "nope.pt"))
    assert code == 1 and "no checkpoint at" in err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ck.read_bytes()[:1000])
    code, _, err = cli("sample", str(broken))
    assert code == 1 and "not a readable checkpoint" in err
    code, _, err = cli("sample", str(ck), "--top-k", "0")
    assert code == 2 and "--top-k" in err
    code, _, err = cli("train", "--steps", "0")
    assert code == 2 and "--steps" in err

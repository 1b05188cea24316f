"""Training a GPT on text, saving it, and the `tantra train` / `tantra sample` commands.

The loop is the one nanoGPT uses: random windows of the training ids, AdamW (weight decay on
the matrices only: biases and LayerNorm gains are not shrunk towards 0), a linear warm-up of
the learning rate then a cosine decay to ``min_lr``, gradients clipped to norm 1.0, and the
validation loss measured every ``eval_every`` steps on a fixed set of held-out windows (the
same windows every time, so the curve is not noise from resampling).

Checkpoints hold plain types only (the config as a dict, the vocabulary as a string, the
weights as tensors) and are read with ``torch.load(weights_only=True)``, which cannot run
code hidden in a file; a truncated, corrupted or mismatched file raises ``CheckpointError``
saying what is wrong.

Taught in lessons/08_gpt. Tested in tests/test_train.py (a 200-step run, checkpoints, the CLI);
bench/gpt.py times the default recipe.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .data import CharTokenizer, get_batch, shakespeare_text, train_val_split
from .device import get_device
from .gpt import GPT, GPTConfig
from .shortcut_guard import reference

__all__ = [
    "RECIPE",
    "CheckpointError",
    "configure_optimizer",
    "lr_at",
    "evaluate",
    "train",
    "plot_history",
    "save_checkpoint",
    "load_checkpoint",
    "train_shakespeare",
    "cmd_train",
    "cmd_sample",
]

# The default `tantra train` recipe: the "shakespeare" preset (3 layers, 4 heads, d_model 128,
# block 64: 0.61 M parameters) trained on the plays. `max_seconds` is a wall-clock budget: the
# cosine schedule follows whichever of steps or time runs out first, so the run ends on time
# (with its learning rate decayed) on a slow machine too. The goal on the course's 2-core CPU:
# validation loss <= 1.55 nats/char within 4 minutes of wall time; `python -m bench gpt` measures it.
RECIPE: dict = dict(
    preset="shakespeare",  # GPTConfig preset (tantra_lib.gpt.PRESETS)
    steps=12000,  # optimisation steps, unless the time budget runs out first
    max_seconds=210.0,  # wall-clock budget of the training loop (evaluations included)
    batch_size=12,  # windows per step (x 64 characters = 768 tokens)
    lr=5e-3,  # peak learning rate, reached after the warm-up (small models like it high)
    warmup_steps=100,  # linear warm-up from 0
    min_lr=1e-4,  # the cosine decay ends here
    weight_decay=0.1,  # AdamW decay of the weight matrices
    eval_every=500,  # steps between validation measurements
    eval_batches=40,  # fixed validation windows per measurement: 40 x 12 x 64 characters
    seed=0,  # initialisation and batch order
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, corrupted or mismatched."""


@reference("configure_optimizer")
def configure_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99)
) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter with >= 2 dims (Linear weights, embeddings)
    and none on vectors (biases, LayerNorm weights). A tied matrix appears once."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied one once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@reference("lr_at")
def lr_at(step: int, steps: int, lr: float, warmup_steps: int, min_lr: float, progress: float | None = None) -> float:
    """The learning rate for optimisation step ``step`` (0-based) of ``steps``.

    Linear warm-up 0 -> lr over the first warmup_steps steps, then a half cosine lr -> min_lr.
    ``progress`` in [0, 1] (default: step / steps) is how far the cosine has gone; a time
    budget passes the fraction of its time used instead.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if progress is None:
        decay_steps = max(1, steps - warmup_steps)
        progress = (step - warmup_steps) / decay_steps
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def _fixed_batches(ids: torch.Tensor, block_size: int, batch_size: int, n_batches: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [get_batch(ids, block_size, batch_size, generator=gen) for _ in range(n_batches)]


@torch.no_grad()
def _mean_loss(model: nn.Module, batches, device) -> float:
    was_training = model.training
    model.eval()
    try:
        losses = [model(x.to(device), y.to(device))[1].item() for x, y in batches]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


@reference("evaluate")
def evaluate(
    model: GPT, ids, *, batch_size: int = 32, n_batches: int = 50, seed: int = 1234, device=None
) -> float:
    """Mean cross-entropy (nats per token) of ``model`` on n_batches fixed random windows of ids (N,)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long)
    batches = _fixed_batches(ids, model.config.block_size, batch_size, n_batches, seed)
    return _mean_loss(model, batches, device)


@reference("train")
def train(
    model: GPT,
    train_ids,
    val_ids,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    min_lr: float,
    eval_every: int,
    device=None,
    progress: bool = True,
    weight_decay: float = 0.1,
    eval_batches: int = 20,
    max_seconds: float | None = None,
    seed: int = 0,
) -> dict:
    """Train ``model`` (a GPT, in place) on random windows of train_ids (N,), measuring val_ids.

    steps: optimisation steps; batch_size: windows of model.config.block_size per step;
    lr / warmup_steps / min_lr: the schedule (see ``lr_at``); eval_every: steps between
    validation measurements (also one at the end), each the mean loss over eval_batches fixed
    windows of val_ids; device: where to train (None: where the model is); progress: a tqdm
    bar with the live loss; max_seconds: optional wall-clock budget, after which training
    stops (the cosine then follows time instead of steps, so it still ends decayed);
    seed: the order of the training windows.

    Returns the history, a dict of lists:
      per step:        "step" (1-based), "train_loss", "lr"
      per evaluation:  "eval_step", "val_loss", "tokens_per_s" (training throughput since the
                       previous evaluation, evaluation time excluded), "elapsed_s" (wall time)
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not (lr > 0 and 0 <= min_lr <= lr):
        raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={lr!r}, min_lr={min_lr!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be None or > 0, got {max_seconds!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    block_size = model.config.block_size
    train_ids = torch.as_tensor(train_ids, dtype=torch.long)
    val_ids = torch.as_tensor(val_ids, dtype=torch.long)
    if train_ids.dim() != 1 or val_ids.dim() != 1:
        raise ValueError("train_ids and val_ids must be 1-D sequences of token ids")

    optimizer = configure_optimizer(model, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    val_batches = _fixed_batches(val_ids, block_size, batch_size, eval_batches, seed=1234)
    history: dict[str, list] = {k: [] for k in
                                ("step", "train_loss", "lr", "eval_step", "val_loss", "tokens_per_s", "elapsed_s")}

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True, desc="training")
    start = time.perf_counter()
    train_time, tokens_since = 0.0, 0  # since the last evaluation
    smooth = None
    model.train()
    step = 0
    try:
        while step < steps:
            elapsed = time.perf_counter() - start
            progress_frac = None
            if max_seconds is not None:
                if elapsed >= max_seconds:
                    break
                by_steps = (step - warmup_steps) / max(1, steps - warmup_steps)
                progress_frac = max(by_steps, elapsed / max_seconds)
            lr_now = lr_at(step, steps, lr, warmup_steps, min_lr, progress_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr_now

            t0 = time.perf_counter()
            x, y = get_batch(train_ids, block_size, batch_size, generator=gen, device=device)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_value = loss.item()  # also waits for the device, so the timing is honest
            train_time += time.perf_counter() - t0
            tokens_since += x.numel()
            step += 1

            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the training loss became {loss_value} at step {step}; lower the lr")
            history["step"].append(step)
            history["train_loss"].append(loss_value)
            history["lr"].append(lr_now)
            smooth = loss_value if smooth is None else 0.95 * smooth + 0.05 * loss_value

            if step % eval_every == 0 or step == steps:
                _record_eval(history, model, val_batches, device, step, tokens_since, train_time, start)
                train_time, tokens_since = 0.0, 0
            bar.update(1)
            if step % 10 == 0 or step == 1:
                post = {"loss": f"{smooth:.3f}", "lr": f"{lr_now:.1e}"}
                if history["val_loss"]:
                    post["val"] = f"{history['val_loss'][-1]:.3f}"
                bar.set_postfix(post, refresh=False)
        if not history["eval_step"] or history["eval_step"][-1] != step:
            if step > 0:  # stopped by the time budget: measure where we ended
                _record_eval(history, model, val_batches, device, step, tokens_since, train_time, start)
        if history["val_loss"]:
            bar.set_postfix({"loss": f"{smooth:.3f}", "val": f"{history['val_loss'][-1]:.3f}"})
    finally:
        bar.close()
    return history


def _record_eval(history, model, val_batches, device, step, tokens, train_time, start) -> None:
    history["eval_step"].append(step)
    history["val_loss"].append(_mean_loss(model, val_batches, device))
    history["tokens_per_s"].append(tokens / train_time if train_time > 0 else float("nan"))
    history["elapsed_s"].append(time.perf_counter() - start)


@reference("plot_history")
def plot_history(history: dict, ax=None):
    """Training loss (raw and smoothed) and validation loss against step; returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    steps, losses = history["step"], history["train_loss"]
    if losses:
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        smooth, out = losses[0], []
        for v in losses:
            smooth = 0.98 * smooth + 0.02 * v
            out.append(smooth)
        ax.plot(steps, out, color="tab:blue", label="train (smoothed)")
    if history.get("val_loss"):
        ax.plot(history["eval_step"], history["val_loss"], "o-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


# ----------------------------------------------------------------------------------------
# checkpoints

_FORMAT = "tantra-gpt"
_VERSION = 1


@reference("save_checkpoint")
def save_checkpoint(path, model: GPT, tokenizer: CharTokenizer, extra: dict | None = None) -> Path:
    """Write model (its config and weights) and tokenizer (its vocabulary) to ``path``.

    Only plain types and tensors are stored, so ``load_checkpoint`` can use
    torch.load(weights_only=True). ``extra``: plain-typed metadata (e.g. the final val loss).
    The file is written next to its destination and renamed, so a crash never leaves half a
    checkpoint under the final name.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"save_checkpoint saves a tantra_lib.GPT, got {type(model).__name__}")
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"save_checkpoint needs a CharTokenizer, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model {model.config.vocab_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": model.config.to_dict(),
        "vocab": "".join(tokenizer.chars),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


@reference("load_checkpoint")
def load_checkpoint(path, device=None) -> tuple[GPT, CharTokenizer]:
    """Read a checkpoint written by ``save_checkpoint`` -> (model in eval mode, tokenizer).

    Raises CheckpointError (a ValueError) naming the problem for a missing, truncated,
    corrupted or mismatched file; the weights are checked key by key and shape by shape.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (train one with `tantra train --out {path}`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError from the zip reader, EOFError, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupted, or not written by save_checkpoint): "
            f"{reason[:200]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a tantra GPT checkpoint (no format={_FORMAT!r})")
    if payload.get("version") != _VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; this code reads {_VERSION}")
    for key, kind in (("config", dict), ("vocab", str), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: entry {key!r} is missing or not a {kind.__name__}")
    try:
        config = GPTConfig.from_dict(payload["config"])
        tokenizer = CharTokenizer(payload["vocab"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid config or vocabulary: {err}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: the vocabulary has {tokenizer.vocab_size} characters but the config says "
            f"vocab_size={config.vocab_size}"
        )
    model = GPT(config)
    expected = model.state_dict()
    found = payload["state_dict"]
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in found and (not isinstance(found[k], torch.Tensor) or found[k].shape != expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatch(es): {'; '.join(wrong_shape[:8])}")
        raise CheckpointError(f"{path}: the weights do not match its config: " + " | ".join(parts))
    model.load_state_dict(found)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------
# the default recipe and the CLI


@reference("train_shakespeare")
def train_shakespeare(
    steps: int | None = None,
    device=None,
    progress: bool = True,
    max_seconds: float | None = -1.0,
    **overrides,
) -> tuple[GPT, CharTokenizer, dict]:
    """The default recipe (``RECIPE``) end to end -> (trained model, tokenizer, history).

    steps: None runs the recipe with its time budget; an int runs exactly that many steps
    (no time budget, the cosine spread over them). max_seconds: -1 keeps the recipe's rule,
    None removes the budget, a number sets it. overrides: any other RECIPE entry.
    """
    recipe = {**RECIPE, **overrides}
    unknown = sorted(set(overrides) - set(RECIPE))
    if unknown:
        raise ValueError(f"unknown recipe entries {unknown}; known: {sorted(RECIPE)}")
    if max_seconds == -1.0:
        max_seconds = recipe["max_seconds"] if steps is None else None
    if steps is not None:
        recipe["steps"] = steps
    device = torch.device(device) if device is not None else get_device()
    text = shakespeare_text()
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tokenizer.encode(text), 0.1)
    torch.manual_seed(recipe["seed"])
    model = GPT(GPTConfig.preset(recipe["preset"], vocab_size=tokenizer.vocab_size)).to(device)
    history = train(
        model,
        train_ids,
        val_ids,
        steps=recipe["steps"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        warmup_steps=min(recipe["warmup_steps"], max(0, recipe["steps"] // 10)),
        min_lr=recipe["min_lr"],
        eval_every=recipe["eval_every"],
        device=device,
        progress=progress,
        weight_decay=recipe["weight_decay"],
        eval_batches=recipe["eval_batches"],
        max_seconds=max_seconds,
        seed=recipe["seed"],
    )
    return model, tokenizer, history


def _error(message: str, code: int = 2) -> int:
    print(f"tantra: error: {message}", file=sys.stderr)
    return code


def cmd_train(args) -> int:
    """`tantra train [--steps N] [--out PATH] [--device D]`."""
    if args.steps is not None and args.steps < 1:
        return _error(f"--steps must be >= 1, got {args.steps}")
    try:
        device = torch.device(args.device) if args.device else get_device()
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as err:
        return _error(f"cannot use device {args.device!r}: {str(err).splitlines()[0]}")
    budget = f"{RECIPE['max_seconds']:.0f} s budget" if args.steps is None else "no time budget"
    print(f"training the default recipe on {device} "
          f"({args.steps or RECIPE['steps']} steps at most, {budget}); checkpoint -> {args.out}", flush=True)
    start = time.perf_counter()
    model, tokenizer, history = train_shakespeare(steps=args.steps, device=device, progress=True)
    wall = time.perf_counter() - start
    steps_done = history["step"][-1] if history["step"] else 0
    val = history["val_loss"][-1] if history["val_loss"] else float("nan")
    tps = history["tokens_per_s"][-1] if history["tokens_per_s"] else float("nan")
    print(f"{model.num_parameters() / 1e6:.2f} M parameters, {steps_done} steps in {wall:.0f} s "
          f"(~{tps:,.0f} tokens/s); validation loss {val:.3f} nats/char")
    path = save_checkpoint(args.out, model, tokenizer,
                           extra={"steps": steps_done, "val_loss": val, "train_seconds": wall})
    print(f"wrote {path}; try: tantra sample {path}")
    return 0


def cmd_sample(args) -> int:
    """`tantra sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]`."""
    if args.tokens < 0:
        return _error(f"--tokens must be >= 0, got {args.tokens}")
    if not args.temperature >= 0:
        return _error(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        return _error(f"--top-k must be >= 1, got {args.top_k}")
    if not args.prompt:
        return _error("--prompt must not be empty (the model needs at least one character to continue)")
    try:
        device = torch.device(args.device) if getattr(args, "device", None) else get_device()
        model, tokenizer = load_checkpoint(args.checkpoint, device=device)
    except CheckpointError as err:
        return _error(str(err), 1)
    except (RuntimeError, ValueError) as err:
        return _error(f"cannot use device {args.device!r}: {str(err).splitlines()[0]}")
    try:
        prompt_ids = tokenizer.encode(args.prompt)
    except ValueError as err:
        return _error(f"the prompt cannot be encoded: {err}")
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    out = model.generate(idx, args.tokens, temperature=args.temperature, top_k=args.top_k, generator=generator)
    print(tokenizer.decode(out[0].tolist()))
    return 0

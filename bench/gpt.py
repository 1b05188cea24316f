"""GPT benchmarks (issue 6): training speed against torch's own modules, the KV cache's
speed-up, and the quality the default `tantra train` recipe reaches in its time budget.

1. training tokens/s of tantra_lib.GPT vs the same architecture built from
   nn.TransformerEncoderLayer (norm_first, GELU, causal), same batches and optimizer,
   measured in alternating rounds in one process (goal: ratio >= 0.8);
2. generating 1,024 tokens, batch 1, block_size 1,024, 4 layers, 8 heads, d_model 256, with
   and without the KV cache (goal: >= 20x), checking that both give the same tokens;
3. the default recipe end to end (goal: validation loss <= 1.55 nats/char within 4 minutes).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from tantra_lib import GPT, GPTConfig
from tantra_lib.train import RECIPE, configure_optimizer, evaluate, train_shakespeare


class TorchGPT(nn.Module):
    """The same GPT from torch's modules: nn.Embedding x2, nn.TransformerEncoderLayer
    (norm_first, GELU, causal mask), nn.LayerNorm, an nn.Linear tied to the embedding."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(c.d_model, c.n_head, c.d_ff, dropout=c.dropout, activation="gelu",
                                       batch_first=True, norm_first=True, bias=c.bias)
            for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.d_model, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        for p in self.parameters():  # same init scale as GPT-2 (not that speed depends on it)
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _train_rate(model, batches, steps: int) -> float:
    """Training tokens per second over `steps` steps (forward, backward, clip, AdamW)."""
    opt = configure_optimizer(model, lr=1e-3)
    model.train()
    start = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    loss.item()
    return steps * batches[0][0].numel() / (time.perf_counter() - start)


def bench_training_speed(quick: bool) -> list[str]:
    config = GPTConfig.preset("tiny" if quick else RECIPE["preset"], vocab_size=84)
    batch, steps, rounds = (4, 5, 2) if quick else (RECIPE["batch_size"], 60, 5)
    gen = torch.Generator().manual_seed(0)
    batches = [tuple(torch.randint(0, 84, (batch, config.block_size), generator=gen) for _ in range(2))
               for _ in range(8)]
    torch.manual_seed(0)
    ours, ref = GPT(config), TorchGPT(config)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    rates = {"tantra_lib.GPT": [], "torch modules": []}
    for model in (ours, ref):  # warm-up
        _train_rate(model, batches, 3)
    for _ in range(rounds):  # alternate, so a busy moment hurts both
        rates["tantra_lib.GPT"].append(_train_rate(ours, batches, steps))
        rates["torch modules"].append(_train_rate(ref, batches, steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["tantra_lib.GPT"] / med["torch modules"]
    lines = [f"training speed: {config.n_layer} layers, d_model {config.d_model}, block {config.block_size}, "
             f"batch {batch} ({ours.num_parameters() / 1e6:.2f} M params), median of {rounds} rounds x {steps} steps"]
    lines += [f"  {k:<16} {v:10,.0f} tokens/s" for k, v in med.items()]
    verdict = "[quick: no verdict]" if quick else ("OK" if ratio >= 0.8 else "BELOW GOAL")
    lines.append(f"  ratio            {ratio:10.2f}   (goal >= 0.8) {verdict}")
    return lines


def bench_kv_cache(quick: bool) -> list[str]:
    if quick:
        config = GPTConfig(vocab_size=84, block_size=64, n_layer=2, n_head=4, d_model=64)
    else:
        config = GPTConfig.preset("kv-bench", vocab_size=84)
    new_tokens = config.block_size  # a 1-token prompt grows to exactly block_size
    torch.manual_seed(0)
    model = GPT(config).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    model.generate(prompt, 8, temperature=0)  # warm-up
    times, outs = {}, {}
    for use_cache in (True, False):
        start = time.perf_counter()
        outs[use_cache] = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
        times[use_cache] = time.perf_counter() - start
    same = torch.equal(outs[True], outs[False])
    ratio = times[False] / times[True]
    return [
        f"KV cache: {new_tokens} new tokens, batch 1, block_size {config.block_size}, {config.n_layer} layers, "
        f"{config.n_head} heads, d_model {config.d_model} (greedy)",
        f"  without cache  {times[False]:8.2f} s   ({1e3 * times[False] / new_tokens:.1f} ms/token)",
        f"  with cache     {times[True]:8.2f} s   ({1e3 * times[True] / new_tokens:.1f} ms/token)",
        f"  speed-up       {ratio:8.1f}x   (goal >= 20x) "
        f"{'[quick: no verdict]' if quick else ('OK' if ratio >= 20 else 'BELOW GOAL')}; "
        f"identical tokens: {same}",
    ]


def bench_recipe(quick: bool) -> list[str]:
    start = time.perf_counter()
    model, tok, history = train_shakespeare(steps=20 if quick else None, progress=not quick)
    wall = time.perf_counter() - start
    from tantra_lib.data import shakespeare_text, train_val_split

    _, val_ids = train_val_split(tok.encode(shakespeare_text()))
    n_batches = 4 if quick else 100
    wide = evaluate(model, val_ids, batch_size=64, n_batches=n_batches)
    val = history["val_loss"][-1]
    ok = val <= 1.55 and wall <= 240
    return [
        f"default recipe (`tantra train`): preset {RECIPE['preset']!r}, {model.num_parameters() / 1e6:.2f} M params, "
        f"batch {RECIPE['batch_size']}, lr {RECIPE['lr']}, budget {RECIPE['max_seconds']:.0f} s"
        + (" [quick: 20 steps]" if quick else ""),
        f"  {history['step'][-1]} steps in {wall:.0f} s wall (data loading included), "
        f"{statistics.median(history['tokens_per_s']):,.0f} tokens/s",
        f"  validation loss {val:.3f} nats/char (recipe's {RECIPE['eval_batches']} fixed batches), "
        f"{wide:.3f} on {n_batches} x 64 other windows   (goal <= 1.55 within 240 s) "
        + ("[quick: no verdict]" if quick else ("OK" if ok else "BELOW GOAL")),
    ]


def run(quick: bool) -> list[str]:
    threads = torch.get_num_threads()
    if quick:  # a smoke run of tiny tensors: one thread is faster, and immune to a busy machine
        torch.set_num_threads(1)
    try:
        lines = bench_training_speed(quick)
        lines += bench_kv_cache(quick)
        lines += bench_recipe(quick)
    finally:
        torch.set_num_threads(threads)
    return lines

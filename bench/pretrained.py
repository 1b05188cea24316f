"""Encoding throughput of all-MiniLM-L6-v2: tantra_lib's blocks against sentence-transformers.

The same 2,000 Shakespeare lines (every k-th line of the plays, so short and long ones mix),
batch 32, float32 on the CPU, both encoders in this one process; each is timed three times,
alternating, and its best run counts. The target is a ratio tantra_lib / sentence-transformers
of at least 0.9. `--quick` encodes 64 lines once.
"""

from __future__ import annotations

import os
import time

import torch

N_LINES = 2000
BATCH = 32


def _lines(n: int) -> list[str]:
    from tantra_lib.pretrained import shakespeare_lines

    pairs = shakespeare_lines()
    step = max(len(pairs) // n, 1)
    return [line for _, line in pairs[::step][:n]]


def _best(fn, reps: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False) -> list[str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from tantra_lib.pretrained import load_minilm, minilm_model_dir

    n = 64 if quick else N_LINES
    reps = 1 if quick else 3
    lines = _lines(n)
    ours = load_minilm(device="cpu")
    ref = SentenceTransformer(str(minilm_model_dir()), device="cpu")
    ref.eval()

    def run_ours():
        return ours.encode(lines, batch_size=BATCH)

    def run_ref():
        return ref.encode(lines, batch_size=BATCH, normalize_embeddings=True, convert_to_tensor=True,
                          show_progress_bar=False)

    # warm up both (first calls allocate and pick kernels)
    ours.encode(lines[:BATCH], batch_size=BATCH)
    ref.encode(lines[:BATCH], batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
    t_ours, t_ref = float("inf"), float("inf")
    e_ours = e_ref = None
    for _ in range(reps):  # alternate so that background load hits both alike
        t, e_ours = _best(run_ours, 1)
        t_ours = min(t_ours, t)
        t, e_ref = _best(run_ref, 1)
        t_ref = min(t_ref, t)
    diff = float((e_ours.cpu() - e_ref.float().cpu()).abs().max())
    sps_ours, sps_ref = n / t_ours, n / t_ref
    ratio = sps_ours / sps_ref
    n_tokens = sum(len(e.ids) for e in ours.tokenizer.encode_batch(lines))
    return [
        f"  {n} Shakespeare lines ({n_tokens} word pieces), batch {BATCH}, float32, CPU, "
        f"{torch.get_num_threads()} threads",
        f"  {'encoder':<24}{'sentences/s':>12}{'time (s)':>10}",
        f"  {'tantra_lib':<24}{sps_ours:>12.1f}{t_ours:>10.2f}",
        f"  {'sentence-transformers':<24}{sps_ref:>12.1f}{t_ref:>10.2f}",
        f"  ratio tantra_lib / sentence-transformers = {ratio:.2f} "
        f"(target ≥ 0.9: {'met' if ratio >= 0.9 else 'NOT met'})",
        f"  largest difference between the two embeddings: {diff:.1e}",
    ]


if __name__ == "__main__":
    print("\n".join(run(quick=False)))

"""The `tantra` command (also `python -m tantra_lib`).

    tantra check NOTEBOOK [--json]            a learner checks their own notebook
    tantra grade NOTEBOOK [--json]            the instructor's grade of one notebook
    tantra autograde LESSON --submissions DIR [--jobs N] [--timeout S] [--out DIR]
    tantra train [--steps N] [--out PATH] [--device D]
    tantra sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]

Each command's work lives next to its concept (tantra_lib.grading, tantra_lib.train); this
file only parses arguments, so `tantra --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _handler(dotted: str):
    """'module:function' -> a callable imported only when the command runs."""
    module, func = dotted.split(":")

    def run(args):
        return getattr(importlib.import_module(module), func)(args)

    return run


def _add_limits(p: argparse.ArgumentParser, default_timeout: str = "120") -> None:
    """The sandbox's limits, shared by check, grade and autograde."""
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help=f"per-cell time limit in seconds (default: {default_timeout})")
    p.add_argument("--notebook-timeout", dest="notebook_timeout", type=float, default=None, metavar="S",
                   help="time limit for the whole notebook in seconds (default: 900)")
    p.add_argument("--memory", type=int, default=None, metavar="MB",
                   help="address-space limit of the notebook's kernel in MiB (default: 4096; 0 = none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tantra",
        description="Transformer Tantra: check and grade lesson notebooks, train and sample a GPT.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("check", help="run a notebook's visible checks (for learners)",
                       description="Execute NOTEBOOK in a fresh kernel and report every exercise's check. "
                                   "Exit status 0 iff every exercise passes.")
    p.add_argument("notebook", metavar="NOTEBOOK", help="path to a lesson notebook (.ipynb)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_limits(p)
    p.set_defaults(func=_handler("tantra_lib.grading.cli:cmd_check"))

    p = sub.add_parser("grade", help="grade one notebook as the instructor would (hidden tests included)",
                       description="nbgrader autograde of NOTEBOOK with the hidden tests restored from "
                                   "solutions/. The notebook file is never modified.")
    p.add_argument("notebook", metavar="NOTEBOOK", help="path to a lesson notebook (.ipynb)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_limits(p)
    p.set_defaults(func=_handler("tantra_lib.grading.cli:cmd_grade"))

    p = sub.add_parser("autograde", help="grade a whole class's submissions of one lesson (for instructors)",
                       description="Grade DIR/<student>/<LESSON>/<LESSON>.ipynb for every student, in parallel; "
                                   "write the nbgrader gradebook, a CSV of grades and HTML feedback.")
    p.add_argument("lesson", metavar="LESSON", help="lesson name, e.g. 01_softmax")
    p.add_argument("--submissions", required=True, metavar="DIR", help="nbgrader layout: DIR/<student>/<LESSON>/")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel graders (default: number of cores)")
    _add_limits(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the gradebook, CSV and feedback go (default: ./autograded-LESSON)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.add_argument("--no-preload", dest="no_preload", action="store_true",
                   help="start every kernel from scratch instead of forking it from a process that has "
                        "already imported torch, matplotlib and tantra_lib (slower; for comparison)")
    p.set_defaults(func=_handler("tantra_lib.grading.cli:cmd_autograde"))

    p = sub.add_parser("train", help="train the default character GPT on Shakespeare",
                       description="Train the course's default GPT recipe on Shakespeare with a progress bar "
                                   "and write a checkpoint.")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="optimisation steps (default: the recipe's)")
    p.add_argument("--out", default="checkpoints/shakespeare.pt", metavar="PATH", help="checkpoint file to write")
    p.add_argument("--device", default=None, metavar="D", help="cpu, cuda, mps (default: the best available)")
    p.set_defaults(func=_handler("tantra_lib.train:cmd_train"))

    p = sub.add_parser("sample", help="print text sampled from a trained checkpoint",
                       description="Load CHECKPOINT and print a sample continuing PROMPT.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by `tantra train`")
    p.add_argument("--prompt", default="\n", metavar="TEXT", help="text to continue")
    p.add_argument("--tokens", type=int, default=500, metavar="N", help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy")
    p.add_argument("--top-k", dest="top_k", type=int, default=None, metavar="K", help="sample among the K likeliest")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="random seed for a repeatable sample")
    p.add_argument("--device", default=None, metavar="D", help="cpu, cuda, mps (default: the best available)")
    p.set_defaults(func=_handler("tantra_lib.train:cmd_sample"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

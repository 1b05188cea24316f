"""`make bench`: run every benchmark section and print its table.

Sections (each a module in bench/ with a `run(quick: bool) -> list[str]` returning the lines
of its table): attention, grading, gpt, pretrained. `python -m bench attention gpt` runs a
subset; `--quick` shrinks every section to a smoke run.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time

import torch

SECTIONS = ("attention", "grading", "gpt", "pretrained")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the harness")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    import os

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, python {platform.python_version()}")
    failed = 0
    for name in args.sections or SECTIONS:
        print(f"\n== {name} ==")
        t0 = time.perf_counter()
        try:
            for line in importlib.import_module(f"bench.{name}").run(quick=args.quick):
                print(line, flush=True)
        except Exception as exc:  # one broken section must not hide the others
            failed += 1
            print(f"  section failed: {type(exc).__name__}: {exc}")
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

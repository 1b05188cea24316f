"""Generating the learner notebooks (lessons/) from the instructor notebooks (solutions/).

    python -m tantra_lib.lessons generate [LESSON ...]     # what `make lessons` runs

nbgrader's ``generate_assignment`` does the work: it replaces every ``### BEGIN SOLUTION``
region with the exercise stub, removes ``### BEGIN HIDDEN TESTS`` regions, clears outputs
and locks the grade cells. The notebooks in lessons/ are never edited by hand; the test
suite regenerates them into a temporary folder and fails if the committed ones differ.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

__all__ = ["REPO", "SOLUTIONS", "LESSONS", "lesson_names", "generate", "normalised"]

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"
LESSONS = REPO / "lessons"


def lesson_names(root: Path = SOLUTIONS) -> list[str]:
    """Every lesson that has an instructor notebook, in course order (01_..., 02_..., ...)."""
    return sorted(p.parent.name for p in root.glob("*/*.ipynb") if p.stem == p.parent.name)


def nbgrader_env() -> dict:
    """The environment nbgrader needs: this interpreter's bin/ first on PATH (nbgrader runs
    `jupyter` and `alembic` as subprocesses)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def generate(lessons: list[str] | None = None, out_dir: Path = LESSONS) -> list[Path]:
    """Run nbgrader generate_assignment for each lesson, writing out_dir/<lesson>/<lesson>.ipynb.

    nbgrader runs in this process, in a throw-away course folder per lesson (the build
    ``tantra grade`` uses too, cached by the content of solutions/<lesson> and
    nbgrader_config.py), so no gradebook or nbgrader state lands in the repo.
    """
    from .grading.course import lesson_course

    lessons = lessons or lesson_names()
    written = []
    for name in lessons:
        if not (SOLUTIONS / name / f"{name}.ipynb").exists():
            raise FileNotFoundError(f"no instructor notebook {SOLUTIONS / name / (name + '.ipynb')}")
        release = lesson_course(name) / "release" / name
        target = out_dir / name
        target.mkdir(parents=True, exist_ok=True)
        for nb in sorted(release.glob("*.ipynb")):
            dest = target / nb.name
            dest.write_text(normalised(nb.read_text(encoding="utf-8")), encoding="utf-8")
            written.append(dest)
    return written


def normalised(text: str) -> str:
    """A notebook's JSON in one canonical form (sorted keys, 1-space indent, final newline)."""
    return json.dumps(json.loads(text), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tantra_lib.lessons", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="regenerate lessons/ from solutions/")
    gen.add_argument("lessons", nargs="*", help="lesson names (default: all)")
    args = parser.parse_args(argv)
    for path in generate(args.lessons or None):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

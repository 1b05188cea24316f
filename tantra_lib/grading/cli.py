"""The grading commands of ``tantra`` (the argument parser is in tantra_lib/cli.py).

* ``tantra check NOTEBOOK``  — the learner's view: run the notebook as it is, read every check
  cell's result, one line per exercise and a total; exit 0 iff every exercise passes.
* ``tantra grade NOTEBOOK``  — the instructor's grade of one notebook: nbgrader autograde with
  the hidden tests, per-exercise score and feedback; the file itself is never modified.
* ``tantra autograde LESSON --submissions DIR`` — a whole class in parallel.

Exit status: 0 success (check: every exercise passed), 1 check/grade ran but not everything
passed, 2 the input could not be used (unreadable notebook, unknown lesson, ...). With
``--json`` every outcome, errors included, is one JSON object on stdout, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from .sandbox import Limits

__all__ = ["cmd_check", "cmd_grade", "cmd_autograde"]

EXIT_OK, EXIT_NOT_PASSED, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(Exception):
    """Bad input the user can fix; printed as one message (or JSON), exit status 2."""


def _limits(args, default_cell: float) -> Limits:
    cell = getattr(args, "timeout", None)
    limits = Limits(cell_timeout=cell if cell is not None else default_cell)
    nb_timeout = getattr(args, "notebook_timeout", None)
    if nb_timeout is not None:
        limits.notebook_timeout = nb_timeout if nb_timeout > 0 else None
    memory = getattr(args, "memory", None)
    if memory is not None:
        limits.memory_mb = memory
    for value, what in ((limits.cell_timeout, "--timeout"), (limits.notebook_timeout, "--notebook-timeout")):
        if value is not None and value <= 0:
            raise UsageError(f"{what} must be a positive number of seconds")
    if limits.memory_mb is not None and limits.memory_mb < 0:
        raise UsageError("--memory must be ≥ 0 MiB (0 = no limit)")
    return limits


def _load(path_text: str):
    """(path, notebook, lesson) of a learner notebook, or UsageError."""
    from .autograde import NotebookError, read_notebook
    from .course import find_lesson

    path = Path(path_text)
    if path.suffix != ".ipynb" and not path.is_dir():
        raise UsageError(f"{path} is not a notebook (.ipynb) file")
    try:
        nb = read_notebook(path)
    except NotebookError as e:
        raise UsageError(str(e)) from None
    lesson = find_lesson(path, nb)
    if lesson is None:
        from ..lessons import lesson_names

        raise UsageError(f"cannot tell which lesson {path.name} belongs to: name it like a lesson "
                         f"({', '.join(lesson_names())}) or keep its check cells")
    return path, nb, lesson


def _run(args, body) -> int:
    """Run `body()`; turn bad input and unexpected failures into a message (or JSON) and exit code."""
    as_json = getattr(args, "json", False)
    try:
        return body()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001  (never a traceback for the user)
        from .course import CourseError

        usage = isinstance(e, (UsageError, CourseError))
        message = str(e) if usage else f"internal error: {type(e).__name__}: {e}"
        if as_json:
            print(json.dumps({"error": message, "notebook": getattr(args, "notebook", None),
                              "lesson": getattr(args, "lesson", None)}))
        else:
            print(f"tantra {args.command}: {message}", file=sys.stderr)
            if not usage and os.environ.get("TANTRA_DEBUG"):
                raise
        return EXIT_BAD_INPUT


def _print_result(result: dict, command: str) -> None:
    for e in result["exercises"]:
        mark = "✓" if e["passed"] else "✗"
        score = f"{e['score']:g}/{e['max_score']:g}"
        line = f"{mark} {e['name']:<32} {score:>7}"
        if not e["passed"]:
            label = {"not_attempted": "not attempted yet"}.get(e["status"], e["status"].replace("_", " "))
            line += f"  {label}: {e['feedback']}"
            if e.get("hint"):
                line += f"\n    Hint: {e['hint']}"
        print(line)
    passed = sum(e["passed"] for e in result["exercises"])
    print(f"{command}: {result['score']:g}/{result['max_score']:g} points, "
          f"{passed}/{len(result['exercises'])} exercises passed")


def _public(result: dict) -> dict:
    keys = ("notebook", "lesson", "score", "max_score", "exercises")
    out = {k: result[k] for k in keys}
    if result.get("status") and result["status"] != "graded":
        out["status"], out["error"] = result["status"], result.get("error", "")
    return out


# ----------------------------------------------------------------------------- check


def check_notebook(path: Path, limits: Limits | None = None) -> dict:
    """Execute the learner's notebook as it is (a copy, sandboxed) and read every check's result."""
    from .autograde import exercise_results, summarise
    from .execute import execute_notebook

    path, nb, lesson = _load(str(path))
    execute_notebook(nb, path.stem, limits or Limits())
    return summarise(str(path), lesson, exercise_results(nb, lesson))


def cmd_check(args) -> int:
    def body() -> int:
        result = check_notebook(Path(args.notebook), _limits(args, default_cell=120))
        if args.json:
            print(json.dumps(_public(result), ensure_ascii=False))
        else:
            _print_result(result, "check")
        return EXIT_OK if all(e["passed"] for e in result["exercises"]) else EXIT_NOT_PASSED

    return _run(args, body)


# ----------------------------------------------------------------------------- grade


def grade_notebook(path: Path, limits: Limits | None = None) -> dict:
    """nbgrader autograde of one notebook (hidden tests restored) in a throw-away course copy."""
    from .autograde import Grader

    path, _, lesson = _load(str(path))
    with tempfile.TemporaryDirectory(prefix="tantra-grade-") as tmp:
        grader = Grader(lesson, Path(tmp) / "course", limits or Limits())
        return grader.grade("learner", path)


def cmd_grade(args) -> int:
    def body() -> int:
        result = grade_notebook(Path(args.notebook), _limits(args, default_cell=120))
        if args.json:
            print(json.dumps(_public(result), ensure_ascii=False))
        else:
            if result["status"] != "graded":
                print(f"not graded: {result['error']}")
            _print_result(result, "grade")
        if result["status"] != "graded":
            return EXIT_BAD_INPUT
        return EXIT_OK if all(e["passed"] for e in result["exercises"]) else EXIT_NOT_PASSED

    return _run(args, body)


# ----------------------------------------------------------------------------- autograde


def cmd_autograde(args) -> int:
    from .autograde import autograde_class
    from .course import lesson_course

    def body() -> int:
        submissions = Path(args.submissions)
        if not submissions.is_dir():
            raise UsageError(f"--submissions {submissions}: no such folder")
        if args.jobs is not None and args.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        lesson_course(args.lesson)  # unknown lesson -> CourseError before anything else
        out = Path(args.out) if args.out else Path(f"autograded-{args.lesson}")
        limits = _limits(args, default_cell=120)
        summary, _ = autograde_class(args.lesson, submissions, out, jobs=args.jobs, limits=limits,
                                     progress=not getattr(args, "no_progress", False),
                                     preload=not getattr(args, "no_preload", False))
        if summary.students == 0:
            raise UsageError(f"no student folders in {submissions} (expected {submissions}/<student>/"
                             f"{args.lesson}/{args.lesson}.ipynb)")
        if getattr(args, "json", False):
            print(json.dumps(summary.to_json()))
        else:
            print("\n".join(summary.lines()))
        return EXIT_OK

    return _run(args, body)

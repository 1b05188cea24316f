"""The lesson notebooks themselves (issue 4): clean, consistent with nbgrader, gradable.

* no committed notebook has outputs or execution counts; grade cells have unique ids and points;
* lessons/ equals a fresh generation from solutions/;
* every solutions notebook executes top to bottom with no error and gets full marks through
  nbgrader autograde (hidden tests restored), every lessons notebook executes with errors only
  in exercise/check cells and scores 0, and a partly solved one gets exactly its points.

Lessons are discovered from solutions/, so new ones are covered automatically. The graded
runs are shared with tests/test_grading.py (tests/grading_corpus.py grades each lesson once).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from grading_corpus import check_expectations, graded_class, graded_lessons, hostile_lesson

from tantra_lib.lessons import LESSONS, SOLUTIONS, generate, lesson_names

LESSON_NAMES = lesson_names()


def _notebooks(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*.ipynb") if p.stem == p.parent.name)


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _notebooks(SOLUTIONS) + _notebooks(LESSONS), ids=lambda p: f"{p.parent.parent.name}/"
                                                                                          f"{p.name}")
def test_committed_notebook_is_clean(path):
    nb = _nb(path)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i + 1} has outputs"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i + 1} has an execution count"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("lesson", LESSON_NAMES)
def test_grade_cells(lesson):
    nb = _nb(SOLUTIONS / lesson / f"{lesson}.ipynb")
    ids, grade_ids, solution_ids = [], [], []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if not meta:
            continue
        ids.append(meta["grade_id"])
        if meta.get("grade"):
            grade_ids.append(meta["grade_id"])
            assert isinstance(meta.get("points"), (int, float)) and meta["points"] > 0, meta
            assert meta.get("locked") and not meta.get("solution"), meta
        if meta.get("solution"):
            solution_ids.append(meta["grade_id"])
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {lesson}"
    assert grade_ids, f"{lesson} has no grade cells"
    assert grade_ids == [f"check_{s}" for s in solution_ids], "one check cell per exercise cell, same name"


def test_lessons_match_a_fresh_generation(tmp_path):
    written = generate(LESSON_NAMES, out_dir=tmp_path)
    assert len(written) == len(LESSON_NAMES)
    for path in written:
        committed = LESSONS / path.parent.name / path.name
        assert committed.exists(), f"{committed} missing: run `make lessons`"
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), \
            f"{committed} differs from a fresh generation: run `make lessons` and commit it"


# ----------------------------------------------------------------------------- graded runs


def _graded(lesson: str):
    """(submissions by student, results by student, folder of autograded notebooks) of `lesson`."""
    if lesson == hostile_lesson():
        run = graded_class()
        return {s.student: s for s in run["submissions"]}, run["results"], run["out"] / "autograded"
    subs, results = graded_lessons()[lesson]
    from grading_corpus import workdir

    return {s.student: s for s in subs}, results, workdir() / "lessons" / lesson / "out" / "autograded"


def _executed(folder: Path, student: str, lesson: str) -> nbformat.NotebookNode:
    return nbformat.read(folder / student / lesson / f"{lesson}.ipynb", as_version=4)


def _errors(nb) -> list[tuple[int, str, str | None]]:
    return [(i + 1, o.ename, c.metadata.get("nbgrader", {}).get("grade_id"))
            for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSON_NAMES)
def test_solution_runs_clean_and_gets_full_marks(lesson):
    subs, results, folder = _graded(lesson)
    result = results["correct"]
    assert result["status"] == "graded", result.get("error")
    assert result["score"] == result["max_score"] > 0, [(e["name"], e["feedback"]) for e in result["exercises"]]
    nb = _executed(folder, "correct", lesson)
    assert _errors(nb) == [], f"{lesson}: errors in cells {_errors(nb)}"
    hidden = [c for c in nb.cells if "hidden=True" in c.source]
    assert hidden, "autograde should have restored the hidden tests"


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSON_NAMES)
def test_blank_lesson_runs_and_scores_zero(lesson):
    subs, results, folder = _graded(lesson)
    result = results["blank"]
    assert not check_expectations(subs["blank"], result), check_expectations(subs["blank"], result)
    assert result["score"] == 0
    nb = _executed(folder, "blank", lesson)
    outside = [(n, ename) for n, ename, gid in _errors(nb) if gid is None]
    assert not outside, f"{lesson}: errors outside the exercise and check cells: {outside}"


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSON_NAMES)
def test_partial_submission_gets_exactly_its_points(lesson):
    subs, results, _ = _graded(lesson)
    problems = check_expectations(subs["partial"], results["partial"])
    assert not problems, problems

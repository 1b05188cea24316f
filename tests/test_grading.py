"""`tantra autograde` over a class of >= 20 mixed submissions (tests/grading_corpus.py).

The class (correct, blank, partial, shortcut, wrong, and every hostile case of the sandbox) is
graded once per session by the real command with --jobs 2; each test reads that run.
"""

from __future__ import annotations

import csv
import math

import pytest
from grading_corpus import CLASS_STUDENTS, check_expectations, graded_class

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run() -> dict:
    return graded_class()


def test_command_finished_and_summarised(run):
    proc = run["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    subs = run["submissions"]
    assert len(subs) >= 20
    failed = sorted(s.student for s in subs if not s.graded)
    assert f"graded: {len(subs) - len(failed)}, failed to run: {len(failed)} ({', '.join(failed)})" in proc.stdout
    mean = sum(s.score for s in subs) / len(subs)
    assert f"mean score: {mean:.2f} / " in proc.stdout
    assert "grading" in proc.stderr  # the progress bar


@pytest.mark.parametrize("student", CLASS_STUDENTS)
def test_submission_scores_and_messages(run, student):
    subs = {s.student: s for s in run["submissions"]}
    if student not in subs:
        pytest.skip(f"{student} only exists for lesson 01_softmax")
    result = run["results"].get(student)
    assert result is not None, f"no result for {student}"
    problems = check_expectations(subs[student], result)
    assert not problems, f"{student} ({subs[student].note}): " + "; ".join(problems)


def test_every_student_has_a_result(run):
    assert sorted(run["results"]) == sorted(s.student for s in run["submissions"])


def test_learner_files_unchanged(run):
    for student, before in run["before"].items():
        assert run["paths"][student].read_bytes() == before, f"{student}'s notebook was modified"
    assert not run["paths"]["missing_notebook"].exists()


def test_nothing_written_outside_the_sandbox(run):
    assert list(run["outside"].iterdir()) == []


def test_csv(run):
    with open(run["out"] / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    subs = {s.student: s for s in run["submissions"]}
    assert sorted(r["student"] for r in rows) == sorted(subs)
    for row in rows:
        sub = subs[row["student"]]
        assert math.isclose(float(row["score"]), sub.score), row
        assert row["status"] == ("graded" if sub.graded else "failed to run"), row
        for name, exp in sub.expect.items():
            assert math.isclose(float(row[name]), exp.score), (row["student"], name, row[name])
        assert row["lesson"] == run["lesson"]
    assert float(rows[0]["max_score"]) > 0


def test_one_feedback_file_per_student(run):
    feedback = run["out"] / "feedback"
    files = sorted(feedback.glob(f"*/{run['lesson']}/{run['lesson']}.html"))
    assert sorted(p.parent.parent.name for p in files) == sorted(s.student for s in run["submissions"])
    for path in files:
        page = path.read_text(encoding="utf-8")
        assert "<html" in page.lower() and "score" in page.lower()
    malformed = (feedback / "malformed_json" / run["lesson"] / f"{run['lesson']}.html").read_text()
    assert "not valid notebook JSON" in malformed


def test_gradebook_merged(run):
    import warnings

    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    warnings.filterwarnings("ignore", category=SAWarning)
    subs = {s.student: s for s in run["submissions"]}
    lesson = run["lesson"]
    with Gradebook(f"sqlite:///{run['out'] / 'gradebook.db'}", "transformer-tantra") as gb:
        assert sorted(s.id for s in gb.students) == sorted(subs)
        for student, sub in subs.items():
            assert math.isclose(gb.find_submission(lesson, student).score, sub.score), student


def test_huge_output_truncated(run):
    lesson = run["lesson"]
    path = run["out"] / "autograded" / "print_100mb" / lesson / f"{lesson}.ipynb"
    assert path.stat().st_size < 2_000_000
    assert "output truncated" in path.read_text(encoding="utf-8")

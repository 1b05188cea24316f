"""`tantra check` and `tantra grade` on single notebooks, their JSON and errors, and the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from grading_corpus import basic_submissions, check_expectations, hostile_lesson
from nbformat.v4 import new_code_cell, new_notebook

from tantra_lib.cli import main

JSON_KEYS = {"notebook", "lesson", "score", "max_score", "exercises"}
EXERCISE_KEYS = {"grade_id", "name", "score", "max_score", "passed", "feedback"}


def _tantra(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, "-m", "tantra_lib", *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    lesson = hostile_lesson()
    sub = next(s for s in basic_submissions(lesson) if s.student == "partial")
    path = sub.write(tmp_path_factory.mktemp("partial"))
    return sub, path


@pytest.mark.slow
def test_check_json(partial):
    sub, path = partial
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    proc = _tantra("check", str(path), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # not every exercise passes
    result = json.loads(proc.stdout)
    assert set(result) == JSON_KEYS
    assert all(set(e) >= EXERCISE_KEYS for e in result["exercises"])
    assert result["lesson"] == sub.lesson
    problems = check_expectations(sub, {**result, "status": "graded"})
    assert not problems, problems
    for e in result["exercises"]:
        assert e["name"] == e["grade_id"].removeprefix("check_")
        assert (e["feedback"] == "") == e["passed"]
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_check_text_output_and_success(tmp_path):
    lesson = hostile_lesson()
    sub = next(s for s in basic_submissions(lesson) if s.student == "correct")
    path = sub.write(tmp_path)
    proc = _tantra("check", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(sub.expect) + 1
    assert all(line.startswith("✓") for line in lines[:-1])
    assert lines[-1].startswith(f"check: {sub.score:g}/{sub.score:g} points")


@pytest.mark.slow
def test_grade_json_never_modifies_the_file(partial):
    sub, path = partial
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    proc = _tantra("grade", str(path), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == JSON_KEYS
    assert not check_expectations(sub, {**result, "status": "graded"})
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing written next to it


# ----------------------------------------------------------------------------- errors (no kernel needed)


def _json_error(capsys, *argv) -> dict:
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 2, out
    assert "Traceback" not in out.out + out.err
    data = json.loads(out.out)
    assert data["error"]
    return data


def test_json_errors(tmp_path, capsys):
    lesson = hostile_lesson()
    bad = tmp_path / f"{lesson}.ipynb"
    bad.write_text('{"cells": [', encoding="utf-8")
    for cmd in ("check", "grade"):
        assert "not valid notebook JSON" in _json_error(capsys, cmd, str(bad), "--json")["error"]
        assert "no such file" in _json_error(capsys, cmd, str(tmp_path / "nope.ipynb"), "--json")["error"]
    text = tmp_path / "notes.txt"
    text.write_text("hello", encoding="utf-8")
    assert "not a notebook" in _json_error(capsys, "grade", str(text), "--json")["error"]
    not_nb = tmp_path / f"{lesson}_copy.ipynb"
    not_nb.write_text('{"hello": 1}', encoding="utf-8")
    assert "not a Jupyter notebook" in _json_error(capsys, "check", str(not_nb), "--json")["error"]
    stray = tmp_path / "my_homework.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("print(1)")]), stray)
    assert "which lesson" in _json_error(capsys, "grade", str(stray), "--json")["error"]
    assert "unknown lesson" in _json_error(capsys, "autograde", "99_nothing", "--submissions", str(tmp_path),
                                           "--json")["error"]
    assert "no such folder" in _json_error(capsys, "autograde", lesson, "--submissions",
                                           str(tmp_path / "none"), "--json")["error"]


def test_errors_without_json_are_one_line(tmp_path, capsys):
    code = main(["grade", str(tmp_path / "missing.ipynb")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tantra grade: no such file") and "Traceback" not in err


@pytest.mark.parametrize("command", ["check", "grade", "autograde"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--timeout" in out and "--memory" in out and "--notebook-timeout" in out


@pytest.mark.slow
def test_autograde_without_preload(tmp_path):
    """--no-preload starts each kernel from scratch; grades are the same as with forked kernels."""
    lesson = hostile_lesson()
    subs = [s for s in basic_submissions(lesson) if s.student in ("correct", "partial")]
    for s in subs:
        s.write(tmp_path / "submitted")
    proc = _tantra("autograde", lesson, "--submissions", str(tmp_path / "submitted"), "--jobs", "1", "--no-preload",
                   "--out", str(tmp_path / "out"), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["graded"] == 2
    results = {r["student"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    for s in subs:
        assert not check_expectations(s, results[s.student]), s.student

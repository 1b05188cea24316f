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
from tantra_lib.grading.execute import execute_notebook
from tantra_lib.grading.sandbox import Limits
from tantra_lib.lessons import SOLUTIONS

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


# ----------------------------------------------------------------------------- the sandbox itself


def _run(cells: list[str], **limits) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    return execute_notebook(nb, "sandboxed", Limits(**limits))


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _error(cell) -> tuple[str, str] | None:
    errs = [(o.ename, o.evalue) for o in cell.outputs if o.output_type == "error"]
    return errs[-1] if errs else None


@pytest.mark.slow
def test_sandbox_environment_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TANTRA_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SECRET_GRADEBOOK", str(tmp_path / "gradebook.db"))
    target = tmp_path / "escape.txt"
    solution = next(SOLUTIONS.glob("*/*.ipynb"))
    nb = _run([
        "import os, json; print(json.dumps({'cwd': os.getcwd(), 'files': os.listdir('.'), 'env': dict(os.environ)}))",
        f"open({str(target)!r}, 'w').write('x')",
        f"open({str(solution)!r}).read()",
        "import os; os.remove('sandboxed.ipynb'); open('scratch.txt', 'w').write('ok'); print('wrote here')",
        "import subprocess; subprocess.run(['touch', '/tmp/x'])",
        "x = bytearray(50 * 10**9)",
        "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])",
    ], cell_timeout=60, memory_mb=3000)
    info = json.loads(_stdout(nb.cells[0]))
    assert info["files"] == ["sandboxed.ipynb"]
    assert info["cwd"].endswith("work") and not info["cwd"].startswith(str(Path.cwd()))
    env = info["env"]
    assert env["TANTRA_QUICK"] == "1" and env["MPLBACKEND"] == "Agg" and env["OMP_NUM_THREADS"] == "1"
    assert "SECRET_GRADEBOOK" not in env
    leaked = [k for k, v in env.items() if str(SOLUTIONS) in v or str(tmp_path) in v or "gradebook" in v]
    assert not leaked
    assert _error(nb.cells[1])[0] == "PermissionError" and not target.exists()
    assert _error(nb.cells[2])[0] == "PermissionError"  # the course's solutions are off limits
    assert _error(nb.cells[3]) is None and "wrote here" in _stdout(nb.cells[3])
    assert _error(nb.cells[4])[0] == "PermissionError"
    assert _error(nb.cells[5])[0] == "MemoryError"
    assert _stdout(nb.cells[6]).strip() == str(3000 * 2**20)


@pytest.mark.slow
def test_sandbox_torch_uses_one_thread():
    nb = _run(["import torch; print(torch.get_num_threads())"], cell_timeout=120)
    assert _stdout(nb.cells[0]).strip() == "1"


def test_sandbox_time_limits():
    nb = _run(["import time", "while True: pass", "print('after')", "time.sleep(3)", "time.sleep(3)", "print('late')"],
              cell_timeout=2, notebook_timeout=6)
    assert _error(nb.cells[1]) == ("TimeoutError", "timed out after 2 s in cell 2")
    assert _stdout(nb.cells[2]) == "after\n"  # the kernel survived the interrupt
    stopped = [_error(c) for c in nb.cells[3:]]
    assert any(e and e[0] == "TimeoutError" and "time limit of 6 s" in e[1] for e in stopped), stopped
    assert _error(nb.cells[5])[0] in ("NotRun", "TimeoutError")


def test_sandbox_kernel_that_ignores_interrupts_is_killed():
    nb = _run(["import time\nwhile True:\n    try:\n        time.sleep(0.1)\n    except BaseException:\n        pass",
               "print('never')"], cell_timeout=2)
    ename, evalue = _error(nb.cells[0])
    assert ename == "TimeoutError" and "timed out after 2 s in cell 1" in evalue and "shut down" in evalue
    assert _error(nb.cells[1]) == ("NotRun", "not run: the kernel was shut down after a time-out in cell 1.")


def test_sandbox_dead_kernel_and_big_output():
    nb = _run(["print('x' * 10_000_000)", "import os; os._exit(3)", "print('never')"], cell_timeout=30,
              max_output_bytes=1000)
    assert len(_stdout(nb.cells[0])) < 1200 and "output truncated" in _stdout(nb.cells[0])
    ename, evalue = _error(nb.cells[1])
    assert ename == "KernelDied" and "cell 2" in evalue and "status 3" in evalue
    assert _error(nb.cells[2]) == ("NotRun", "not run: the kernel died in cell 2.")

"""`pytest --tantra NOTEBOOK.ipynb` (tantra_lib/pytest_plugin.py, issue 8).

* collection: one item per exercise, named after it, in notebook order; nothing without --tantra;
* selection with -k and node ids;
* verdicts (passed / failed / not attempted) on the grading corpus (tests/grading_corpus.py):
  the correct, blank and partly correct submission of every lesson, plus the submissions of
  the hostile lesson's class that are safe to run in-process (the sandbox-only ones — endless
  loops, os._exit, 50 GB — are for `tantra grade`);
* agreement with `tantra check --json` and with the notebook's own check cells as graded;
* the report: the named mistake and hint in a few lines, the traceback only with -v.

pytest runs in subprocesses (the plugin executes learner code in its own process). One run
covers the whole corpus, so the cost is one pass over each notebook's cells.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grading_corpus import (
    basic_submissions,
    class_submissions,
    correct,
    graded_class,
    graded_lessons,
    hostile_lesson,
    set_solution,
    text,
)

from tantra_lib.lessons import LESSONS, REPO, lesson_names
from tantra_lib.pytest_plugin import read_exercises, strip_magics, visible_source

LESSON_NAMES = lesson_names()
HOSTILE = hostile_lesson() if LESSON_NAMES else None
#: class members of the hostile lesson that are safe to run in the pytest process
SAFE_CLASS = ("wrong_answer", "shortcut_torch", "instructor_copy", "duplicated_check", "deleted_check",
              "edited_check", "edited_check_correct", "sys_exit", "print_100mb")
#: the submissions compared with the real `tantra check` command (a kernel each, so a few)
CHECKED = ("correct", "blank", "partial", "wrong_answer", "edited_check_correct", "deleted_check")
#: titles of a failing item's first line -> the tantra status
TITLES = {"not attempted yet": "not_attempted", "shortcut used": "shortcut", "error": "error",
          "check cell missing": "missing", "not checked": "not_run", "not right yet": "failed"}


def _env() -> dict:
    env = dict(os.environ, TANTRA_QUICK="1", MPLBACKEND="Agg")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_pytest(*args, cwd: Path = REPO, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _verdicts(junit: Path) -> dict[str, dict]:
    """nodeid -> {"status", "text"} from a JUnit XML report of a run in the corpus folder."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/").removesuffix("/ipynb") + ".ipynb"
        node = f"{path}::{case.get('name')}"
        failure = case.find("failure")
        if failure is None and case.find("error") is None and case.find("skipped") is None:
            out[node] = {"status": "passed", "text": ""}
            continue
        body = (failure.text if failure is not None else "") or ""
        first = body.strip().splitlines()[0] if body.strip() else ""
        title = first.split(" — ", 1)[1] if " — " in first else ""
        out[node] = {"status": TITLES.get(title, "crash:" + first), "text": body}
    return out


# ----------------------------------------------------------------------------- the corpus, run once


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{(student, lesson): (Submission, path)} written in nbgrader's layout under a temp folder."""
    if not LESSON_NAMES:
        pytest.skip("no lessons yet")
    root = tmp_path_factory.mktemp("plugin-corpus")
    subs = {}
    for lesson in LESSON_NAMES:
        for sub in basic_submissions(lesson):
            subs[(sub.student, lesson)] = sub
    for sub in class_submissions(HOSTILE, root / "outside"):
        if sub.student in SAFE_CLASS:
            subs[(sub.student, HOSTILE)] = sub
    return root, {key: (sub, sub.write(root / "submitted")) for key, sub in subs.items()}


@pytest.fixture(scope="module")
def plugin_run(corpus):
    """One `pytest --tantra` over every corpus notebook: (completed process, verdicts by node id)."""
    root, subs = corpus
    paths = sorted(str(p.relative_to(root)) for _, p in subs.values())
    junit = root / "plugin.xml"
    proc = run_pytest("--tantra", "-q", f"--junitxml={junit}", *paths, cwd=root)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, _verdicts(junit)


def _node(student: str, lesson: str, name: str) -> str:
    return f"submitted/{student}/{lesson}/{lesson}.ipynb::{name}"


def _expected_status(status: str | None) -> str:
    return status if status in ("passed", "not_attempted", "shortcut") else "failed"


@pytest.mark.parametrize("lesson", LESSON_NAMES)
def test_verdicts_on_correct_blank_partial(lesson, corpus, plugin_run):
    _, subs = corpus
    proc, verdicts = plugin_run
    problems = []
    for student in ("correct", "blank", "partial"):
        sub, _ = subs[(student, lesson)]
        for name, exp in sub.expect.items():
            got = verdicts.get(_node(student, lesson, name))
            if got is None:
                problems.append(f"{student}::{name}: not collected")
                continue
            want = _expected_status(exp.status)
            if (got["status"] if want != "failed" else ("passed" if got["status"] == "passed" else "failed")) != want:
                problems.append(f"{student}::{name}: {got['status']} != {want}\n{got['text']}")
            if exp.feedback and exp.status != "passed" and exp.feedback.lower() not in got["text"].lower():
                problems.append(f"{student}::{name}: the report lacks {exp.feedback!r}:\n{got['text']}")
    assert not problems, "\n".join(problems) + "\n" + proc.stdout[-2000:]


def test_exit_status_and_summary(plugin_run):
    proc, verdicts = plugin_run
    assert proc.returncode == 1  # blank and partial submissions do not pass
    n_not_attempted = sum(v["status"] == "not_attempted" for v in verdicts.values())
    assert f"{n_not_attempted} not attempted" in proc.stdout.splitlines()[-1]
    assert "not attempted yet" in proc.stdout  # the section listing them


def test_safe_class_submissions(corpus, plugin_run):
    """The odd submissions of the hostile lesson's class: named verdicts, never a crash."""
    _, subs = corpus
    _, verdicts = plugin_run
    first = next(iter(subs[("correct", HOSTILE)][0].expect))
    names = list(subs[("correct", HOSTILE)][0].expect)
    second, last = names[min(1, len(names) - 1)], names[-1]

    def status(student, name):
        return verdicts[_node(student, HOSTILE, name)]["status"]

    assert status("wrong_answer", first) == "failed"
    assert all(status("instructor_copy", n) == "passed" for n in names)
    assert all(status("duplicated_check", n) == "passed" for n in names)
    assert status("deleted_check", second) == "missing"
    assert status("edited_check", first) == "not_run"  # check cell edited to `pass`: not a pass
    assert status("edited_check_correct", last) == "not_run"
    assert status("sys_exit", second) == "error"
    assert "SystemExit" in verdicts[_node("sys_exit", HOSTILE, second)]["text"]
    assert all(status("print_100mb", n) == "passed" for n in names)
    if ("shortcut_torch", HOSTILE) in subs:
        assert status("shortcut_torch", first) == "shortcut"
        assert "torch.softmax" in verdicts[_node("shortcut_torch", HOSTILE, first)]["text"]
    for v in verdicts.values():
        assert not v["status"].startswith("crash:"), v["text"]


def _tantra_check(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tantra_lib", "check", str(path), "--json"], env=_env(),
                          capture_output=True, text=True, timeout=600)
    return json.loads(proc.stdout)


def test_agrees_with_tantra_check(corpus, plugin_run):
    """Same pass/fail per exercise as `tantra check --json` (the real command, two at a time) on
    the hostile lesson's correct, blank, partial, wrong and edited submissions; every lesson is
    compared with the graded corpus below."""
    _, subs = corpus
    _, verdicts = plugin_run
    keys = [k for k in subs if k[1] == HOSTILE and k[0] in CHECKED]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(keys, pool.map(lambda k: _tantra_check(subs[k][1]), keys)))
    problems = []
    for (student, lesson), result in results.items():
        by_name = {e["name"]: e for e in result["exercises"]}
        for name in subs[(student, lesson)][0].expect:
            mine = verdicts.get(_node(student, lesson, name), {}).get("status") == "passed"
            if name not in by_name or by_name[name]["passed"] != mine:
                problems.append(f"{student}::{name}: pytest {'passed' if mine else 'not passed'}, "
                                f"tantra check {by_name.get(name)}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # alone it grades the corpus; in `make test` the grading tests have done it already
def test_agrees_with_graded_check_cells(corpus, plugin_run):
    """Same pass/fail as the notebooks' own check cells executed and graded by nbgrader (the
    corpus' graded results, shared with tests/test_grading.py and tests/test_notebooks.py).
    Submissions whose check cells were edited are left out: nbgrader restores those cells."""
    _, subs = corpus
    _, verdicts = plugin_run
    graded = {lesson: results for lesson, (_, results) in graded_lessons().items()}
    graded[HOSTILE] = graded_class()["results"]
    problems = []
    for (student, lesson), (sub, _) in subs.items():
        if student.startswith("edited_check") or student not in graded.get(lesson, {}):
            continue
        by_name = {e["name"]: e for e in graded[lesson][student]["exercises"]}
        for name in sub.expect:
            mine = verdicts.get(_node(student, lesson, name), {}).get("status") == "passed"
            if by_name[name]["passed"] != mine:
                problems.append(f"{lesson}/{student}::{name}: pytest {mine}, graded {by_name[name]}")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- collection and selection


def _lesson_notebooks() -> list[Path]:
    return sorted(p for p in LESSONS.glob("*/*.ipynb") if p.stem == p.parent.name)


def test_collection_names():
    notebooks = _lesson_notebooks()
    if not notebooks:
        pytest.skip("no lessons/ yet")
    proc = run_pytest("--tantra", "--collect-only", "-q", *[p.relative_to(REPO) for p in notebooks])
    collected = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    expected = []
    for nb in notebooks:
        cells = json.loads(nb.read_text())["cells"]
        ids = [c["metadata"]["nbgrader"]["grade_id"] for c in cells if c.get("metadata", {}).get("nbgrader", {})
               .get("grade_id", "").startswith("check_")]
        expected += [f"{nb.relative_to(REPO).as_posix()}::{gid[len('check_'):]}" for gid in ids]
    assert collected == expected, proc.stdout + proc.stderr


def test_not_collected_without_flag():
    nb = (LESSONS / "01_softmax" / "01_softmax.ipynb")
    if not nb.exists():
        pytest.skip("lessons/01_softmax not generated yet")
    proc = run_pytest("--collect-only", "-q", nb.relative_to(REPO))
    assert proc.returncode in (4, 5), proc.stdout  # nothing collected: "not found" / "no tests collected"
    assert "add --tantra" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def softmax_variants(tmp_path_factory):
    """01_softmax: correct, and one with a wrong softmax (normalised along the wrong axis)."""
    if "01_softmax" not in LESSON_NAMES:
        pytest.skip("01_softmax not written yet")
    root = tmp_path_factory.mktemp("softmax")
    (root / "right").mkdir()
    (root / "wrong").mkdir()
    good = correct("01_softmax")
    (root / "right" / "01_softmax.ipynb").write_text(text(good))
    set_solution(good, "softmax", "def softmax(x, dim=-1):\n    e = (x - x.amax(dim=0, keepdim=True)).exp()\n"
                                  "    return e / e.sum(dim=0, keepdim=True)\n")
    (root / "wrong" / "01_softmax.ipynb").write_text(text(good))
    return root


def test_k_and_node_id_selection(softmax_variants):
    root = softmax_variants
    proc = run_pytest("--tantra", "-v", "right/01_softmax.ipynb", "-k", "masked_softmax", cwd=root)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"right/01_softmax\.ipynb::masked_softmax PASSED", proc.stdout), proc.stdout
    assert "1 passed, 2 deselected" in proc.stdout
    proc = run_pytest("--tantra", "-q", "wrong/01_softmax.ipynb::log_softmax", cwd=root)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout  # the wrong softmax is not run
    proc = run_pytest("--tantra", "-q", "wrong/01_softmax.ipynb::softmax", cwd=root)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout


def test_failure_report_short_then_verbose(softmax_variants):
    root = softmax_variants
    short = run_pytest("--tantra", "wrong/01_softmax.ipynb::softmax", cwd=root)
    section = short.stdout.split("FAILURES", 1)[1].split("short test summary", 1)[0]
    lines = [ln for ln in section.splitlines()[1:] if ln.strip() and not ln.startswith("_")]
    assert lines[0] == "✗ softmax — not right yet", section
    assert "normalised along dim -2 instead of dim=-1" in lines[1]
    assert lines[2].strip().startswith("Hint:") and "keepdim" in lines[2]
    assert len(lines) <= 5, section
    assert "Traceback" not in section and "File " not in section
    assert "FAILED wrong/01_softmax.ipynb::softmax - softmax(" in short.stdout  # the short summary names it
    for flags in (["-v"], ["--tb=long"]):
        full = run_pytest("--tantra", *flags, "wrong/01_softmax.ipynb::softmax", cwd=root)
        assert "normalised along dim -2" in full.stdout
        assert "Traceback of the check" in full.stdout and "_check_one_softmax" in full.stdout, full.stdout


# ----------------------------------------------------------------------------- notebook parsing helpers


def test_visible_source_strips_hidden_tests():
    src = ("from tantra_lib.checks import check_softmax\ncheck_softmax(softmax)\n### BEGIN HIDDEN TESTS\n"
           "check_softmax(softmax, hidden=True)\n### END HIDDEN TESTS\n")
    assert visible_source(src) == "from tantra_lib.checks import check_softmax\ncheck_softmax(softmax)\n"


def test_strip_magics():
    src = "%matplotlib inline\nx = 1\n!pip install foo\nif x:\n    %time y = 2\nfiles = !ls\nz = x % 2\n"
    out = strip_magics(src)
    ns: dict = {}
    exec(out, ns)
    assert ns["x"] == 1 and ns["y"] == 2 and ns["z"] == 1 and "pip" not in out and "files" not in ns
    assert strip_magics("%%bash\necho hi\n") == ""
    assert "a = 3" in strip_magics("%%time\na = 3\n")


def test_read_exercises_rejects_non_notebooks(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable notebook"):
        read_exercises(bad)
    bad.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ValueError, match="not a Jupyter notebook"):
        read_exercises(bad)
    proc = run_pytest("--tantra", "-q", bad, cwd=tmp_path)
    assert proc.returncode == 2 and "not a Jupyter notebook" in proc.stdout, proc.stdout

"""The grading corpus: learner submissions built from the lessons, with what each must score.

Built programmatically from ``solutions/`` (through the cached nbgrader course of each lesson),
so it follows the lessons as they change:

* for every lesson: ``correct`` (the solution with the hidden tests stripped), ``blank`` (the
  generated lesson itself) and ``partial`` (the first exercises solved, the next one through
  a shortcut, the rest left blank);
* for one lesson (01_softmax when it exists) a class of >= 20 students mixing those with
  hostile and broken submissions (infinite loop, 50 GB allocation, sys.exit(), os._exit(),
  kernel kill, 100 MB print, writing outside its folder, deleted / duplicated / edited grade
  cells, malformed JSON, a missing notebook, a shortcut, a wrong answer).

Each :class:`Submission` carries its expected result per exercise: the points (exact) and,
where the outcome is not a pass, a status and a word the feedback must contain. Used by
tests/test_grading*.py, tests/test_notebooks.py and the pytest plugin's agreement test.

Expensive results (a graded class) are computed once per test session through
:func:`graded` (a process-wide cache), whichever test module asks first.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

import tantra_lib
from tantra_lib.grading.course import grade_cells, lesson_course
from tantra_lib.lessons import SOLUTIONS, lesson_names

#: per-cell time limit used when grading the corpus (the infinite loop costs this much)
CORPUS_TIMEOUT = 30


@dataclass
class Expect:
    """What one exercise of a submission must get."""

    score: float  # exact points
    status: str | None = None  # the result's status ("passed", "not_attempted", "timeout", ...), None = any
    feedback: str | None = None  # a word the feedback must contain (case-insensitive)


@dataclass
class Submission:
    student: str
    lesson: str
    text: str | None  # the notebook file's content; None = no notebook file at all
    expect: dict[str, Expect] = field(default_factory=dict)  # exercise name -> Expect
    graded: bool = True  # False: "failed to run"
    note: str = ""

    @property
    def score(self) -> float:
        return sum(e.score for e in self.expect.values())

    def write(self, root: Path) -> Path:
        """Write it in nbgrader's layout root/<student>/<lesson>/<lesson>.ipynb; return that path."""
        folder = root / self.student / self.lesson
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.lesson}.ipynb"
        if self.text is not None:
            path.write_text(self.text, encoding="utf-8")
        return path


# ----------------------------------------------------------------------------- building blocks


def exercises(lesson: str) -> list[dict]:
    """[{"name", "grade_id", "points", "solution_id"}] in notebook order."""
    out = []
    for spec in grade_cells(lesson):
        gid = spec["grade_id"]
        out.append({**spec, "name": gid[len("check_"):] if gid.startswith("check_") else gid})
    return out


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def blank(lesson: str) -> nbformat.NotebookNode:
    """The learner notebook exactly as nbgrader generates it."""
    return _read(lesson_course(lesson) / "release" / lesson / f"{lesson}.ipynb")


def correct(lesson: str) -> nbformat.NotebookNode:
    """The instructor notebook with the hidden tests stripped and no outputs: a perfect learner."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput

    nb = _read(SOLUTIONS / lesson / f"{lesson}.ipynb")
    nb, _ = ClearHiddenTests().preprocess(nb, {})
    nb, _ = ClearOutput().preprocess(nb, {})
    return nb


def _cells_by_id(nb) -> dict[str, int]:
    return {c.metadata.get("nbgrader", {}).get("grade_id"): i for i, c in enumerate(nb.cells)
            if c.metadata.get("nbgrader", {}).get("grade_id")}


def _solution_source(lesson: str, name: str) -> str:
    nb = correct(lesson)
    return nb.cells[_cells_by_id(nb)[name]].source


def set_solution(nb, name: str, source: str) -> None:
    nb.cells[_cells_by_id(nb)[name]].source = source


def is_class(name: str) -> bool:
    return isinstance(getattr(tantra_lib, name, None), type)


def shortcut_source(name: str) -> str | None:
    """An implementation of exercise `name` that just calls tantra_lib's reference from learner code."""
    ref = getattr(tantra_lib, name, None)
    if ref is None:
        return None
    if is_class(name):
        return (f"import tantra_lib\n\n\nclass {name}(tantra_lib.{name}):\n"
                "    def __init__(self, *args, **kwargs):\n"
                "        super().__init__(*args, **kwargs)\n")
    return (f"import functools\nimport tantra_lib\n\n\n@functools.wraps(tantra_lib.{name})\n"
            f"def {name}(*args, **kwargs):\n    return tantra_lib.{name}(*args, **kwargs)\n")


def calling(name: str, body: str) -> str:
    """A definition of exercise `name` whose every call (or instantiation) runs `body` first."""
    body = "\n".join("        " + line for line in body.strip().splitlines())
    if is_class(name):
        return (f"import torch\n\n\nclass {name}(torch.nn.Module):\n    def __init__(self, *args, **kwargs):\n"
                f"        super().__init__()\n{body}\n")
    return f"def {name}(*args, **kwargs):\n    if True:\n{body}\n    return args[0]\n"


def text(nb) -> str:
    return nbformat.writes(nb)


def _full(lesson: str) -> dict[str, Expect]:
    return {e["name"]: Expect(e["points"], "passed") for e in exercises(lesson)}


def _blank_expect(lesson: str) -> dict[str, Expect]:
    return {e["name"]: Expect(0.0, "not_attempted", "NotImplementedError") for e in exercises(lesson)}


# ----------------------------------------------------------------------------- per lesson


def basic_submissions(lesson: str) -> list[Submission]:
    """correct, blank and partial (with one shortcut) submissions of `lesson`."""
    exs = exercises(lesson)
    subs = [
        Submission("correct", lesson, text(correct(lesson)), _full(lesson)),
        Submission("blank", lesson, text(blank(lesson)), _blank_expect(lesson)),
    ]
    # partial: the first n//2 exercises solved, the next one a shortcut, the rest blank
    nb, expect = blank(lesson), _blank_expect(lesson)
    n_solved = len(exs) // 2
    for e in exs[:n_solved]:
        set_solution(nb, e["solution_id"], _solution_source(lesson, e["solution_id"]))
        expect[e["name"]] = Expect(e["points"], "passed")
    if n_solved < len(exs):
        e = exs[n_solved]
        src = shortcut_source(e["solution_id"])
        if src is not None:
            set_solution(nb, e["solution_id"], src)
            expect[e["name"]] = Expect(0.0, "shortcut", f"tantra_lib.{e['solution_id']}")
    subs.append(Submission("partial", lesson, text(nb), expect, note="first exercises solved, next one a shortcut"))
    return subs


#: the students of the class every lesson's hostile corpus has (shortcut_torch only for 01_softmax)
CLASS_STUDENTS = ("correct", "blank", "partial", "infinite_loop", "memory_50gb", "sys_exit", "os_exit", "kernel_kill",
                  "print_100mb", "write_outside", "deleted_check", "duplicated_check", "edited_check",
                  "edited_check_correct", "wrong_answer", "shortcut_torch", "instructor_copy", "malformed_json",
                  "not_a_notebook", "missing_notebook")


def hostile_lesson() -> str:
    names = lesson_names()
    return "01_softmax" if "01_softmax" in names else names[0]


def class_submissions(lesson: str, outside: Path) -> list[Submission]:
    """A class of >= 20 students of `lesson`: the basic three plus hostile and broken ones.

    `outside` is a folder outside every sandbox; one submission tries to write into it."""
    exs = exercises(lesson)
    names = [e["name"] for e in exs]
    sol = {e["name"]: e["solution_id"] for e in exs}
    first, second, last = names[0], names[min(1, len(names) - 1)], names[-1]
    subs = basic_submissions(lesson)
    full = _full(lesson)

    def variant(student, edit, expect_changes, note="", graded=True):
        nb = correct(lesson)
        edit(nb)
        exp = copy.deepcopy(full)
        exp.update(expect_changes)
        subs.append(Submission(student, lesson, text(nb), exp, graded, note))

    def prepend(name, code):
        def edit(nb):
            cell = nb.cells[_cells_by_id(nb)[sol[name]]]
            cell.source = code + "\n" + cell.source
        return edit

    def replace(name, source):
        return lambda nb: set_solution(nb, sol[name], source)

    # index (1-based, as messages count) of an exercise's solution / check cell in the correct notebook
    ids = _cells_by_id(correct(lesson))

    def cell_no(gid):
        return ids[gid] + 1

    variant("infinite_loop", replace(second, calling(sol[second], "while True:\n    pass")),
            {second: Expect(0.0, "timeout", f"timed out after {CORPUS_TIMEOUT} s in cell "
                                            f"{cell_no('check_' + second)}")},
            "the exercise loops forever when called")
    variant("memory_50gb", replace(first, calling(sol[first], "hog = bytearray(50 * 10**9)")),
            {first: Expect(0.0, "error", "MemoryError")}, "allocates 50 GB")
    variant("sys_exit", prepend(second, "import sys\nsys.exit(3)"),
            {second: Expect(0.0, "error", "SystemExit")}, "sys.exit() at the top of an exercise cell")
    variant("os_exit", prepend(second, "import os\nos._exit(1)"),
            {n: Expect(0.0, "not_run", f"kernel died in cell {cell_no(sol[second])}")
             for n in names[names.index(second):]}, "os._exit() kills the kernel")
    variant("kernel_kill", prepend(last, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
            {last: Expect(0.0, "not_run", "kernel died")}, "the kernel kills itself")
    variant("print_100mb", prepend(first, "print('x' * 100_000_000)"), {}, "prints 100 MB")
    target = outside / "escaped.txt"
    variant("write_outside", replace(first, calling(sol[first], f"open({str(target)!r}, 'w').write('escaped')")),
            {first: Expect(0.0, "error", "PermissionError")}, "writes a file outside its folder")

    def delete_check(nb):
        del nb.cells[_cells_by_id(nb)["check_" + second]]
    variant("deleted_check", delete_check, {second: Expect(0.0, "missing", "missing")}, "deleted a check cell")

    def duplicate_check(nb):
        i = _cells_by_id(nb)["check_" + first]
        dup = copy.deepcopy(nb.cells[i])
        dup["id"] = "duplicated-check"  # as a copy-paste in Jupyter would, with a fresh cell id
        nb.cells.insert(i + 1, dup)
    variant("duplicated_check", duplicate_check, {}, "duplicated a check cell")

    def edit_check(nb):  # an unsolved exercise whose check cell was replaced by `pass`, worth 100 points
        i = _cells_by_id(nb)["check_" + first]
        nb.cells[i].source = "pass"
        nb.cells[i].metadata["nbgrader"]["points"] = 100
        set_solution(nb, sol[first], blank_source(lesson, sol[first]))
    variant("edited_check", edit_check, {first: Expect(0.0, "not_attempted", "NotImplementedError")},
            "edited a check cell (restored by nbgrader)")

    def edit_check_correct(nb):
        i = _cells_by_id(nb)["check_" + last]
        nb.cells[i].source = "print('all good')"
    variant("edited_check_correct", edit_check_correct, {}, "edited a check cell of a solved exercise")

    wrong = calling(sol[first], "pass")  # returns its first input unchanged
    variant("wrong_answer", replace(first, wrong), {first: Expect(0.0, "failed", None)}, "a wrong answer")
    if first == "softmax":
        variant("shortcut_torch", replace(first, "import torch\n\ndef softmax(x, dim=-1):\n"
                                                 "    return torch.softmax(x, dim=dim)\n"),
                {first: Expect(0.0, "shortcut", "torch.softmax")}, "calls torch.softmax")
    # the instructor notebook itself (solution markers, hidden tests in place) is a perfect submission
    subs.append(Submission("instructor_copy", lesson,
                           (SOLUTIONS / lesson / f"{lesson}.ipynb").read_text(encoding="utf-8"), copy.deepcopy(full)))
    zero = {n: Expect(0.0, "not_run", None) for n in names}
    good = text(correct(lesson))
    subs.append(Submission("malformed_json", lesson, good[: len(good) // 2], copy.deepcopy(zero), graded=False,
                           note="truncated file"))
    subs.append(Submission("not_a_notebook", lesson, json.dumps({"hello": "world"}), copy.deepcopy(zero),
                           graded=False, note="JSON but not a notebook"))
    subs.append(Submission("missing_notebook", lesson, None, copy.deepcopy(zero), graded=False,
                           note="student folder without the notebook"))
    k = 0
    while len(subs) < 20:  # more ordinary learners
        k += 1
        src = subs[k % 3]
        subs.append(Submission(f"{src.student}_{k}", lesson, src.text, copy.deepcopy(src.expect)))
    return subs


def blank_source(lesson: str, solution_id: str) -> str:
    nb = blank(lesson)
    return nb.cells[_cells_by_id(nb)[solution_id]].source


# ----------------------------------------------------------------------------- graded once per session

_CACHE: dict[str, object] = {}


def workdir() -> Path:
    if "workdir" not in _CACHE:
        path = Path(tempfile.mkdtemp(prefix="tantra-corpus-"))
        import atexit

        atexit.register(shutil.rmtree, path, True)
        _CACHE["workdir"] = path
    return _CACHE["workdir"]  # type: ignore[return-value]


def graded_lessons() -> dict[str, tuple[list[Submission], dict[str, dict]]]:
    """Every lesson but the hostile one: its basic submissions graded by autograde (one pool, 2 jobs).

    lesson -> (submissions, {student: result})."""
    if "lessons" not in _CACHE:
        from tantra_lib.grading.autograde import autograde_many
        from tantra_lib.grading.sandbox import Limits

        classes, subs_of = [], {}
        for lesson in lesson_names():
            if lesson == hostile_lesson():
                continue
            root = workdir() / "lessons" / lesson
            subs_of[lesson] = basic_submissions(lesson)
            for s in subs_of[lesson]:
                s.write(root / "submitted")
            classes.append((lesson, root / "submitted", root / "out"))
        graded = autograde_many(classes, jobs=2, limits=Limits(cell_timeout=300), progress=False) if classes else {}
        _CACHE["lessons"] = {lesson: (subs_of[lesson], {r["student"]: r for r in graded[lesson][1]})
                             for lesson in subs_of}
    return _CACHE["lessons"]  # type: ignore[return-value]


def graded_class() -> dict:
    """The >= 20-student class of the hostile lesson graded by the `tantra autograde` command.

    {"lesson", "submissions", "paths", "before" (bytes), "outside", "out", "proc", "results"}."""
    if "class" not in _CACHE:
        import subprocess
        import sys

        lesson = hostile_lesson()
        root = workdir() / "class"
        outside = workdir() / "outside"
        outside.mkdir(parents=True, exist_ok=True)
        subs = class_submissions(lesson, outside)
        paths = {s.student: s.write(root / "submitted") for s in subs}
        before = {k: p.read_bytes() for k, p in paths.items() if p.exists()}
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        proc = subprocess.run(
            [sys.executable, "-m", "tantra_lib", "autograde", lesson, "--submissions", str(root / "submitted"),
             "--jobs", "2", "--timeout", str(CORPUS_TIMEOUT), "--out", str(root / "out")],
            capture_output=True, text=True, env=env, timeout=1800)
        results_file = root / "out" / "results.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else []
        _CACHE["class"] = {"lesson": lesson, "submissions": subs, "paths": paths, "before": before,
                           "outside": outside, "out": root / "out", "proc": proc,
                           "results": {r["student"]: r for r in results}}
    return _CACHE["class"]  # type: ignore[return-value]


def check_expectations(sub: Submission, result: dict) -> list[str]:
    """The ways `result` differs from what `sub` expects (empty when it matches)."""
    problems = []
    if sub.graded != (result["status"] == "graded"):
        problems.append(f"status {result['status']!r} ({result.get('error')})")
    by_name = {e["name"]: e for e in result["exercises"]}
    for name, exp in sub.expect.items():
        got = by_name.get(name)
        if got is None:
            problems.append(f"{name}: missing from the result")
            continue
        if not math.isclose(got["score"], exp.score):
            problems.append(f"{name}: score {got['score']} != {exp.score} ({got['status']}: {got['feedback']})")
        if exp.status and got["status"] != exp.status:
            problems.append(f"{name}: status {got['status']!r} != {exp.status!r} ({got['feedback']})")
        if exp.feedback and exp.feedback.lower() not in (got["feedback"] or "").lower():
            problems.append(f"{name}: feedback {got['feedback']!r} lacks {exp.feedback!r}")
        if got["passed"] != (exp.score == got["max_score"] and exp.score > 0):
            problems.append(f"{name}: passed={got['passed']}")
    return problems

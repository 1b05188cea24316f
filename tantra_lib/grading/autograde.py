"""Grading submissions with nbgrader's autograde, one notebook or a whole class in parallel.

:class:`Grader` owns a private copy of a lesson's course (gradebook included) and grades one
student at a time in-process through nbgrader's ``Autograde`` converter, whose execute step is
:class:`~tantra_lib.grading.execute.SandboxExecute`. ``tantra grade`` uses one Grader;
:func:`autograde_class` (and :func:`autograde_many`, several lessons in one pool) starts ``jobs``
long-lived worker processes, each with its own Grader per lesson,
that pull students one by one from a queue (so a slow notebook never holds up a fixed share of
the class), then merges the workers' gradebooks into one and writes the CSV and the feedback.

A submission's result (``tantra grade --json`` prints it without "student", and with
"status"/"error" only when the notebook was not graded)::

    {"notebook", "lesson", "student", "score", "max_score", "status", "error",
     "exercises": [{"grade_id", "name", "score", "max_score", "passed", "status", "feedback", "hint"}]}

``status`` is "graded" or "failed to run" (the notebook could not be executed at all: not
JSON, not a notebook, corrupted nbgrader metadata, missing file); ``error`` says why. An
exercise's ``status`` is the check's ("passed", "failed", "not_attempted", "shortcut",
"error") or the sandbox's ("timeout", "crashed", "not_run") or "missing" (check cell deleted).
"""

from __future__ import annotations

import csv
import html
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .course import COURSE_ID, copy_course, grade_cells, nbgrader_config
from .execute import SANDBOX_ERRORS, cell_label
from .sandbox import Limits

__all__ = ["Grader", "Summary", "autograde_class", "autograde_many", "read_notebook", "NotebookError",
           "exercise_results"]

GRADED, FAILED = "graded", "failed to run"


class NotebookError(Exception):
    """The file is not a readable notebook (message for the user)."""


def read_notebook(path: Path, validate: bool = True):
    """Read (and validate) a notebook file, raising NotebookError with a clear message.

    Returns the notebook (a NotebookNode), or with ``validate=False`` only checks that the file
    is a JSON notebook and returns None."""
    import nbformat

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotebookError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise NotebookError(f"{path} is a folder, not a notebook file") from None
    except OSError as e:
        raise NotebookError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise NotebookError(f"{path} is not a notebook: it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise NotebookError(f"{path} is not valid notebook JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                            "the file may be truncated or edited by hand") from None
    if not isinstance(data, dict) or "cells" not in data or "nbformat" not in data:
        raise NotebookError(f"{path} is JSON but not a Jupyter notebook (no 'cells'/'nbformat')")
    if not validate:
        return None
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. duplicated cell ids, which nbformat repairs
            nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
            nbformat.validate(nb)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NotebookError(f"{path} is not a valid notebook: {first}") from None
    return nb


# ----------------------------------------------------------------------------- per-exercise results


def _errors(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def exercise_results(nb, lesson: str, scores: dict[str, float | None] | None = None) -> list[dict]:
    """One entry per grade cell of `lesson`, read from the executed notebook `nb`.

    `scores` (grade_id -> points awarded) comes from the gradebook for ``grade``; for
    ``check`` it is None and an exercise scores its points iff its check passed."""
    from ..checks import results_from_outputs

    by_id, index_of = {}, {}
    for i, cell in enumerate(nb.cells):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid and gid not in by_id:
            by_id[gid], index_of[gid] = cell, i
    out = []
    for spec in grade_cells(lesson):
        gid, points = spec["grade_id"], spec["points"]
        name = gid[len("check_"):] if gid.startswith("check_") else gid
        entry = {"grade_id": gid, "name": name, "score": 0.0, "max_score": points, "passed": False,
                 "status": "failed", "feedback": "", "hint": ""}
        cell = by_id.get(gid)
        if cell is None:
            entry["status"] = "missing"
            entry["feedback"] = (f"the check cell `{gid}` is missing from the notebook (deleted?), so `{name}` "
                                 "cannot be graded.")
            entry["hint"] = "Copy the check cell back from a fresh copy of the lesson notebook."
            out.append(entry)
            continue
        results = results_from_outputs(cell.get("outputs", []))
        errors = _errors(cell)
        failing = [r for r in results if not r.get("passed")]
        sandbox = [e for e in errors if e.get("ename") in SANDBOX_ERRORS]
        if sandbox:
            e = sandbox[-1]
            entry["status"] = {"TimeoutError": "timeout", "KernelDied": "crashed", "NotRun": "not_run"}[e["ename"]]
            entry["feedback"] = e.get("evalue", "")
        elif failing:
            r = failing[0]
            entry["status"], entry["feedback"], entry["hint"] = r.get("status", "failed"), r.get("message", ""), \
                r.get("hint", "")
        elif errors:
            e = errors[-1]
            entry["status"] = "error"
            entry["feedback"] = f"the check cell raised {e.get('ename')}: {e.get('evalue')}".rstrip(": ")
            sol = spec.get("solution_id")
            sol_cell = by_id.get(sol) if sol else None
            sol_errors = _errors(sol_cell) if sol_cell is not None else []
            if sol_errors:
                se = sol_errors[-1]
                where = cell_label(index_of[sol])
                entry["feedback"] = (f"your exercise cell ({where}) raised {se.get('ename')}: {se.get('evalue')}; "
                                     + entry["feedback"])
            if e.get("ename") == "NameError":
                entry["hint"] = f"Run the exercise cell that defines `{name}` without errors, then this check."
        elif not results and scores is None:
            entry["status"] = "not_run"
            entry["feedback"] = "the check cell did not report a result (was it run, or edited?)."
        else:
            entry["status"], entry["passed"] = "passed", True
        if scores is None:
            entry["score"] = points if entry["passed"] else 0.0
        else:
            got = scores.get(gid)
            entry["score"] = float(got) if got is not None else 0.0
            entry["passed"] = entry["passed"] and entry["score"] >= points
            if entry["status"] == "passed" and not entry["passed"]:  # nbgrader disagrees (e.g. text on stderr)
                entry["status"] = "failed"
                entry["feedback"] = "the check cell passed but wrote to stderr, which nbgrader counts as a failure."
        out.append(entry)
    return out


def summarise(notebook: str, lesson: str, exercises: list[dict], student: str = "", status: str = GRADED,
              error: str = "") -> dict:
    return {
        "notebook": notebook, "lesson": lesson, "student": student,
        "score": round(sum(e["score"] for e in exercises), 6),
        "max_score": round(sum(e["max_score"] for e in exercises), 6),
        "status": status, "error": error, "exercises": exercises,
    }


def failed_result(notebook: str, lesson: str, student: str, error: str) -> dict:
    exercises = []
    for spec in grade_cells(lesson):
        gid = spec["grade_id"]
        exercises.append({"grade_id": gid, "name": gid[len("check_"):] if gid.startswith("check_") else gid,
                          "score": 0.0, "max_score": spec["points"], "passed": False, "status": "not_run",
                          "feedback": f"not graded: {error}", "hint": ""})
    return summarise(notebook, lesson, exercises, student, FAILED, error)


# ----------------------------------------------------------------------------- one grader


def _deduplicate_ids_class():
    from nbgrader.preprocessors import DeduplicateIds

    class DeduplicateGradeIds(DeduplicateIds):
        """nbgrader's DeduplicateIds, fixed: a duplicated grade/solution cell loses its nbgrader
        metadata entirely (nbgrader 0.9 leaves an empty dict, which its own metadata validator
        then rejects as "an old version of the metadata format", failing the whole notebook)."""

        def preprocess_cell(self, cell, resources, cell_index):
            cell, resources = super().preprocess_cell(cell, resources, cell_index)
            if "nbgrader" in cell.metadata and not cell.metadata["nbgrader"]:
                del cell.metadata["nbgrader"]
            return cell, resources

    return DeduplicateGradeIds


class Grader:
    """Grades submissions of one lesson into a private course copy at `root` (created if needed)."""

    def __init__(self, lesson: str, root: Path, limits: Limits | None = None):
        self.lesson = lesson
        self.root = Path(root)
        self.limits = limits or Limits()
        copy_course(lesson, self.root)

    def _config(self):
        import math

        from nbconvert.preprocessors import ClearMetadataPreprocessor
        from nbgrader.preprocessors import (
            AssignLatePenalties,
            CheckCellMetadata,
            ClearOutput,
            IgnorePattern,
            LimitOutput,
            OverwriteCells,
            OverwriteKernelspec,
            SaveAutoGrades,
        )

        from .execute import SandboxExecute

        cfg = nbgrader_config(self.root)
        cfg.Autograde.sanitize_preprocessors = [ClearOutput, _deduplicate_ids_class(), OverwriteKernelspec,
                                                OverwriteCells, CheckCellMetadata]
        cfg.Autograde.autograde_preprocessors = [SandboxExecute, IgnorePattern, ClearMetadataPreprocessor,
                                                 LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
        lim = self.limits
        cfg.Execute.timeout = math.ceil(lim.cell_timeout) if lim.cell_timeout else None
        cfg.SandboxExecute.notebook_timeout = lim.notebook_timeout
        cfg.SandboxExecute.memory_mb = lim.memory_mb
        cfg.SandboxExecute.max_output_bytes = lim.max_output_bytes
        cfg.SandboxExecute.hidden_paths = [str(self.root.resolve())]  # gradebook with the hidden tests
        cfg.Autograde.create_student = True
        return cfg

    def _app(self, kind: str, student: str):
        from nbgrader.converters import Autograde, GenerateFeedback
        from nbgrader.coursedir import CourseDirectory

        cfg = self._config()
        if kind == "feedback":
            cfg.HTMLExporter.template_name = "feedback"
        coursedir = CourseDirectory(config=cfg)
        coursedir.assignment_id = self.lesson
        coursedir.student_id = student
        app = (Autograde if kind == "autograde" else GenerateFeedback)(coursedir=coursedir, config=cfg)
        app.force = True
        app.log.setLevel(logging.ERROR)
        return app

    def autograded_path(self, student: str) -> Path:
        return self.root / "autograded" / student / self.lesson / f"{self.lesson}.ipynb"

    def feedback_path(self, student: str) -> Path:
        return self.root / "feedback" / student / self.lesson / f"{self.lesson}.html"

    def grade(self, student: str, notebook: Path, feedback: bool = False) -> dict:
        """Autograde `notebook` (never modified) as `student`; return the result dict."""
        import warnings

        import nbformat
        from nbgrader.utils import capture_log
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader 0.9 with SQLAlchemy 2.x: harmless
        warnings.filterwarnings("ignore", message="Non-unique cell id")  # nbformat repairs copied cells' ids
        lesson, shown = self.lesson, str(notebook)
        sub = self.root / "submitted" / student / lesson
        shutil.rmtree(sub, ignore_errors=True)
        shutil.rmtree(self.autograded_path(student).parent, ignore_errors=True)
        sub.mkdir(parents=True)
        try:
            read_notebook(notebook, validate=False)  # nbgrader validates its copy itself
            shutil.copyfile(notebook, sub / f"{lesson}.ipynb")  # bytes as submitted: nbgrader reads its copy
        except NotebookError as e:
            self._record_zero(student)
            return failed_result(shown, lesson, student, str(e))
        run = capture_log(self._app("autograde", student))
        path = self.autograded_path(student)
        if not run["success"] or not path.exists():
            return failed_result(shown, lesson, student, _nbgrader_error(run))
        nb = nbformat.read(path, as_version=4)
        result = summarise(shown, lesson, exercise_results(nb, lesson, self._scores(student)), student)
        if feedback:
            fb = capture_log(self._app("feedback", student))
            if not fb["success"] or not self.feedback_path(student).exists():
                write_failure_feedback(self.feedback_path(student), result,
                                       note="nbgrader could not render the feedback: " + _nbgrader_error(fb))
        return result

    def feedback_all(self) -> None:
        """nbgrader generate_feedback for every student graded here (one exporter for them all)."""
        from nbgrader.utils import capture_log

        if (self.root / "autograded").exists():
            capture_log(self._app("feedback", "*"))

    def _scores(self, student: str) -> dict[str, float | None]:
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", COURSE_ID) as gb:
            sub = gb.find_submission_notebook(self.lesson, self.lesson, student)
            return {g.name: g.score for g in sub.grades}

    def _record_zero(self, student: str) -> None:
        """A submission that cannot run still gets a row (all zeros) in the gradebook."""
        from nbgrader.api import Gradebook

        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", COURSE_ID) as gb:
            gb.update_or_create_student(student)
            gb.update_or_create_submission(self.lesson, student)
            for grade in gb.find_submission_notebook(self.lesson, self.lesson, student).grades:
                grade.auto_score = 0
                grade.needs_manual_grade = False
            gb.db.commit()


def _nbgrader_error(run: dict) -> str:
    lines = [ln for ln in (run.get("log") or "").splitlines() if ln.startswith(("[ERROR]", "[CRITICAL]"))]
    useful = [ln.split("] ", 1)[1] for ln in lines if "Traceback" not in ln and "error processing" not in ln
              and "Please see" not in ln and "There was an error" not in ln]
    if useful:
        return useful[0].strip()
    err = (run.get("error") or "").strip().splitlines()
    return err[-1] if err else "nbgrader autograde failed"


def write_failure_feedback(path: Path, result: dict, note: str = "") -> None:
    """A plain HTML feedback page for a submission nbgrader could not render."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(
        f"<tr><td>{html.escape(e['name'])}</td><td>{e['score']:g} / {e['max_score']:g}</td>"
        f"<td>{html.escape(e['feedback'])}</td></tr>" for e in result["exercises"])
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Feedback: "
        f"{html.escape(result['lesson'])}</title></head><body>"
        f"<h1>{html.escape(result['lesson'])} — {html.escape(result.get('student', ''))}</h1>"
        f"<p><b>Score: {result['score']:g} / {result['max_score']:g}</b></p>"
        + (f"<p>Your notebook could not be graded: {html.escape(result['error'])}</p>" if result.get("error") else "")
        + (f"<p>{html.escape(note)}</p>" if note else "")
        + f"<table border='1'><tr><th>exercise</th><th>score</th><th>feedback</th></tr>{rows}</table>"
        "</body></html>\n", encoding="utf-8")


# ----------------------------------------------------------------------------- a class, in parallel


@dataclass
class Summary:
    lesson: str
    students: int
    graded: int
    failed: list[str]
    mean_score: float
    max_score: float
    seconds: float
    out: str
    crashed_or_timed_out: list[str]

    def lines(self) -> list[str]:
        failed = f" ({', '.join(self.failed)})" if self.failed else ""
        lines = [
            f"{self.lesson}: {self.students} submissions in {self.seconds:.0f} s",
            f"  graded: {self.graded}, failed to run: {len(self.failed)}{failed}",
            f"  mean score: {self.mean_score:.2f} / {self.max_score:g} (over all {self.students} students)",
        ]
        if self.crashed_or_timed_out:
            lines.append(f"  time limit or kernel crash in: {', '.join(self.crashed_or_timed_out)}")
        lines.append(f"  wrote {self.out}/gradebook.db, grades.csv, feedback/<student>/{self.lesson}/"
                     f"{self.lesson}.html")
        return lines

    def to_json(self) -> dict:
        return asdict(self)


def find_submissions(lesson: str, submissions: Path) -> dict[str, Path]:
    """student -> the notebook path nbgrader's layout says they submitted (it may be missing)."""
    found = {}
    for student_dir in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[student_dir.name] = student_dir / lesson / f"{lesson}.ipynb"
    return found


def _worker(root: str, limits: Limits, tasks, results, preload: bool = True) -> None:
    """A worker process: pulls (lesson, student, path) from `tasks` until a None arrives, grading
    each with its own Grader per lesson (a private course copy under `root`). With `preload`,
    its kernels are forked from a zygote that imported torch & co. once (see sandbox.py)."""
    import signal

    from .sandbox import use_zygote

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    with use_zygote(preload):
        _grade_queue(root, limits, tasks, results)


def _grade_queue(root: str, limits: Limits, tasks, results) -> None:
    graders: dict[str, Grader] = {}
    while True:
        item = tasks.get()
        if item is None:
            break
        lesson, student, path = item
        results.put(("start", root, (lesson, student)))
        try:
            if lesson not in graders:
                graders[lesson] = Grader(lesson, Path(root) / lesson, limits)
            result = graders[lesson].grade(student, Path(path))
        except Exception as e:  # noqa: BLE001  (one bad submission never stops the others)
            result = failed_result(path, lesson, student, f"grader error: {type(e).__name__}: {e}")
        results.put(("done", root, result))
    for grader in graders.values():  # one nbgrader generate_feedback for all this worker's students
        try:
            grader.feedback_all()
        except Exception:  # noqa: BLE001  (the parent writes a plain page for any feedback missing)
            pass
    results.put(("exit", root, None))


_MERGE_TABLES = ("student", "submitted_assignment", "submitted_notebook", "grade", "comment")


def merge_gradebooks(target: Path, parts: list[Path]) -> None:
    """Copy every student's submission rows of the worker gradebooks `parts` into `target`.

    All copies come from one course gradebook, so assignments, notebooks and cells share
    their ids; students and submissions have unique ids (nbgrader uses uuids)."""
    con = sqlite3.connect(target)
    try:
        for i, part in enumerate(parts):
            con.execute(f"ATTACH DATABASE ? AS w{i}", (str(part),))
            for table in _MERGE_TABLES:
                if table == "student":
                    con.execute(f"INSERT OR IGNORE INTO main.student SELECT * FROM w{i}.student")
                else:
                    con.execute(f"INSERT OR REPLACE INTO main.{table} SELECT * FROM w{i}.{table}")
            con.commit()
            con.execute(f"DETACH DATABASE w{i}")
    finally:
        con.close()


def write_csv(path: Path, lesson: str, results: list[dict]) -> None:
    names = [e["name"] for e in (results[0]["exercises"] if results else [])]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "lesson", "score", "max_score", *names, "status", "error"])
        for r in sorted(results, key=lambda r: r["student"]):
            scores = {e["name"]: e["score"] for e in r["exercises"]}
            w.writerow([r["student"], lesson, f"{r['score']:g}", f"{r['max_score']:g}",
                        *(f"{scores.get(n, 0):g}" for n in names), r["status"], r.get("error", "")])


def autograde_class(lesson: str, submissions: Path, out: Path, jobs: int | None = None,
                    limits: Limits | None = None, progress: bool = True,
                    preload: bool = True) -> tuple[Summary, list[dict]]:
    """Grade every student of `submissions` (nbgrader layout) in `jobs` worker processes."""
    return autograde_many([(lesson, submissions, out)], jobs, limits, progress, preload)[lesson]


def autograde_many(classes: list[tuple[str, Path, Path]], jobs: int | None = None, limits: Limits | None = None,
                   progress: bool = True, preload: bool = True) -> dict[str, tuple[Summary, list[dict]]]:
    """Grade several classes [(lesson, submissions, out)] in one pool of `jobs` workers.

    With `preload` (the default) each worker forks its kernels from a zygote process that has
    imported torch, matplotlib and tantra_lib once, instead of paying ~2 s of imports per
    submission; ``preload=False`` starts every kernel from scratch.

    Returns lesson -> (summary, results sorted by student); writes each class's gradebook,
    CSV, results.json, feedback/ and autograded/ under its `out`."""
    import multiprocessing as mp
    import queue as queue_mod
    import threading

    import nbgrader.converters  # noqa: F401  (imported before forking, so workers start ready)

    from . import execute  # noqa: F401
    from .course import lesson_course

    t0 = time.perf_counter()
    limits = limits or Limits()
    todo: dict[tuple[str, str], Path] = {}
    for lesson, submissions, out in classes:
        lesson_course(lesson)  # build (or find) it once, before the workers copy it
        out.mkdir(parents=True, exist_ok=True)
        for student, path in find_submissions(lesson, submissions).items():
            todo[(lesson, student)] = path
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    work = Path(tempfile.mkdtemp(prefix=".tantra-workers-", dir=classes[0][2]))
    # fork (on Linux) gives workers that are ready at once; only while this process has no other
    # thread (as in the `tantra` command), since forking a threaded process is unsafe
    fork = sys.platform.startswith("linux") and threading.active_count() == 1
    ctx = mp.get_context("fork" if fork else "spawn")
    tasks, results_q = ctx.Queue(), ctx.Queue()
    for (lesson, student), path in todo.items():
        tasks.put((lesson, student, str(path)))

    procs: dict[str, object] = {}

    def start_worker() -> None:
        root = str(work / f"worker-{len(procs)}")
        p = ctx.Process(target=_worker, args=(root, limits, tasks, results_q, preload), daemon=True)
        p.start()
        procs[root] = p

    for _ in range(jobs):
        start_worker()
    for _ in range(jobs):
        tasks.put(None)

    bar = None
    if progress:
        from tqdm import tqdm

        label = classes[0][0] if len(classes) == 1 else f"{len(classes)} lessons"
        bar = tqdm(total=len(todo), desc=f"grading {label}", unit="nb", dynamic_ncols=True)
    results: dict[tuple[str, str], dict] = {}
    in_flight: dict[str, tuple[str, str]] = {}
    exited: set[str] = set()
    try:
        while len(exited) < len(procs):
            try:
                kind, root, payload = results_q.get(timeout=1.0)
            except queue_mod.Empty:
                for root, p in list(procs.items()):
                    if root not in exited and not p.is_alive():  # a worker died: fail its student, replace it
                        exited.add(root)
                        key = in_flight.pop(root, None)
                        if key is not None and key not in results:
                            results[key] = failed_result(str(todo[key]), key[0], key[1],
                                                         "the grading worker crashed on this submission")
                            if bar:
                                bar.update(1)
                        if len(results) < len(todo):
                            start_worker()
                            tasks.put(None)
                continue
            if kind == "start":
                in_flight[root] = payload
            elif kind == "done":
                in_flight.pop(root, None)
                results[(payload["lesson"], payload["student"])] = payload
                if bar:
                    bar.update(1)
                    bar.set_postfix_str(f"{payload['student']}: {payload['score']:g}/{payload['max_score']:g}")
            elif kind == "exit":
                exited.add(root)
    finally:
        if bar:
            bar.close()
        for p in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.kill()

    for (lesson, student), path in todo.items():  # anything a dead worker never started
        results.setdefault((lesson, student), failed_result(str(path), lesson, student, "not graded (worker stopped)"))

    done = {}
    for lesson, _, out in classes:
        done[lesson] = _write_class(lesson, out, [results[k] for k in sorted(results) if k[0] == lesson],
                                    [Path(r) / lesson for r in procs], time.perf_counter() - t0)
    shutil.rmtree(work, ignore_errors=True)
    return done


def _write_class(lesson: str, out: Path, ordered: list[dict], roots: list[Path], seconds: float):
    """Merge the workers' gradebooks and files of one class into `out`; CSV, results.json, summary."""
    from .course import lesson_course

    target = out / "gradebook.db"
    shutil.copyfile(lesson_course(lesson) / "gradebook.db", target)
    merge_gradebooks(target, [r / "gradebook.db" for r in roots if (r / "gradebook.db").exists()])
    for root in roots:
        for sub in ("autograded", "feedback"):
            if (root / sub).exists():
                shutil.copytree(root / sub, out / sub, dirs_exist_ok=True)
    for r in ordered:
        fb = out / "feedback" / r["student"] / lesson / f"{lesson}.html"
        if not fb.exists():
            write_failure_feedback(fb, r)
    write_csv(out / "grades.csv", lesson, ordered)
    (out / "results.json").write_text(json.dumps(ordered, indent=1) + "\n", encoding="utf-8")
    scores = [r["score"] for r in ordered]
    summary = Summary(
        lesson=lesson, students=len(ordered), graded=sum(r["status"] == GRADED for r in ordered),
        failed=[r["student"] for r in ordered if r["status"] != GRADED],
        mean_score=sum(scores) / len(scores) if scores else 0.0,
        max_score=ordered[0]["max_score"] if ordered else 0.0,
        seconds=seconds, out=str(out),
        crashed_or_timed_out=[r["student"] for r in ordered
                              if any(e["status"] in ("timeout", "crashed") for e in r["exercises"])],
    )
    return summary, ordered

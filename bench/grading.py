"""Grading throughput: plain serial `nbgrader autograde` vs `tantra autograde --jobs 2`.

The same submissions of lesson 01 (half solved, half blank) are graded twice from scratch:

* nbgrader: ``nbgrader autograde LESSON`` in a course folder holding the lesson's gradebook
  (one process, students one after the other, nbgrader's own Execute);
* tantra: ``tantra autograde LESSON --jobs 2`` (two worker processes, sandboxed kernels forked
  from a zygote that imported torch & co. once; it also writes the CSV and one HTML feedback
  file per student, which nbgrader's run does not);
* for comparison, the same with ``--no-preload`` (every kernel started from scratch, as
  nbgrader starts them), which shows how much of the gain is the two workers alone.

Prints submissions/second for each, seconds per submission, the ratio (target ≥ 1.8x on a
2-core machine), and the CPU time per submission of each (per-notebook overhead: it should be
no worse than nbgrader's; unlike wall time it barely depends on what else the machine runs).
Both runs start from the same cached course build, so neither pays for generating the assignment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("TANTRA_QUICK", "1")
    return env


def _child_cpu() -> float:
    """User + system CPU seconds of every finished child process (and theirs) so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _submissions(lesson: str, n: int, root: Path) -> None:
    import nbformat
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput

    from tantra_lib.grading.course import lesson_course
    from tantra_lib.lessons import SOLUTIONS

    solved = nbformat.read(SOLUTIONS / lesson / f"{lesson}.ipynb", as_version=4)
    solved, _ = ClearHiddenTests().preprocess(solved, {})
    solved, _ = ClearOutput().preprocess(solved, {})
    blank = nbformat.read(lesson_course(lesson) / "release" / lesson / f"{lesson}.ipynb", as_version=4)
    for i in range(n):
        folder = root / f"student{i:02d}" / lesson
        folder.mkdir(parents=True)
        nbformat.write(solved if i % 2 == 0 else blank, folder / f"{lesson}.ipynb")


def run(quick: bool) -> list[str]:
    from tantra_lib.grading.course import copy_course
    from tantra_lib.lessons import lesson_names

    lesson = "01_softmax" if "01_softmax" in lesson_names() else lesson_names()[0]
    n = 4 if quick else 20
    jobs = 2
    lines = [f"  lesson {lesson}, {n} submissions (half solved, half blank), {os.cpu_count()} cores"]
    with tempfile.TemporaryDirectory(prefix="tantra-bench-grading-") as tmp:
        tmp = Path(tmp)
        subs = tmp / "submitted"
        _submissions(lesson, n, subs)

        # plain nbgrader, serial
        course = copy_course(lesson, tmp / "nbgrader-course")
        shutil.copytree(subs, course / "submitted")
        c0 = _child_cpu()
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "nbgrader", "autograde", lesson, f"--CourseDirectory.root={course}",
             "--CourseDirectory.course_id=transformer-tantra", "--Execute.timeout=120", "--force",
             "--log-level=ERROR"], cwd=course, env=_env(), capture_output=True, text=True)
        t_nbgrader = time.perf_counter() - t0
        cpu_nbgrader = _child_cpu() - c0
        graded = len(list((course / "autograded").glob(f"*/{lesson}/{lesson}.ipynb")))
        if proc.returncode or graded != n:
            raise RuntimeError(f"nbgrader autograde graded {graded}/{n}: {proc.stderr[-2000:]}")

        # tantra autograde, parallel: without, then with the kernel zygote
        def tantra(*extra: str) -> tuple[float, float]:
            out = tmp / f"tantra-out{len(extra)}"
            c0 = _child_cpu()
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "tantra_lib", "autograde", lesson, "--submissions", str(subs),
                 "--jobs", str(jobs), "--out", str(out), "--no-progress", *extra],
                env=_env(), capture_output=True, text=True)
            seconds, cpu = time.perf_counter() - t0, _child_cpu() - c0
            if proc.returncode:
                raise RuntimeError(f"tantra autograde failed: {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
            return seconds, cpu

        t_plain, cpu_plain = tantra("--no-preload")
        t_tantra, cpu_tantra = tantra()

    rate_nb, rate_plain, rate_ta = n / t_nbgrader, n / t_plain, n / t_tantra
    ratio = rate_ta / rate_nb
    row = "  {:<40}{:>8.3f}{:>8.2f}{:>9.1f}{:>12.2f}{:>8.2f}x".format
    lines += [
        f"  {'':<40}{'subs/s':>8}{'s/sub':>8}{'total s':>9}{'CPU s/sub':>12}{'ratio':>9}",
        row("nbgrader autograde (serial)", rate_nb, t_nbgrader / n, t_nbgrader, cpu_nbgrader / n, 1.0),
        row(f"tantra autograde --jobs {jobs} --no-preload", rate_plain, t_plain / n, t_plain, cpu_plain / n,
            rate_plain / rate_nb),
        row(f"tantra autograde --jobs {jobs}", rate_ta, t_tantra / n, t_tantra, cpu_tantra / n, ratio),
        f"  ratio tantra / nbgrader = {ratio:.2f}x (target ≥ 1.8x on 2 cores: {'met' if ratio >= 1.8 else 'NOT met'})"
        + (" — quick run, not meaningful" if quick else ""),
        "  CPU s/sub: all processes, kernels included (per-notebook overhead; barely depends on other load)",
    ]
    return lines

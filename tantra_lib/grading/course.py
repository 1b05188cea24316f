"""A throw-away nbgrader course per lesson, built from ``solutions/`` and cached.

``tantra grade`` and ``tantra autograde`` need what ``nbgrader generate_assignment`` records in
a gradebook: the grade cells, their points, checksums and — because the source cells are
saved *before* the hidden tests are cleared — the hidden tests, which autograde's
``OverwriteCells`` puts back into every submission. :func:`lesson_course` builds that course
once per content of ``solutions/<lesson>`` (and of nbgrader_config.py) in the user's cache,
in-process through nbgrader's Python API, and returns its folder::

    <cache>/courses/<lesson>-<hash>/
        gradebook.db                 # assignment, notebook, grade cells, hidden tests
        source/<lesson>/...          # copy of solutions/<lesson>
        release/<lesson>/<lesson>.ipynb   # = the learner notebook (lessons/<lesson>/...)

Callers copy it (:func:`copy_course`) before grading into it, so the cache stays pristine.
``tantra_lib.lessons.generate`` uses the same builds for ``make lessons``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..lessons import REPO, SOLUTIONS, lesson_names
from .sandbox import shared_cache

__all__ = ["CourseError", "nbgrader_config", "lesson_course", "copy_course", "grade_cells", "find_lesson",
           "courses_root"]

COURSE_ID = "transformer-tantra"
_BUILD_VERSION = "1"  # bump when the layout of a cached course changes


class CourseError(Exception):
    """A lesson or course problem the user must fix (unknown lesson, broken solutions notebook)."""


def courses_root() -> Path:
    path = shared_cache() / "courses"
    path.mkdir(parents=True, exist_ok=True)
    return path


def nbgrader_config(root: Path, **extra):
    """The course's nbgrader_config.py, pointed at the course folder `root`."""
    from traitlets.config import Config, PyFileConfigLoader

    cfg = Config()
    project = REPO / "nbgrader_config.py"
    if project.exists():
        cfg.merge(PyFileConfigLoader(project.name, path=str(project.parent)).load_config())
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.source_directory = "source"
    cfg.CourseDirectory.release_directory = "release"
    cfg.CourseDirectory.submitted_directory = "submitted"
    cfg.CourseDirectory.autograded_directory = "autograded"
    cfg.CourseDirectory.feedback_directory = "feedback"
    cfg.CourseDirectory.course_id = COURSE_ID
    cfg.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    for key, value in extra.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _fingerprint(lesson: str) -> str:
    files = [p for p in sorted((SOLUTIONS / lesson).rglob("*")) if p.is_file()] + [REPO / "nbgrader_config.py"]
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists())
    return _fingerprint_of(lesson, stamp)


@functools.lru_cache(maxsize=64)
def _fingerprint_of(lesson: str, stamp: tuple) -> str:
    """The content hash of a lesson's sources (recomputed only when a file's mtime or size changes)."""
    import nbgrader

    h = hashlib.sha256()
    h.update(f"{_BUILD_VERSION}:{nbgrader.__version__}:{lesson}".encode())
    project = REPO / "nbgrader_config.py"
    if project.exists():
        h.update(project.read_bytes())
    src = SOLUTIONS / lesson
    for path in sorted(src.rglob("*")):
        if path.is_file() and ".ipynb_checkpoints" not in path.parts:
            h.update(str(path.relative_to(src)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _quiet(app) -> None:
    app.log.setLevel(logging.ERROR)


def _generate(root: Path, lesson: str) -> None:
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import capture_log

    cfg = nbgrader_config(root)
    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id = lesson
    app = GenerateAssignment(coursedir=coursedir, config=cfg)
    app.force = True
    app.create_assignment = True
    _quiet(app)
    result = capture_log(app)
    if not result["success"]:
        raise CourseError(f"nbgrader generate_assignment {lesson} failed:\n{result.get('log', '')}\n"
                          f"{result.get('error', '')}")


def lesson_course(lesson: str) -> Path:
    """The cached course folder of `lesson` (built on first use; safe against concurrent builds)."""
    if lesson not in lesson_names():
        known = ", ".join(lesson_names()) or "none"
        raise CourseError(f"unknown lesson {lesson!r} (known lessons: {known})")
    final = courses_root() / f"{lesson}-{_fingerprint(lesson)}"
    if (final / "gradebook.db").exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{lesson}-build-", dir=courses_root()))
    try:
        shutil.copytree(SOLUTIONS / lesson, tmp / "source" / lesson,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        _generate(tmp, lesson)
        try:
            os.rename(tmp, final)  # atomic: a concurrent build of the same content may have won
        except OSError:
            if not (final / "gradebook.db").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(lesson, keep=final)
    return final


def _prune(lesson: str, keep: Path) -> None:
    """Remove older builds of the same lesson (their solutions have changed since)."""
    for old in courses_root().glob(f"{lesson}-*"):
        if old != keep and old.is_dir() and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def copy_course(lesson: str, dest: Path) -> Path:
    """Copy the cached course of `lesson` to `dest` (gradebook and source only) and return it."""
    src = lesson_course(lesson)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "gradebook.db", dest / "gradebook.db")
    shutil.copytree(src / "source", dest / "source", dirs_exist_ok=True)
    return dest


def release_notebook(lesson: str) -> Path:
    """The learner notebook nbgrader generated for `lesson` (in the cached course)."""
    return lesson_course(lesson) / "release" / lesson / f"{lesson}.ipynb"


def grade_cells(lesson: str) -> list[dict]:
    """The lesson's grade cells in notebook order: [{"grade_id", "points", "solution_id"}].

    ``solution_id`` is the grade_id of the solution cell just before it (the exercise's code)."""
    return [dict(c) for c in _grade_cells(release_notebook(lesson))]


@functools.lru_cache(maxsize=64)
def _grade_cells(release: Path) -> tuple[dict, ...]:
    nb = json.loads(release.read_text(encoding="utf-8"))
    cells, last_solution = [], None
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and not meta.get("grade"):
            last_solution = meta.get("grade_id")
        if meta.get("grade"):
            cells.append({"grade_id": meta["grade_id"], "points": float(meta.get("points", 0)),
                          "solution_id": last_solution})
    return tuple(cells)


def find_lesson(path: Path, nb: dict | None = None) -> str | None:
    """Which lesson a notebook file belongs to: by its name, its folder, or its grade cells."""
    names = lesson_names()
    stem = path.stem
    for candidate in (stem, path.parent.name):
        if candidate in names:
            return candidate
    for name in names:  # "01_softmax-Copy1.ipynb", "01_softmax (1).ipynb", ...
        if stem.startswith(name):
            return name
    if nb is not None:
        ids = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])
               if isinstance(c, dict)}
        ids.discard(None)
        if ids:
            from ..checks import REGISTRY, _load_all

            _load_all()
            lessons = {REGISTRY[i[len("check_"):]].lesson for i in ids
                       if i.startswith("check_") and i[len("check_"):] in REGISTRY}
            lessons &= set(names)
            if len(lessons) == 1:
                return lessons.pop()
    return None

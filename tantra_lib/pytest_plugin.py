"""pytest on a learner's notebook: ``pytest --tantra lessons/01_softmax/01_softmax.ipynb``.

Registered through the ``pytest11`` entry point, so it is active wherever tantra_lib is
installed, but it only collects notebooks when ``--tantra`` is given (the course's own test
suite is not affected). For every exercise of a notebook (an nbgrader grade cell whose
grade_id is ``check_<name>``) it collects one item, ``01_softmax.ipynb::softmax``.

Running an item executes the learner's code the way a notebook would, in a fresh namespace
shared by the notebook's items: in order, up to that exercise's check cell, the code cells the
exercises need (the exercise cells and every cell that defines a name they use, transitively:
imports, set-up, helpers; not the demos and figures), tolerating cells that raise (like
``allow_errors``), with matplotlib on the Agg backend and IPython magics skipped. Then it runs
the visible part of that exercise's check cell in the namespace: the same ``tantra_lib.checks``
function the notebook and ``tantra check`` call, with its shortcut guard. So the verdict and
the hint are the same in all three places.

A failing item shows the check's message (the named mistake and the hint) in a few lines; the
traceback only with ``-v`` or ``--tb=long``. An exercise still at ``raise
NotImplementedError()`` is reported as "not attempted yet" (it still counts as not passed).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import linecache
import os
import re
import symtable
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr

__all__ = ["NotebookExercises", "ExerciseItem", "read_exercises", "visible_source", "strip_magics"]

_HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.M | re.S)
NOT_ATTEMPTED = "not attempted"  # the report category (shown as "3 not attempted" in the summary line)


# ----------------------------------------------------------------------------- reading notebooks


@dataclass
class Cell:
    index: int  # position among all the notebook's cells (0-based)
    source: str
    grade_id: str = ""
    is_test: bool = False  # an nbgrader grade cell that is not a solution cell (a check cell)


@dataclass
class NotebookExercises:
    path: Path
    cells: list[Cell]  # the code cells, in order
    exercises: dict[str, int] = field(default_factory=dict)  # exercise name -> index into `cells` of its check


def _nbgrader(cell: dict) -> dict:
    meta = cell.get("metadata") or {}
    nb = meta.get("nbgrader") if isinstance(meta, dict) else None
    return nb if isinstance(nb, dict) else {}


def read_exercises(path: Path) -> NotebookExercises:
    """The code cells of notebook `path` and its exercises (from the nbgrader metadata).

    Raises ValueError with a readable message when the file is not a notebook.
    """
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable notebook: {e}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path} is not a Jupyter notebook (no list of cells)")
    out = NotebookExercises(Path(path), [])
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        meta = _nbgrader(cell)
        grade_id = str(meta.get("grade_id", ""))
        is_test = bool(meta.get("grade")) and not meta.get("solution")
        out.cells.append(Cell(i, source, grade_id, is_test))
        if is_test and grade_id.startswith("check_") and len(grade_id) > len("check_"):
            out.exercises.setdefault(grade_id[len("check_"):], len(out.cells) - 1)
    return out


def visible_source(source: str) -> str:
    """A check cell without its ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` part."""
    return _HIDDEN.sub("", source)


_CELL_MAGIC_KEEP_BODY = {"time", "timeit", "capture", "prun"}


def strip_magics(source: str) -> str:
    """Python source for a cell: IPython line magics and shell escapes (``%matplotlib inline``,
    ``!pip ...``) become ``pass``; a cell magic (``%%time``) keeps its body when it is Python,
    otherwise (``%%bash``, ``%%html`` ...) the cell is skipped."""
    lines = source.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first.lstrip().startswith("%%"):
        magic = first.lstrip()[2:].split(maxsplit=1)[0] if first.lstrip()[2:].strip() else ""
        if magic not in _CELL_MAGIC_KEEP_BODY:
            return ""
        idx = lines.index(first)
        lines = lines[:idx] + [""] + lines[idx + 1:]
    out = []
    for ln in lines:
        s = ln.lstrip()
        timed = re.match(r"^%(time|timeit|prun)\s+(?!-)(.*)$", s)
        if timed:  # `%time stmt` runs stmt
            out.append(ln[: len(ln) - len(s)] + timed.group(2))
        elif s.startswith(("%", "!")) or re.match(r"^[A-Za-z_][\w.]*\s*=\s*[!%]", s):
            indent = ln[: len(ln) - len(s)]
            out.append(indent + "pass  # IPython magic skipped by pytest --tantra")
        elif s.startswith("?") or (s.endswith("?") and not s.startswith("#") and re.match(r"^[\w.]+\?+$", s)):
            out.append(ln[: len(ln) - len(s)] + "pass")
        else:
            out.append(ln)
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


# ----------------------------------------------------------------------------- which cells to run


def _names(source: str) -> tuple[set[str], set[str]] | None:
    """(global names a cell binds, global names it reads, also from inside its functions), or
    None when that cannot be told (a syntax error, ``from x import *``, ``exec``/``globals()``):
    such a cell always runs."""
    try:
        table = symtable.symtable(source, "<cell>", "exec")
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(tree)):
        return None
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    read: set[str] = set()

    def reads(t, module: bool) -> None:
        for sym in t.get_symbols():
            if sym.is_referenced() and (module or sym.is_global()):
                read.add(sym.get_name())
        for child in t.get_children():
            reads(child, False)

    reads(table, True)
    if read & {"exec", "eval", "globals", "get_ipython"}:
        return None
    return bound, read


def needed_cells(cells: list[Cell]) -> set[int]:
    """Indices (into `cells`) of the cells the exercises need: the exercise (solution) cells,
    the check cells, and every cell that binds a name one of those reads, transitively — the
    set-up cell's imports, a helper the learner wrote, an earlier exercise. Demos, figures and
    training runs that nothing needed reads are left out (they are what makes notebooks slow).
    """
    info = [_names(strip_magics(visible_source(c.source) if c.is_test else c.source)) for c in cells]
    needed = {i for i, c in enumerate(cells) if c.is_test or c.grade_id or info[i] is None}
    wanted: set[str] = set()
    while True:
        for i in needed:
            if info[i] is not None:
                wanted |= info[i][1]
        more = {i for i, names in enumerate(info) if i not in needed and names is not None and names[0] & wanted}
        if not more:
            return needed
        needed |= more


# ----------------------------------------------------------------------------- running notebooks


@dataclass
class CellError:
    cell: int  # the notebook's cell number (1-based, markdown cells included)
    summary: str  # "NameError: name 'x' is not defined"
    traceback: str
    grade_id: str = ""  # the exercise whose solution cell this is ("" for other cells)

    def where(self) -> str:
        return f"the exercise cell of `{self.grade_id}`" if self.grade_id else f"notebook cell {self.cell}"


class _Discard(io.TextIOBase):
    """Where a notebook cell's printed output goes (a cell printing 100 MB costs nothing)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def _summary(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"{type(e).__name__}: {e.msg} (line {e.lineno})"
    return traceback.format_exception_only(type(e), e)[-1].strip()


class NotebookRun:
    """The learner's code of one notebook, executed lazily cell by cell in one fresh namespace."""

    def __init__(self, nb: NotebookExercises):
        self.nb = nb
        self.namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
        self.done = 0  # cells[:done] have been executed (or skipped)
        self.errors: list[CellError] = []
        self.seconds = 0.0
        self.needed = needed_cells(nb.cells)

    def filename(self, cell: Cell) -> str:
        return f"<{self.nb.path.name} cell {cell.index + 1}>"

    def compile_cell(self, cell: Cell, source: str):
        name = self.filename(cell)
        # so tracebacks show the learner's lines, like IPython does for its cells
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        return compile(source, name, "exec")

    @contextlib.contextmanager
    def context(self):
        """Like a kernel started in the notebook's folder: cwd and sys.path[0] there, Agg backend."""
        old_cwd = os.getcwd()
        folder = str(self.nb.path.parent.resolve())
        os.environ.setdefault("MPLBACKEND", "Agg")
        if "matplotlib" in sys.modules:
            import matplotlib

            if matplotlib.get_backend().lower() != "agg":
                matplotlib.use("Agg", force=True)
        os.chdir(folder)
        sys.path.insert(0, folder)
        try:
            with warnings.catch_warnings():
                # what a kernel would show in the cell, not pytest's business
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
                warnings.filterwarnings("ignore", message=".*FigureCanvasAgg is non-interactive")
                yield
        finally:
            os.chdir(old_cwd)
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)

    def run_until(self, stop: int) -> None:
        """Execute the learner's cells before code cell `stop` that have not run yet."""
        start = time.perf_counter()
        with self.context():
            while self.done < stop:
                cell = self.nb.cells[self.done]
                self.done += 1
                if cell.is_test or (self.done - 1) not in self.needed:
                    continue  # check cells run only as their exercises' items; demos are not needed
                self._exec(cell, strip_magics(cell.source))
            self._close_figures()
        self.seconds += time.perf_counter() - start

    def _exec(self, cell: Cell, source: str) -> None:
        if not source.strip():
            return
        # The cell's printed output is the notebook's business (it would show under the cell),
        # not the test report's: keep it apart, like a kernel does.
        out = _Discard()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(self.compile_cell(cell, source), self.namespace)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: B036 — like allow_errors: note it and go on (SystemExit too)
            frames = traceback.extract_tb(e.__traceback__)[1:]  # drop this frame
            tb = "".join(traceback.format_list(frames) + traceback.format_exception_only(type(e), e))
            self.errors.append(CellError(cell.index + 1, _summary(e), tb, cell.grade_id))

    @staticmethod
    def _close_figures() -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close("all")

    def run_check(self, name: str):
        """Run the visible part of exercise `name`'s check cell; return its tantra_lib Result."""
        from tantra_lib.checks import CheckFailed, Result, _core

        index = self.nb.exercises[name]
        self.run_until(index)
        cell = self.nb.cells[index]
        source = strip_magics(visible_source(cell.source))
        self.done = max(self.done, index + 1)
        lesson = self.nb.path.stem
        where = f"cell {cell.index + 1}"
        # The results the check cell reports: a check cell that no longer checks (edited to
        # `pass`, say) must not count as passed. run_check reports through _core.report.
        reported = []
        original_report = _core.report

        def recording_report(result):
            reported.append(result)
            original_report(result)

        _core.report = recording_report
        try:
            with self.context():
                exec(self.compile_cell(cell, source), self.namespace)
        except CheckFailed as e:
            return e.result
        except NameError as e:
            missing = getattr(e, "name", None) or str(e)
            broken = [err for err in self.errors if err.grade_id == missing]
            if broken:
                message = f"`{missing}` is not defined: {broken[-1].where()} raised {broken[-1].summary}."
                hint = "Fix that error (the line is in the traceback: pytest -v), save, and run again."
            else:
                message = f"the check of `{name}` cannot run: {e}."
                hint = (f"Define `{missing}` in the exercise cell above the check cell (keep its name and "
                        "signature) and make sure that cell runs without an error.")
            return Result(name, lesson, passed=False, status="error", message=message, hint=hint,
                          details=_format_exc(e))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: B036 — a broken check cell is a failed exercise, not a crash
            return Result(name, lesson, passed=False, status="error",
                          message=f"the check cell of `{name}` ({where}) raised {_summary(e)}",
                          hint="Check cells must stay as they are in the lesson; restore it from a fresh copy.",
                          details=_format_exc(e))
        finally:
            _core.report = original_report
        mine = [r for r in reported if r.exercise == name]
        if not mine:
            return Result(name, lesson, passed=False, status="not_run",
                          message=f"the check cell of `{name}` ({where}) ran without checking `{name}` "
                                  "(was it edited?).",
                          hint=f"Restore the check cell from a fresh copy of the lesson: "
                               f"`check_{name}({name})` under its import.")
        return mine[-1]


def _format_exc(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.endswith("pytest_plugin.py")]
    return "".join(traceback.format_list(frames) + traceback.format_exception_only(type(e), e))


# ----------------------------------------------------------------------------- pytest hooks


def pytest_addoption(parser):
    group = parser.getgroup("tantra", "Transformer Tantra notebooks")
    group.addoption(
        "--tantra", action="store_true", default=False,
        help="collect the exercises of the given lesson notebooks (.ipynb) and run their checks "
             "(one test per exercise: NOTEBOOK.ipynb::name)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "tantra_exercise(name): an exercise of a lesson notebook (pytest --tantra)")
    if not config.getoption("tantra"):
        named = [a for a in config.args if str(a).split("::")[0].endswith(".ipynb")]
        if named:
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"{named[0]} is a notebook: add --tantra to run its exercises' checks "
                    "(pytest --tantra NOTEBOOK.ipynb)"),
                stacklevel=2,
            )


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".ipynb" and parent.config.getoption("tantra"):
        if ".ipynb_checkpoints" in file_path.parts:
            return None
        return NotebookFile.from_parent(parent, path=file_path)
    return None


class NotebookFile(pytest.File):
    """A lesson notebook: one item per exercise."""

    run: NotebookRun | None = None

    def collect(self):
        try:
            nb = read_exercises(self.path)
        except ValueError as e:
            raise self.CollectError(str(e)) from None
        if not nb.exercises:
            warnings.warn(
                pytest.PytestWarning(f"{self.path.name}: no exercises found (no nbgrader grade cell "
                                     "with a grade_id check_<name>)"),
                stacklevel=1,
            )
        self.notebook = nb
        for name in sorted(nb.exercises, key=nb.exercises.get):
            yield ExerciseItem.from_parent(self, name=name, exercise=name)
        for name in self.missing_exercises(nb):
            yield MissingExerciseItem.from_parent(self, name=name, exercise=name)

    def missing_exercises(self, nb: NotebookExercises) -> list[str]:
        """Exercises of the course's lesson of that name whose check cell this notebook lacks."""
        from tantra_lib.lessons import LESSONS

        lesson = LESSONS / self.path.stem / self.path.name
        try:
            if not lesson.is_file() or lesson.resolve() == self.path.resolve():
                return []
            course = read_exercises(lesson)
        except (OSError, ValueError):
            return []
        return [name for name in sorted(course.exercises, key=course.exercises.get) if name not in nb.exercises]

    def notebook_run(self) -> NotebookRun:
        if self.run is None:
            self.run = NotebookRun(self.notebook)
        return self.run

    def teardown(self):
        self.run = None  # free the namespace (tensors, models) once the notebook's items are done


class ExerciseFailed(AssertionError):
    """The exercise's check did not pass; carries the tantra_lib Result."""

    def __init__(self, result, cell_errors):
        super().__init__(result.line())
        self.result = result
        self.cell_errors = cell_errors


class ExerciseItem(pytest.Item):
    def __init__(self, *, exercise: str, **kwargs):
        super().__init__(**kwargs)
        self.exercise = exercise
        self.add_marker(pytest.mark.tantra_exercise(exercise))
        self.result = None

    def runtest(self):
        run = self.parent.notebook_run()
        self.result = run.run_check(self.exercise)
        if not self.result.passed:
            raise ExerciseFailed(self.result, list(run.errors))

    def reportinfo(self):
        return self.path, None, self.exercise  # (no dots: pytest turns them into "::" in -v lines)

    def repr_failure(self, excinfo, style=None):
        if not isinstance(excinfo.value, ExerciseFailed):
            return super().repr_failure(excinfo, style=style)
        verbose = self.config.getoption("verbose", 0) > 0 or self.config.getoption("tbstyle", "auto") == "long"
        return ExerciseRepr(excinfo.value.result, excinfo.value.cell_errors, verbose, str(self.path))


class MissingExerciseItem(ExerciseItem):
    """An exercise of the lesson whose check cell is not in the notebook (deleted?)."""

    def runtest(self):
        from tantra_lib.checks import Result

        self.result = Result(
            self.exercise, self.path.stem, passed=False, status="missing",
            message=f"the check cell `check_{self.exercise}` is missing from the notebook (deleted?), so "
                    f"`{self.exercise}` cannot be checked.",
            hint="Copy the check cell back from a fresh copy of the lesson notebook.")
        raise ExerciseFailed(self.result, [])


class ExerciseRepr(TerminalRepr):
    """What a failing exercise shows: a few lines, the traceback only when verbose.

    Duck-types pytest's TerminalRepr (``toterminal``) and carries ``reprcrash`` so the short
    summary line (``FAILED …::softmax - <message>``) names the mistake too.
    """

    def __init__(self, result, cell_errors, verbose: bool, path: str):
        self.result = result
        self.cell_errors = cell_errors
        self.verbose = verbose
        first = (result.message or result.status).splitlines()[0]
        label = "not attempted yet" if result.status == "not_attempted" else first
        self.reprcrash = ReprFileLocation(path, 0, label)

    def lines(self) -> list[tuple[str, dict]]:
        r = self.result
        title = {"not_attempted": "not attempted yet", "shortcut": "shortcut used", "error": "error",
                 "missing": "check cell missing", "not_run": "not checked"}.get(r.status, "not right yet")
        out = [(f"✗ {r.exercise} — {title}", {"red": True, "bold": True})]
        for ln in (r.message or "").splitlines():
            out.append((f"  {ln}", {}))
        if r.hint:
            out.append((f"  Hint: {r.hint}", {"yellow": True}))
        notes = [err for err in self.cell_errors if err.summary not in (r.message or "")]
        if notes and r.status != "not_attempted":
            for err in notes[:3]:
                out.append((f"  Note: {err.where()} (cell {err.cell}) raised {err.summary}", {}))
            if len(notes) > 3:
                out.append((f"  Note: {len(notes) - 3} more cells raised errors", {}))
        if self.verbose:
            if r.details:
                out.append(("", {}))
                out.append(("Traceback of the check:", {"bold": True}))
                out += [(ln, {}) for ln in r.details.rstrip().splitlines()]
            for err in self.cell_errors:
                out.append(("", {}))
                out.append((f"{err.where()[0].upper()}{err.where()[1:]} (cell {err.cell}) raised:", {"bold": True}))
                out += [(ln, {}) for ln in err.traceback.rstrip().splitlines()]
        elif r.details or self.cell_errors:
            out.append(("  (the traceback: pytest -v or --tb=long)", {"light": True}))
        return out

    def toterminal(self, tw) -> None:
        for text, markup in self.lines():
            tw.line(text, **markup)

    def __str__(self) -> str:
        return "\n".join(text for text, _ in self.lines())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if isinstance(item, ExerciseItem) and report.when == "call":
        result = item.result
        status = result.status if result is not None else ("failed" if report.failed else "passed")
        report.tantra_status = status
        report.user_properties.append(("tantra_status", status))
    return report


def pytest_report_teststatus(report, config):
    if getattr(report, "tantra_status", None) == "not_attempted" and report.when == "call":
        return NOT_ATTEMPTED, "N", ("NOT ATTEMPTED", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reports = terminalreporter.stats.get(NOT_ATTEMPTED, [])
    if not reports:
        return
    terminalreporter.section("not attempted yet", sep="-", yellow=True)
    for rep in reports:
        terminalreporter.line(f"{rep.nodeid}: still raises NotImplementedError")
    terminalreporter.line("Replace `raise NotImplementedError()` in those exercise cells with your code, "
                          "save the notebook, and run pytest again.")

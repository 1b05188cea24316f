"""Executing a learner's notebook safely: nbgrader's Execute preprocessor, with limits.

:class:`SandboxExecute` is what both ``tantra check`` (directly) and nbgrader's autograde
(as the first of its ``Autograde.autograde_preprocessors``) run. On top of nbgrader's
``Execute`` it

* starts the kernel in a :class:`~tantra_lib.grading.sandbox.Sandbox` (own folder holding
  only a copy of the submission, scrubbed environment, memory limit, write guard);
* limits each cell (``timeout``) and the whole notebook (``notebook_timeout``); a cell that
  runs too long is interrupted and gets the error ``timed out after 30 s in cell 7``; a
  kernel that ignores the interrupt is killed;
* survives a kernel that dies (``os._exit``, ``exit()``, a signal, running out of memory):
  the cell gets a message saying so and every later cell an error "not run: ...", so nbgrader
  gives their grade cells 0 instead of full marks for a cell with no output;
* keeps at most ``max_output_bytes`` of output per cell (a 100 MB print costs nothing).

Every message it adds is an ``error`` output with ``ename`` in :data:`SANDBOX_ERRORS`.
"""

from __future__ import annotations

import math
import signal
import time

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from traitlets import Float, Instance, Integer, List, Unicode

from .sandbox import Limits, Sandbox, SandboxKernelManager, default_hidden

__all__ = ["SandboxExecute", "SANDBOX_ERRORS", "execute_notebook", "cell_label"]

#: ``ename`` of the error outputs the sandbox writes (timeouts, dead kernel, cells not run).
SANDBOX_ERRORS = ("TimeoutError", "KernelDied", "NotRun")


def cell_label(index: int) -> str:
    """How messages name a cell: 1-based, counting every cell of the notebook."""
    return f"cell {index + 1}"


def _error(ename: str, message: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=message, traceback=[f"{ename}: {message}"])


def _seconds(s: float) -> str:
    return f"{s:g} s" if s < 10 else f"{round(s)} s"


class SandboxExecute(Execute):
    """nbgrader's Execute with a sandboxed kernel, a notebook time limit and output limits."""

    notebook_timeout = Float(900.0, allow_none=True,
                             help="seconds the whole notebook may run (None: no limit)").tag(config=True)
    memory_mb = Integer(None, allow_none=True,
                        help="address-space limit of the kernel in MiB (None: the default, 0: none)").tag(config=True)
    max_output_bytes = Integer(200_000, help="output text kept per cell").tag(config=True)
    hidden_paths = List(Unicode(), help="more folders the kernel may not read (e.g. the grader's course copy, "
                                        "which holds the hidden tests)").tag(config=True)
    sandbox = Instance(Sandbox, allow_none=True)

    def __init__(self, **kw):
        kw.setdefault("kernel_manager_class", SandboxKernelManager)
        super().__init__(**kw)
        self.kernel_manager_class = SandboxKernelManager
        self._cell_bytes = 0
        self._current_timeout = None

    # -- kernel --------------------------------------------------------------------------
    def create_kernel_manager(self):
        self.kernel_name = "python3"  # the sandbox launcher is a Python kernel, whatever the notebook names
        km = super().create_kernel_manager()
        if isinstance(km, SandboxKernelManager):
            km.sandbox = self.sandbox
        return km

    def _limits(self) -> Limits:
        return Limits(cell_timeout=self.timeout, notebook_timeout=self.notebook_timeout, memory_mb=self.memory_mb,
                      max_output_bytes=self.max_output_bytes)

    # -- the run -------------------------------------------------------------------------
    def preprocess(self, nb: NotebookNode, resources=None, km=None):
        resources = resources if resources is not None else {}
        name = (resources.get("metadata") or {}).get("name") or "notebook"
        with Sandbox(limits=self._limits(), hidden=default_hidden() + list(self.hidden_paths)) as box:
            import nbformat

            box.put(f"{name}.ipynb", nbformat.writes(nb))
            resources.setdefault("metadata", {})["path"] = str(box.work)
            self.sandbox = box
            try:
                return self._run(nb, resources, km)
            finally:
                self.sandbox = None

    def _run(self, nb, resources, km):
        from nbclient import NotebookClient

        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        self._stopped: str | None = None  # why the remaining cells are not run
        if self.km is None:
            self._start_kernel()
        with self.setup_kernel():  # starts the kernel unless _start_kernel did; shuts it down at the end
            assert self.kc is not None
            info = self.wait_for_reply(self.kc.kernel_info())
            if info is not None:
                self.nb.metadata["language_info"] = info["content"]["language_info"]
            self._started = time.monotonic()  # the notebook's clock starts once its kernel is up
            for index, cell in enumerate(self.nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                if self._stopped is None and self._time_left() is not None and self._time_left() <= 0:
                    self._stopped = (f"the notebook used up its time limit of {_seconds(self.notebook_timeout)} "
                                     f"before {cell_label(index)}")
                if self._stopped is not None:
                    cell.outputs = [_error("NotRun", f"not run: {self._stopped}.")]
                    cell.execution_count = None
                    continue
                self._run_cell(cell, index, resources)
        self.set_widgets_metadata()
        return self.nb, self.resources

    def _start_kernel(self) -> None:
        """Start the kernel and its client. A kernel forked from a zygote that does not come up
        is replaced by one started the normal way: a failed fork must not cost a learner marks."""
        self.km = km = self.create_kernel_manager()
        try:
            self.start_new_kernel()
            self.start_new_kernel_client()
        except Exception:
            if not getattr(km, "forked", False):
                raise
            if self.km is not None:  # start_new_kernel_client cleans up after itself, start_new_kernel does not
                self._cleanup_kernel()
            self.log.warning("a kernel forked from the zygote did not start; starting one from scratch")
            self.km = self.create_kernel_manager()
            self.km.use_zygote = False
            self.start_new_kernel()
            self.start_new_kernel_client()

    def _time_left(self) -> float | None:
        if not self.notebook_timeout:
            return None
        return self.notebook_timeout - (time.monotonic() - self._started)

    def _cell_timeout(self) -> tuple[float | None, bool]:
        """(seconds this cell may run, whether the notebook's limit is the tighter one)."""
        per_cell = self.timeout if self.timeout and self.timeout > 0 else None
        left = self._time_left()
        if left is None:
            return per_cell, False
        left = max(1.0, left)
        if per_cell is None or left < per_cell:
            return left, True
        return per_cell, False

    def _get_timeout(self, cell):
        return self._current_timeout

    def _run_cell(self, cell, index, resources):
        timeout, notebook_limit = self._cell_timeout()
        self._current_timeout = timeout
        if notebook_limit:
            message = (f"stopped in {cell_label(index)}: the notebook reached its time limit of "
                       f"{_seconds(self.notebook_timeout)}")
        else:
            message = f"timed out after {_seconds(timeout or 0)} in {cell_label(index)}"
        self.error_on_timeout = {"ename": "TimeoutError", "evalue": message, "traceback": [f"TimeoutError: {message}"]}
        self._cell_bytes = 0
        try:
            self.preprocess_cell(cell, resources, index)
        except DeadKernelError:
            why = self._death_reason()
            cell.outputs = list(cell.get("outputs", []))
            cell.outputs.append(_error("KernelDied", f"the kernel died while running {cell_label(index)}: {why}."))
            self._stopped = f"the kernel died in {cell_label(index)}"
        except CellTimeoutError:
            # the kernel did not answer the interrupt (e.g. it swallows KeyboardInterrupt): kill it
            self._kill_kernel()
            cell.outputs = [o for o in cell.get("outputs", []) if o.get("ename") != "KeyboardInterrupt"]
            cell.outputs.append(_error("TimeoutError", message + " (the kernel did not stop when interrupted, "
                                                                  "so it was shut down)"))
            self._stopped = f"the kernel was shut down after a time-out in {cell_label(index)}"
        else:
            if any(o.get("output_type") == "error" and o.get("ename") == "TimeoutError" for o in cell.outputs):
                # the interrupt's own KeyboardInterrupt traceback only repeats what the time-out says
                cell.outputs = [o for o in cell.outputs if o.get("ename") != "KeyboardInterrupt"]

    def _death_reason(self) -> str:
        code = None
        try:
            proc = getattr(self.km.provisioner, "process", None)
            code = proc.poll() if proc is not None else None
        except Exception:
            pass
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            extra = " (out of memory?)" if sig == "SIGKILL" else ""
            return f"the process was killed by {sig}{extra}"
        if code is not None:
            return f"its Python process exited with status {code} (does the code call os._exit() or exit()?)"
        return "the Python process ended (exit(), os._exit(), a signal, or out of memory)"

    def _kill_kernel(self) -> None:
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # -- outputs -------------------------------------------------------------------------
    def output(self, outs, msg, display_id, cell_index):
        """Keep at most max_output_bytes of printed text per cell; drop the rest with one note.

        Errors and the checks' result bundles are always kept; other rich outputs larger than
        the limit are reduced to a note."""
        limit = self.max_output_bytes
        content = msg.get("content", {})
        if limit and limit > 0 and msg["msg_type"] == "stream":
            text = content.get("text", "")
            used = self._cell_bytes
            self._cell_bytes += len(text)
            if used >= limit:
                return None
            if used + len(text) > limit:
                content["text"] = text[: limit - used] + f"\n... output truncated (more than {limit} characters) ...\n"
        elif limit and limit > 0 and msg["msg_type"] in ("display_data", "execute_result"):
            data = content.get("data") or {}
            from ..checks import MIME_TYPE

            if MIME_TYPE not in data and sum(len(str(v)) for v in data.values()) > limit:
                plain = str(data.get("text/plain", ""))[:1000]
                content["data"] = {"text/plain": plain + f"\n... output truncated (more than {limit} characters) ..."}
                content["metadata"] = {}
        return super().output(outs, msg, display_id, cell_index)


def execute_notebook(nb: NotebookNode, name: str, limits: Limits | None = None) -> NotebookNode:
    """Execute `nb` (modified in place) in a sandboxed kernel with errors allowed; return it."""
    limits = limits or Limits()
    ep = SandboxExecute(timeout=math.ceil(limits.cell_timeout) if limits.cell_timeout else None,
                        notebook_timeout=limits.notebook_timeout, memory_mb=limits.memory_mb,
                        max_output_bytes=limits.max_output_bytes, allow_errors=True)
    ep.preprocess(nb, {"metadata": {"name": name}})
    return nb

"""Where learner code runs while it is graded: a kernel process with limits.

Every notebook that ``tantra check``, ``tantra grade`` or ``tantra autograde`` executes runs in
its own kernel, started by :class:`SandboxKernelManager` through ``_kernel.py`` instead of the
usual ``ipykernel_launcher``:

* **working folder**: a fresh temporary folder whose ``work/`` subfolder (the kernel's cwd)
  holds only a copy of the submission; ``home/`` and ``tmp/`` next to it are HOME and TMPDIR;
* **environment**: built from scratch — PATH, locale, the course's switches (``TANTRA_QUICK``,
  ``TANTRA_DEVICE``, ``MPLBACKEND`` ...), one torch/BLAS thread; nothing else of the grader's
  environment, so no path to ``solutions/``, the course folder or the gradebook;
* **memory**: an address-space limit (``RLIMIT_AS``, default :data:`DEFAULT_MEMORY_MB`), so
  a 50 GB allocation fails with MemoryError instead of taking the machine down;
* **files**: an audit hook refuses writes outside the sandbox folder and reads of the hidden
  folders (``solutions/``, the course and gradebook folders); written files are capped in size;
* **time** and **output** limits are enforced from the outside by
  :class:`tantra_lib.grading.execute.SandboxExecute`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Any as AnyTrait

__all__ = ["DEFAULT_MEMORY_MB", "Limits", "Sandbox", "SandboxKernelManager", "kernel_env", "shared_cache"]

#: Default address-space limit of a grading kernel, in MiB (torch alone maps ~1.5 GiB).
DEFAULT_MEMORY_MB = 4096
#: Environment variables passed on to the kernel unchanged (when the grader has them).
PASS_ENV = ("TANTRA_QUICK", "TANTRA_DEVICE", "MPLBACKEND", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "CUDA_VISIBLE_DEVICES", "LANG", "LC_ALL", "TZ")
_LAUNCHER = Path(__file__).resolve().with_name("_kernel.py")


def shared_cache() -> Path:
    """A per-user cache folder for tantra's grading (course builds, matplotlib's font list)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "tantra"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _has_gpu() -> bool:
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")


@dataclass
class Limits:
    """What a grading kernel may use. ``None`` times mean no limit."""

    cell_timeout: float | None = 120.0  # seconds per cell
    notebook_timeout: float | None = 900.0  # seconds for the whole notebook
    memory_mb: int | None = None  # address space; None = DEFAULT_MEMORY_MB (no limit on a GPU machine), 0 = none
    max_output_bytes: int = 200_000  # text kept per cell; the rest is dropped with a note
    max_file_mb: int = 256  # largest file the learner's code may write

    def memory_bytes(self) -> int:
        mb = self.memory_mb
        if mb is None:
            mb = 0 if _has_gpu() else DEFAULT_MEMORY_MB  # CUDA maps far more address space than it uses
        return int(mb) * 2**20


def kernel_env(home: Path, tmp: Path) -> dict[str, str]:
    """The whole environment of a grading kernel (nothing else leaks in)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(shared_cache() / "matplotlib"),
        "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local" / "share" / "jupyter" / "runtime"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in PASS_ENV:
        if os.environ.get(name):
            env[name] = os.environ[name]
    (shared_cache() / "matplotlib").mkdir(parents=True, exist_ok=True)
    return env


def default_hidden() -> list[str]:
    """Folders learner code may not read: the course's solutions and tantra's course builds."""
    from ..lessons import SOLUTIONS

    return [str(SOLUTIONS), str(shared_cache() / "courses")]


@dataclass
class Sandbox:
    """A temporary folder for one notebook execution (use as a context manager)."""

    limits: Limits = field(default_factory=Limits)
    hidden: list[str] = field(default_factory=default_hidden)
    root: Path | None = None

    def __enter__(self) -> Sandbox:
        self.root = Path(tempfile.mkdtemp(prefix="tantra-sandbox-"))
        for sub in ("work", "home", "tmp"):
            (self.root / sub).mkdir()
        return self

    def __exit__(self, *exc) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def work(self) -> Path:
        assert self.root is not None, "use the Sandbox as a context manager"
        return self.root / "work"

    def put(self, filename: str, text: str) -> Path:
        """Write the copy of the submission the kernel sees in its working folder."""
        path = self.work / os.path.basename(filename)
        path.write_text(text, encoding="utf-8")
        return path

    def policy_file(self) -> Path:
        """Write the kernel's policy (read and deleted by _kernel.py before any learner code runs)."""
        assert self.root is not None
        fd, name = tempfile.mkstemp(prefix="policy-", suffix=".json", dir=self.root / "tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({
                "memory_bytes": self.limits.memory_bytes(),
                "max_file_bytes": int(self.limits.max_file_mb) * 2**20,
                "writable": [str(self.root), "/dev/null", "/dev/shm"],
                "hidden": [h for h in self.hidden if h],
            }, f)
        return Path(name)

    def env(self) -> dict[str, str]:
        assert self.root is not None
        return kernel_env(self.root / "home", self.root / "tmp")


class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that starts the kernel through _kernel.py inside a Sandbox."""

    sandbox = AnyTrait(None, allow_none=True)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        if self.sandbox is None:
            return super().format_kernel_cmd(extra_arguments)
        policy = self.sandbox.policy_file()
        return [sys.executable, "-I", str(_LAUNCHER), str(policy), "-f", os.path.realpath(self.connection_file),
                *(extra_arguments or [])]

    async def _async_pre_start_kernel(self, **kw):
        if self.sandbox is not None:
            kw["env"] = self.sandbox.env()
            kw["cwd"] = str(self.sandbox.work)
            # the kernel's own start-up chatter (and anything learner code writes to the raw file
            # descriptors) is not part of the notebook's output
            kw.setdefault("stdout", subprocess.DEVNULL)
            kw.setdefault("stderr", subprocess.DEVNULL)
        return await super()._async_pre_start_kernel(**kw)

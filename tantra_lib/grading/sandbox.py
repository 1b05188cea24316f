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

Grading a class starts one kernel per submission, and each would spend about 2 s importing
torch and friends. Inside :func:`use_zygote`, kernels are instead forked from a
:class:`Zygote`: a process that imported those modules once and never runs learner code. A
forked kernel then applies the same folder, environment, limits and audit hook as a freshly
started one (see ``_kernel.py``). Where forking is not possible (not Linux, the zygote failed
to start) kernels are started the normal way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Any as AnyTrait
from traitlets import Bool

__all__ = ["DEFAULT_MEMORY_MB", "Limits", "Sandbox", "SandboxKernelManager", "Zygote", "kernel_env", "shared_cache",
           "use_zygote", "PRELOAD"]

#: Default address-space limit of a grading kernel, in MiB (torch alone maps ~1.5 GiB).
DEFAULT_MEMORY_MB = 4096
#: Environment variables passed on to the kernel unchanged (when the grader has them).
PASS_ENV = ("TANTRA_QUICK", "TANTRA_DEVICE", "MPLBACKEND", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "CUDA_VISIBLE_DEVICES", "LANG", "LC_ALL", "TZ")
_LAUNCHER = Path(__file__).resolve().with_name("_kernel.py")
#: Modules a kernel zygote imports before forking kernels: what every lesson's first cell imports.
PRELOAD = ("numpy", "torch", "torch.nn.functional", "matplotlib", "matplotlib.pyplot", "tantra_lib",
           "tantra_lib.checks")


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


class ForkedKernel:
    """The part of :class:`subprocess.Popen` jupyter_client uses, for a kernel forked by a Zygote.

    The zygote is the kernel's parent, so it collects the exit status and writes it to a file."""

    def __init__(self, pid: int, status_file: Path):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._status_file = status_file

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = int(self._status_file.read_text())
                self._status_file.unlink(missing_ok=True)
            except (FileNotFoundError, ValueError):
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:  # gone without a status: its zygote died first
                    self.returncode = -9
                except PermissionError:
                    pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """A process that has imported `preload` and forks sandboxed kernels on request.

    It starts importing at once (in the background); :meth:`spawn` waits for it the first
    time. Use :func:`use_zygote` rather than this class directly."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, start_timeout: float = 120.0):
        self.root = Path(tempfile.mkdtemp(prefix="tantra-zygote-"))
        for sub in ("home", "tmp", "status"):
            (self.root / sub).mkdir()
        self.start_timeout = start_timeout
        self.failed = ""  # why it cannot be used ("" while it can)
        self._ready = False
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(_LAUNCHER), "--zygote", str(self.root / "status"), *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=self.root / "tmp",
            env=kernel_env(self.root / "home", self.root / "tmp"))

    def _read_reply(self, timeout: float) -> dict:
        import select

        out = self.proc.stdout
        readable, _, _ = select.select([out], [], [], timeout)
        line = out.readline() if readable else b""
        if not line:
            raise RuntimeError("the kernel zygote did not answer" if not readable else "the kernel zygote stopped")
        return json.loads(line)

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str) -> ForkedKernel | None:
        """Fork a kernel running `argv` (``_kernel.py POLICY -f CONNECTION``); None if the zygote
        cannot (the caller then starts the kernel normally)."""
        with self._lock:
            if self.failed:
                return None
            try:
                if not self._ready:
                    hello = self._read_reply(self.start_timeout)
                    if not hello.get("ready"):
                        raise RuntimeError(f"the kernel zygote cannot fork safely: {hello.get('why')}")
                    self._ready = True
                self.proc.stdin.write((json.dumps({"argv": argv, "env": env, "cwd": cwd}) + "\n").encode())
                self.proc.stdin.flush()
                reply = self._read_reply(30.0)
                if "pid" not in reply:
                    raise RuntimeError(reply.get("error", "no pid"))
            except (OSError, RuntimeError, ValueError) as e:
                self.failed = str(e)
                self.close()
                return None
            return ForkedKernel(int(reply["pid"]), self.root / "status" / str(reply["pid"]))

    def close(self) -> None:
        """Stop the zygote (it kills any kernel still running) and remove its folder."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


_zygote: Zygote | None = None


@contextmanager
def use_zygote(enabled: bool = True, preload: tuple[str, ...] = PRELOAD):
    """Within this block, sandboxed kernels of this process are forked from one Zygote.

    Only on Linux (forking after importing torch elsewhere, e.g. macOS frameworks, is unsafe);
    with ``enabled=False`` or elsewhere, the block changes nothing."""
    global _zygote
    if not enabled or not sys.platform.startswith("linux") or _zygote is not None:
        yield None
        return
    _zygote = Zygote(preload)
    try:
        yield _zygote
    finally:
        zygote, _zygote = _zygote, None
        zygote.close()


class SandboxKernelManager(AsyncKernelManager):
    """An AsyncKernelManager that starts the kernel through _kernel.py inside a Sandbox."""

    sandbox = AnyTrait(None, allow_none=True)
    use_zygote = Bool(True, help="fork the kernel from this process's Zygote when there is one")
    forked = Bool(False, help="whether the running kernel was forked from a Zygote")

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

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        zygote = _zygote if self.use_zygote else None
        self.forked = False
        if (zygote is not None and self.sandbox is not None and self.provisioner is not None
                and kernel_cmd[:3] == [sys.executable, "-I", str(_LAUNCHER)]):
            proc = zygote.spawn(kernel_cmd[2:], env=dict(kw.get("env") or {}), cwd=str(kw.get("cwd")))
            if proc is not None:
                prov = self.provisioner
                # what LocalProvisioner.launch_kernel records; the kernel leads its own process group
                prov.process, prov.pid, prov.pgid, prov.cwd = proc, proc.pid, proc.pid, kw.get("cwd")
                self._reconcile_connection_info(prov.connection_info)
                self.forked = True
                return
        await super()._async_launch_kernel(kernel_cmd, **kw)

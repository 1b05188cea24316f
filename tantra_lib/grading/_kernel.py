"""The sandboxed kernel's entry point (run as a script: ``python -I _kernel.py POLICY -f CONNECTION``).

Started by ``tantra_lib.grading.sandbox.SandboxKernelManager`` instead of ``ipykernel_launcher``.
It reads the policy file the grader wrote (then deletes it, so learner code cannot read it),
limits the process's address space and file sizes, starts the IPython kernel, and before the
first cell runs installs an audit hook that

* refuses to open for writing, create, remove, rename or change anything outside the allowed
  folders (the sandbox's own temporary folder, /dev/null, /dev/shm);
* refuses to read anything under the hidden folders (the course's solutions/ and gradebook);
* refuses to start other programs (they would not be bound by the hook).

Only the standard library and ipykernel are imported here, so starting a kernel costs no
more than a plain ``ipykernel_launcher``.

``python -I _kernel.py --zygote STATUS_DIR MODULE...`` runs a *kernel zygote* instead (used by
``tantra autograde``, which starts one kernel per submission): it imports the MODULEs every
lesson needs (torch, matplotlib, tantra_lib ...) once, then forks a kernel per request read
from its stdin. Each forked kernel becomes exactly what the normal start makes (own session,
the sandbox's folder, environment, limits and audit hook, applied before any learner code
runs) but skips the ~2 s of imports. The zygote never runs learner code; it writes each
kernel's exit status to STATUS_DIR/<pid> so the grader can tell how a kernel died.

The audit hook guards against accidents and casual tampering from Python code; it is not an
operating-system sandbox (code using ctypes could get past it), so grade classes you do not
trust inside a container as well.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit events whose first argument(s) are paths that get changed
_PATH_EVENTS = {
    "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.utime": 1,
    "os.truncate": 1, "os.rename": 2, "os.symlink": 2, "os.link": 2, "shutil.rmtree": 1,
    "shutil.copyfile": 2, "shutil.copytree": 2, "shutil.move": 2, "os.chflags": 1, "os.lchflags": 1,
    "os.setxattr": 1, "os.removexattr": 1,
}
_READ_EVENTS = {"os.listdir": 1, "os.scandir": 1, "glob.glob": 1, "os.walk": 1}
_PROGRAM_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "pty.spawn"}


def _real(path) -> str | None:
    if isinstance(path, int) or path is None:
        return None  # a file descriptor: it was checked when it was opened
    try:
        path = os.fsdecode(path)
    except TypeError:
        return None
    return os.path.realpath(path)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def install_audit_hook(writable: tuple[str, ...], hidden: tuple[str, ...]) -> None:
    writable = tuple(os.path.realpath(p) for p in writable)
    hidden = tuple(os.path.realpath(p) for p in hidden)

    def refuse_write(path: str):
        raise PermissionError(f"grading sandbox: writing outside the notebook's folder is not allowed ({path})")

    def check_read(path: str):
        if hidden and _under(path, hidden):
            raise PermissionError(f"grading sandbox: reading the course's private files is not allowed ({path})")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path = _real(args[0])
            if path is None:
                return
            mode, flags = (args[1] or ""), (args[2] or 0)
            check_read(path)
            if (any(c in mode for c in "wax+") or flags & _WRITE_FLAGS) and not _under(path, writable):
                refuse_write(path)
        elif event in _PATH_EVENTS:
            for arg in args[: _PATH_EVENTS[event]]:
                path = _real(arg)
                if path is not None:
                    check_read(path)
                    if not _under(path, writable):
                        refuse_write(path)
        elif event in _READ_EVENTS:
            path = _real(args[0]) if args else None
            if path is not None:
                check_read(path)
        elif event in _PROGRAM_EVENTS:
            raise PermissionError("grading sandbox: starting other programs is not allowed")

    sys.addaudithook(hook)


def _warm_matplotlib_cache() -> None:
    """Build matplotlib's font cache once (in a shared folder the kernel may only read)."""
    folder = os.environ.get("MPLCONFIGDIR")
    if not folder:
        return
    try:
        if any(name.startswith("fontlist") for name in os.listdir(folder)):
            return
        import matplotlib.font_manager  # noqa: F401  (writes the cache)
    except Exception:  # no matplotlib, or the folder is not writable: the kernel still works
        pass


def main(argv: list[str]) -> None:
    policy_path = argv[1]
    with open(policy_path, encoding="utf-8") as f:
        policy = json.load(f)
    os.unlink(policy_path)
    del argv[1]

    memory = int(policy.get("memory_bytes") or 0)
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    file_size = int(policy.get("max_file_bytes") or 0)
    if file_size > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write raises OSError instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _warm_matplotlib_cache()

    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(argv[1:])
    install_audit_hook(tuple(policy.get("writable", ())), tuple(policy.get("hidden", ())))
    app.start()


# ----------------------------------------------------------------------------- the zygote


def _fork_hazard() -> str:
    """Why forking this process would be unsafe ("" if it is safe)."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = 1
    if threads > 1:
        return f"{threads} threads are running"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised"
    return ""


def _become_kernel(request: dict) -> None:
    """In a freshly forked child: turn into the kernel a normal start would have made."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it; a kernel is interrupted by it
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # also closes the zygote's pipes, so learner code cannot talk to it
        os.dup2(null, fd)
    os.close(null)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["JPY_PARENT_PID"] = str(os.getppid())
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # re-read TMPDIR
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()  # fresh entropy, as a new process would have (random does this itself)
    sys.argv = list(request["argv"])
    main(sys.argv)


def _spawn(request: dict) -> dict:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the kernel
        code = 1
        try:
            os.close(ready_r)
            os.setsid()  # its own process group: interrupts and kills reach it and its children only
            os.write(ready_w, b"1")
            os.close(ready_w)
            _become_kernel(request)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            try:
                import atexit

                atexit._run_exitfuncs()
            finally:
                os._exit(code)
    os.close(ready_w)
    os.read(ready_r, 1)  # wait for setsid, so the grader never signals the zygote's group
    os.close(ready_r)
    return {"pid": pid}


def _reap(status_dir: str, children: set[int]) -> None:
    """Collect finished kernels; write each one's status as subprocess.Popen.returncode would be."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)  # -N for "killed by signal N"
        tmp = os.path.join(status_dir, f".{pid}")
        with open(tmp, "w") as f:
            f.write(str(code))
        os.replace(tmp, os.path.join(status_dir, str(pid)))


def zygote(status_dir: str, preload: list[str]) -> None:
    import importlib
    import select

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the grader's business; it closes our stdin
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (the kernel imports it itself, or reports the error)
            pass
    import ipykernel.kernelapp  # noqa: F401

    unsafe = _fork_hazard()
    out = sys.stdout.fileno()
    os.write(out, (json.dumps({"ready": not unsafe, "why": unsafe}) + "\n").encode())
    if unsafe:
        return
    children: set[int] = set()
    buffer = b""
    stdin = sys.stdin.fileno()
    try:
        while True:
            _reap(status_dir, children)
            readable, _, _ = select.select([stdin], [], [], 0.05 if children else 1.0)
            if not readable:
                continue
            chunk = os.read(stdin, 1 << 16)
            if not chunk:  # the grader closed the pipe (or died): stop
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    reply = _spawn(json.loads(line))
                    children.add(reply["pid"])
                except Exception as e:  # noqa: BLE001
                    reply = {"error": f"{type(e).__name__}: {e}"}
                os.write(out, (json.dumps(reply) + "\n").encode())
    finally:
        for pid in children:  # kernels still running when the grader leaves
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--zygote":
        zygote(sys.argv[2], sys.argv[3:])
    else:
        main(sys.argv)

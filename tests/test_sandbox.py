"""The grading sandbox: files, environment, memory, time limits, dead kernels, big output.

Each sandbox test runs twice: with a kernel started from scratch (as `tantra check` and `tantra grade`
start theirs) and with one forked from a kernel zygote (as `tantra autograde` does); both must
behave the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tantra_lib.grading import sandbox
from tantra_lib.grading.execute import execute_notebook
from tantra_lib.grading.sandbox import Limits, use_zygote
from tantra_lib.lessons import SOLUTIONS


@pytest.fixture(scope="module")
def zygote():
    with use_zygote() as z:  # None where zygotes are not used (not Linux)
        yield z


@pytest.fixture
def forked(zygote, monkeypatch):
    """Kernels of this test are forked from the module's zygote."""
    if zygote is None:
        pytest.skip("kernel zygotes are Linux only")
    monkeypatch.setattr(sandbox, "_zygote", zygote)
    return zygote


@pytest.fixture(params=["fresh", "zygote"])
def kernel_start(request):
    """How this test's sandbox kernels start."""
    return request.getfixturevalue("forked") if request.param == "zygote" else None


def _run(cells: list[str], **limits) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    return execute_notebook(nb, "sandboxed", Limits(**limits))


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _error(cell) -> tuple[str, str] | None:
    errs = [(o.ename, o.evalue) for o in cell.outputs if o.output_type == "error"]
    return errs[-1] if errs else None


@pytest.mark.slow
@pytest.mark.usefixtures("kernel_start")
def test_sandbox_environment_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TANTRA_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SECRET_GRADEBOOK", str(tmp_path / "gradebook.db"))
    target = tmp_path / "escape.txt"
    solution = next(SOLUTIONS.glob("*/*.ipynb"))
    nb = _run([
        "import os, json; print(json.dumps({'cwd': os.getcwd(), 'files': os.listdir('.'), 'env': dict(os.environ)}))",
        f"open({str(target)!r}, 'w').write('x')",
        f"open({str(solution)!r}).read()",
        "import os; os.remove('sandboxed.ipynb'); open('scratch.txt', 'w').write('ok'); print('wrote here')",
        "import subprocess; subprocess.run(['touch', '/tmp/x'])",
        "x = bytearray(50 * 10**9)",
        "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])",
    ], cell_timeout=60, memory_mb=3000)
    info = json.loads(_stdout(nb.cells[0]))
    assert info["files"] == ["sandboxed.ipynb"]
    assert info["cwd"].endswith("work") and not info["cwd"].startswith(str(Path.cwd()))
    env = info["env"]
    assert env["TANTRA_QUICK"] == "1" and env["MPLBACKEND"] == "Agg" and env["OMP_NUM_THREADS"] == "1"
    assert "SECRET_GRADEBOOK" not in env
    leaked = [k for k, v in env.items() if str(SOLUTIONS) in v or str(tmp_path) in v or "gradebook" in v]
    assert not leaked
    assert _error(nb.cells[1])[0] == "PermissionError" and not target.exists()
    assert _error(nb.cells[2])[0] == "PermissionError"  # the course's solutions are off limits
    assert _error(nb.cells[3]) is None and "wrote here" in _stdout(nb.cells[3])
    assert _error(nb.cells[4])[0] == "PermissionError"
    assert _error(nb.cells[5])[0] == "MemoryError"
    assert _stdout(nb.cells[6]).strip() == str(3000 * 2**20)


@pytest.mark.slow
@pytest.mark.usefixtures("kernel_start")
def test_sandbox_torch_uses_one_thread():
    nb = _run(["import torch; print(torch.get_num_threads())"], cell_timeout=120)
    assert _stdout(nb.cells[0]).strip() == "1"


@pytest.mark.usefixtures("kernel_start")
def test_sandbox_time_limits():
    nb = _run(["import time", "while True: pass", "print('after')", "time.sleep(3)", "time.sleep(3)", "print('late')"],
              cell_timeout=2, notebook_timeout=6)
    assert _error(nb.cells[1]) == ("TimeoutError", "timed out after 2 s in cell 2")
    assert _stdout(nb.cells[2]) == "after\n"  # the kernel survived the interrupt
    stopped = [_error(c) for c in nb.cells[3:]]
    assert any(e and e[0] == "TimeoutError" and "time limit of 6 s" in e[1] for e in stopped), stopped
    assert _error(nb.cells[5])[0] in ("NotRun", "TimeoutError")


@pytest.mark.usefixtures("kernel_start")
def test_sandbox_kernel_that_ignores_interrupts_is_killed():
    nb = _run(["import time\nwhile True:\n    try:\n        time.sleep(0.1)\n    except BaseException:\n        pass",
               "print('never')"], cell_timeout=2)
    ename, evalue = _error(nb.cells[0])
    assert ename == "TimeoutError" and "timed out after 2 s in cell 1" in evalue and "shut down" in evalue
    assert _error(nb.cells[1]) == ("NotRun", "not run: the kernel was shut down after a time-out in cell 1.")


@pytest.mark.usefixtures("kernel_start")
def test_sandbox_dead_kernel_and_big_output():
    nb = _run(["print('x' * 10_000_000)", "import os; os._exit(3)", "print('never')"], cell_timeout=30,
              max_output_bytes=1000)
    assert len(_stdout(nb.cells[0])) < 1200 and "output truncated" in _stdout(nb.cells[0])
    ename, evalue = _error(nb.cells[1])
    assert ename == "KernelDied" and "cell 2" in evalue and "status 3" in evalue
    assert _error(nb.cells[2]) == ("NotRun", "not run: the kernel died in cell 2.")


# ----------------------------------------------------------------------------- the kernel zygote


def test_forked_kernels_are_fresh_and_cut_off_from_the_zygote(forked):
    probe = """
import json, os, sys
import numpy
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # the folder listing's own descriptor
        pass
print(json.dumps({"ppid": os.getppid(), "pgid": os.getpgid(0), "pid": os.getpid(), "fds": fds,
                  "rand": numpy.random.rand(), "torch_loaded": "torch" in sys.modules}))
"""
    first, second = (json.loads(_stdout(_run([probe]).cells[0])) for _ in range(2))
    requests, replies = (os.readlink(f"/proc/{forked.proc.pid}/fd/{fd}") for fd in (0, 1))
    for info in (first, second):
        assert info["ppid"] == forked.proc.pid  # forked by the zygote ...
        assert info["pgid"] == info["pid"]  # ... into its own process group (interrupts reach only it)
        assert requests not in info["fds"] and replies not in info["fds"]  # learner code cannot reach the zygote
        assert info["torch_loaded"]  # imported before the fork
    assert first["rand"] != second["rand"]  # numpy's global generator is reseeded per kernel


def test_zygote_outlives_dead_kernels_and_falls_back_when_it_is_gone(forked):
    nb = _run(["import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "print('never')"], cell_timeout=30)
    ename, evalue = _error(nb.cells[0])
    assert ename == "KernelDied" and "SIGKILL" in evalue
    assert forked.proc.poll() is None and not forked.failed
    broken = sandbox.Zygote()
    broken.proc.kill()
    broken.proc.wait()
    try:
        sandbox._zygote = broken  # restored by the `forked` fixture's monkeypatch
        nb = _run(["import os; print(os.getppid() == %d)" % broken.proc.pid, "print(1 + 1)"])
        assert broken.failed  # the spawn failed, so the kernel was started the normal way
        assert _stdout(nb.cells[0]) == "False\n" and _stdout(nb.cells[1]) == "2\n"
    finally:
        broken.close()


def test_a_forked_kernel_that_never_answers_is_replaced(forked, monkeypatch):
    """If a forked kernel does not come up, the notebook still runs, in a kernel started normally."""
    import subprocess

    from tantra_lib.grading.execute import SandboxExecute

    silent = []

    def spawn_silent(self, argv, env, cwd):  # a "kernel" that never answers (Popen has the same interface)
        silent.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        return silent[-1]

    monkeypatch.setattr(sandbox.Zygote, "spawn", spawn_silent)
    nb = new_notebook(cells=[new_code_cell("import os; print(os.getppid() == %d)" % forked.proc.pid)])
    ep = SandboxExecute(timeout=60, startup_timeout=3, allow_errors=True)
    ep.preprocess(nb, {"metadata": {"name": "replaced"}})
    assert len(silent) == 1 and silent[0].poll() is not None  # tried once, then shut down
    assert _stdout(nb.cells[0]) == "False\n"  # ran in a kernel that was not forked

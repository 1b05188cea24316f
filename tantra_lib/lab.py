"""`make lab`: JupyterLab on the course's lessons, set up for learners.

    python -m tantra_lib.lab [--port N] [--no-browser] [--root DIR] [-- JUPYTER LAB OPTIONS ...]

What it adds to a plain ``jupyter lab``:

* it runs the venv's own ``jupyter`` (the one next to this Python), on ``lessons/``, from the
  repository root, so nbgrader's **Validate** button reads the course's ``nbgrader_config.py``
  (the server extension loads its config from the server's working directory);
* nbgrader's JupyterLab extensions (Validate, Assignment list, Formgrader, Create assignment)
  and its server extensions are the ones installed and enabled by the nbgrader package;
* the course's JupyterLab configuration in ``tantra_lib/lab_config/`` is put on
  ``JUPYTER_CONFIG_PATH`` for this server only: no news / announcement pop-up, no update check.
  Nothing in the user's own Jupyter settings is read or written by this;
* with no display (a server, CI, a container) it does not try to open a browser; it prints the
  URL to open instead.

Options it does not know are passed to ``jupyter lab`` as they are (``--ServerApp.ip=0.0.0.0``,
``--IdentityProvider.token=...``). The browser test (tests/test_browser.py) starts the lab
through this module, exactly as ``make lab`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .lessons import LESSONS, REPO

__all__ = ["CONFIG_DIR", "NOTIFICATION_PLUGIN", "jupyter_command", "lab_env", "build_command", "has_display",
           "main"]

#: A Jupyter config directory with the course's JupyterLab settings (see its README.md).
CONFIG_DIR = Path(__file__).resolve().parent / "lab_config"
#: The JupyterLab plugin whose settings control the news pop-up and the update check.
NOTIFICATION_PLUGIN = "@jupyterlab/apputils-extension:notification"


def jupyter_command() -> list[str]:
    """The ``jupyter`` of this interpreter's environment (the venv's), never another one on PATH."""
    bindir = Path(sys.executable).parent
    for name in ("jupyter", "jupyter.exe"):
        exe = bindir / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    return [sys.executable, "-m", "jupyter"]


def lab_env(base: dict | None = None) -> dict:
    """The environment the lab runs in: the course's config dir first on JUPYTER_CONFIG_PATH,
    this interpreter's bin/ first on PATH (nbgrader runs `jupyter` subcommands)."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p and p != str(CONFIG_DIR)]
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join([str(CONFIG_DIR), *paths])
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def build_command(root: Path | str = LESSONS, port: int | None = None, open_browser: bool = True,
                  extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The ``jupyter lab`` command line (run it from REPO with ``lab_env()``)."""
    cmd = [*jupyter_command(), "lab", f"--ServerApp.root_dir={Path(root).resolve()}"]
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if not open_browser:
        cmd.append("--ServerApp.open_browser=False")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--ServerApp.allow_root=True")  # containers and CI run as root; Jupyter refuses otherwise
    return cmd + list(extra)


def has_display(env: dict | None = None) -> bool:
    """Whether opening a browser can work: not on CI, and on Linux/BSD only with an X11 or
    Wayland display (or an explicit $BROWSER)."""
    env = os.environ if env is None else env
    if env.get("CI", "").lower() in ("1", "true", "yes"):
        return False
    if sys.platform in ("darwin", "win32") or env.get("BROWSER"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tantra_lib.lab",
        description="Start JupyterLab on the course's lessons (what `make lab` runs). Options it does not "
                    "know are passed on to `jupyter lab`.",
    )
    parser.add_argument("--port", type=int, default=None, metavar="N", help="port to listen on (default: 8888 "
                        "or the next free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser (automatic without a "
                        "display or on CI)")
    parser.add_argument("--root", default=str(LESSONS), metavar="DIR", help="folder to serve (default: lessons/)")
    parser.add_argument("--print-command", action="store_true", help="print the command and its environment "
                        "changes, do not start anything")
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    root = Path(args.root).resolve()
    if not root.is_dir():
        print(f"error: {root} does not exist. Run `make lessons` to generate the lessons.", file=sys.stderr)
        return 2
    open_browser = not args.no_browser
    if open_browser and not has_display():
        print("No display found: not opening a browser. Open the URL with the token printed below.")
        open_browser = False
    cmd = build_command(root, args.port, open_browser, extra)
    env = lab_env()
    if args.print_command:
        print(f"cd {REPO}")
        print(f"JUPYTER_CONFIG_PATH={env['JUPYTER_CONFIG_PATH']}")
        print(" ".join(cmd))
        return 0
    if not Path(cmd[0]).exists() and shutil.which(cmd[0]) is None:
        print(f"error: {cmd[0]} not found; run `make lab` (it installs JupyterLab into .venv).", file=sys.stderr)
        return 2
    sys.stdout.flush()
    # nbgrader's Validate handler loads nbgrader_config.py from the server's working directory.
    os.chdir(REPO)
    if os.name == "posix":
        os.execve(cmd[0], cmd, env)  # replaces this process: Ctrl-C and signals go straight to Jupyter
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

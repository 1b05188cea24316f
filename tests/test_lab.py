"""`make lab` (tantra_lib/lab.py): the command it builds and the settings its JupyterLab sees.

The effective settings are read the way the JupyterLab server computes them (jupyterlab_server:
schema defaults, then the overrides found on the Jupyter config path, then user settings),
with the environment lab.py gives the server and an empty user-settings folder. The browser
test (tests/test_browser.py) checks the same thing on the running server.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from jupyterlab_server.settings_utils import _get_overrides, get_settings

from tantra_lib import lab
from tantra_lib.lessons import LESSONS, REPO


def _effective(plugin: str, env: dict, user_settings: Path) -> dict:
    """The settings JupyterLab would use for `plugin`: defaults with overrides, then user values."""
    from jupyterlab.commands import get_app_dir

    app_settings = os.path.join(get_app_dir(), "settings")
    schemas = os.path.join(get_app_dir(), "schemas")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        overrides, error = _get_overrides(app_settings)
        assert not error, error
        result, _ = get_settings(app_settings, schemas, str(user_settings), schema_name=plugin, overrides=overrides)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    defaults = {k: v.get("default") for k, v in result["schema"]["properties"].items()}
    return {**defaults, **(result.get("settings") or {})}


def test_lab_settings_switch_the_news_popup_off(tmp_path):
    env = lab.lab_env({"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    settings = _effective(lab.NOTIFICATION_PLUGIN, env, tmp_path / "user-settings")
    assert settings["fetchNews"] == "false"
    assert settings["checkForUpdates"] is False


def test_plain_jupyter_would_show_the_popup(tmp_path):
    """Without lab.py's environment the defaults ask about news (so the test above can fail)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    settings = _effective(lab.NOTIFICATION_PLUGIN, env, tmp_path / "user-settings")
    assert settings["fetchNews"] == "none" and settings["checkForUpdates"] is True


def test_settings_file_is_valid_json():
    path = lab.CONFIG_DIR / "labconfig" / "default_setting_overrides.json"
    data = json.loads(path.read_text())
    assert data[lab.NOTIFICATION_PLUGIN] == {"fetchNews": "false", "checkForUpdates": False}


def test_env_puts_course_config_first_and_keeps_the_users():
    env = lab.lab_env({"PATH": "/usr/bin", "JUPYTER_CONFIG_PATH": "/elsewhere"})
    assert env["JUPYTER_CONFIG_PATH"].split(os.pathsep) == [str(lab.CONFIG_DIR), "/elsewhere"]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    again = lab.lab_env(env)  # idempotent
    assert again["JUPYTER_CONFIG_PATH"] == env["JUPYTER_CONFIG_PATH"]
    assert "JUPYTER_CONFIG_DIR" not in env  # the user's own ~/.jupyter stays in use, untouched


def test_command():
    cmd = lab.build_command(LESSONS, port=8999, open_browser=False, extra=["--ServerApp.ip=0.0.0.0"])
    jupyter = Path(cmd[0])
    assert jupyter.parent == Path(sys.executable).parent and jupyter.name.startswith("jupyter")
    assert cmd[1] == "lab"
    assert f"--ServerApp.root_dir={LESSONS.resolve()}" in cmd
    assert "--ServerApp.port=8999" in cmd and "--ServerApp.open_browser=False" in cmd
    assert cmd[-1] == "--ServerApp.ip=0.0.0.0"
    assert "--ServerApp.open_browser=False" not in lab.build_command(LESSONS)


def test_has_display():
    assert not lab.has_display({"CI": "true", "DISPLAY": ":0"})
    if sys.platform.startswith("linux"):
        assert not lab.has_display({})
        assert lab.has_display({"DISPLAY": ":0"}) and lab.has_display({"WAYLAND_DISPLAY": "wayland-0"})


def test_main_print_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    assert lab.main(["--print-command", "--port", "8123", "--root", str(tmp_path), "--", "--ServerApp.token=abc"]) == 0
    out = capsys.readouterr().out
    assert "No display found" in out  # CI: no browser
    assert f"cd {REPO}" in out  # nbgrader's Validate reads nbgrader_config.py from there
    line = out.strip().splitlines()[-1]
    assert line.endswith("--ServerApp.token=abc")
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in line and "--ServerApp.port=8123" in line
    assert "--ServerApp.open_browser=False" in line


def test_main_missing_root(tmp_path, capsys):
    assert lab.main(["--root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("extension", ["nbgrader.server_extensions.validate_assignment",
                                       "nbgrader.server_extensions.assignment_list"])
def test_nbgrader_server_extensions_enabled(extension):
    """The lab's environment enables nbgrader's server extensions (Validate needs this one)."""
    from jupyter_core.paths import jupyter_config_path
    from jupyter_server.extension.config import ExtensionConfigManager

    saved = dict(os.environ)
    os.environ.update(lab.lab_env())
    try:
        manager = ExtensionConfigManager(read_config_path=jupyter_config_path())
        enabled = manager.enabled(extension)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert enabled

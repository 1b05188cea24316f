"""The shortcut guard: an exercise's check fails if the learner's code calls a library
routine that already does the whole job (``F.softmax`` in the softmax exercise, say).

Two mechanisms, both only active inside ``ShortcutGuard(...)``:

* a ``TorchFunctionMode`` sees every torch function called on tensors, however it was
  reached (``F.softmax``, ``torch.softmax``, ``x.softmax``, ``nn.Softmax``, an alias the
  learner imported earlier ...);
* tantra_lib's own reference implementations carry the ``@reference`` decorator, which
  refuses to run for learner code while its name is forbidden.

A forbidden routine is only refused when it is called *from learner code*: the check's own
reference computations (which live in ``tantra_lib``) and tantra_lib building blocks that
the learner is allowed to use keep working. "Learner code" is the nearest calling frame
that is not inside torch, tantra_lib or the standard library.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import os
import sys
import sysconfig
from collections.abc import Iterable

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["ShortcutUsed", "ShortcutGuard", "reference", "forbidden_now"]

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_LIB_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIRS = tuple(
    {os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}
)

# The names forbidden right now, and the exercise they belong to (None when no guard is on).
_ACTIVE: contextvars.ContextVar[tuple[str, frozenset[str]] | None] = contextvars.ContextVar(
    "tantra_shortcut_guard", default=None
)


class ShortcutUsed(AssertionError):
    """Raised when learner code calls a routine its exercise forbids."""

    def __init__(self, exercise: str, used: str):
        self.exercise = exercise
        self.used = used
        super().__init__(
            f"`{exercise}` called `{used}`, which already does the whole job. This exercise "
            f"asks you to build `{exercise}` yourself from elementary operations "
            f"(torch.exp, sum, matmul, einsum, ...); replace the call to `{used}`."
        )


def _is_internal(filename: str) -> bool:
    real = os.path.realpath(filename) if not filename.startswith("<") else filename
    return (
        real.startswith(_TORCH_DIR)
        or filename.startswith(_TORCH_DIR)
        or real.startswith(_STDLIB_DIRS)
        or "<frozen " in filename
    )


def _called_from_learner(skip: int) -> bool:
    """True when the nearest frame outside torch and the standard library is not tantra_lib."""
    frame = sys._getframe(skip + 1)
    while frame is not None:
        fn = frame.f_code.co_filename
        if not _is_internal(fn):
            real = os.path.realpath(fn) if not fn.startswith("<") else fn
            return not real.startswith(_LIB_DIR)
        frame = frame.f_back
    return False


def forbidden_now() -> frozenset[str]:
    """The dotted names the active guard forbids (empty outside a guard)."""
    active = _ACTIVE.get()
    return active[1] if active else frozenset()


def _resolve(dotted: str):
    """'torch.nn.functional.softmax' -> the object, or None when it does not exist."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return None
        return obj
    return None


class _Mode(TorchFunctionMode):
    def __init__(self, exercise: str, funcs: dict):
        super().__init__()
        self.exercise = exercise
        self.funcs = funcs  # id(object) -> dotted name

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.funcs.get(id(func))
        if name is not None and _called_from_learner(skip=1):
            raise ShortcutUsed(self.exercise, name)
        return func(*args, **(kwargs or {}))


class ShortcutGuard:
    """``with ShortcutGuard("softmax", ["torch.nn.functional.softmax", ...]):`` forbids those
    routines to learner code for the duration of the block."""

    def __init__(self, exercise: str, forbids: Iterable[str]):
        self.exercise = exercise
        self.forbids = frozenset(forbids)
        funcs = {}
        for dotted in self.forbids:
            obj = _resolve(dotted)
            if obj is not None and not dotted.startswith("tantra_lib"):
                funcs[id(obj)] = dotted
                # nn.Module classes: their forward is what runs.
                if isinstance(obj, type) and hasattr(obj, "forward"):
                    funcs[id(obj.forward)] = dotted
        self._mode = _Mode(exercise, funcs) if funcs else None
        self._token = None

    def __enter__(self):
        self._token = _ACTIVE.set((self.exercise, self.forbids))
        if self._mode is not None:
            self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self._mode is not None:
                self._mode.__exit__(*exc)
        finally:
            _ACTIVE.reset(self._token)
        return False


def reference(name: str):
    """Mark a tantra_lib reference implementation as ``tantra_lib.<name>``.

    Outside a guard this costs one context-variable lookup per call. Inside a guard that
    forbids ``tantra_lib.<name>``, a call from learner code raises ``ShortcutUsed``.
    Works on functions and on nn.Module classes (their ``__init__`` is guarded).
    """
    dotted = f"tantra_lib.{name}"

    def guard_call(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            active = _ACTIVE.get()
            if active is not None and dotted in active[1] and _called_from_learner(skip=1):
                raise ShortcutUsed(active[0], dotted)
            return fn(*args, **kwargs)

        return wrapper

    def decorate(obj):
        if isinstance(obj, type):
            obj.__init__ = guard_call(obj.__init__)
            return obj
        return guard_call(obj)

    return decorate

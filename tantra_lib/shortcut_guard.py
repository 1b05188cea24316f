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
that is not inside torch or the standard library, unless that frame is in tantra_lib.
A forbidden ``nn.Module`` class is caught through the torch functions its ``forward`` calls.
``ShortcutGuard.check_object`` catches the one case no frame shows: the learner handing over
the forbidden routine itself (``softmax = F.softmax``), which the check would then call.

Tested in tests/test_lib_shortcut_guard.py.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
import os
import sys
import sysconfig
from collections.abc import Iterable

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["ShortcutUsed", "ShortcutGuard", "reference", "forbidden_now"]

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_LIB_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_GUARD_FILE = os.path.realpath(__file__)
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


@functools.lru_cache(maxsize=None)
def _is_internal(filename: str) -> bool:
    """Frames of torch, the standard library, frozen modules or this guard (an outer guard's
    mode handling a call the inner one passed on) are skipped when looking for the caller."""
    real = os.path.realpath(filename) if not filename.startswith("<") else filename
    return (
        real == _GUARD_FILE
        or real.startswith(_TORCH_DIR)
        or filename.startswith(_TORCH_DIR)
        or real.startswith(_STDLIB_DIRS)
        or "<frozen " in filename
    )


@functools.lru_cache(maxsize=None)
def _is_tantra_lib(filename: str) -> bool:
    real = os.path.realpath(filename) if not filename.startswith("<") else filename
    return real.startswith(_LIB_DIR)


def _called_from_learner(skip: int) -> bool:
    """True when the nearest frame outside torch and the standard library is not tantra_lib."""
    frame = sys._getframe(skip + 1)
    while frame is not None:
        fn = frame.f_code.co_filename
        if not _is_internal(fn):
            return not _is_tantra_lib(fn)
        frame = frame.f_back
    return False


def forbidden_now() -> frozenset[str]:
    """The dotted names the active guards forbid (empty outside a guard)."""
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


def _resolve_any(dotted: str):
    """Like `_resolve`, but 'tantra_lib.softmax' is the function exported by tantra_lib (the
    module tantra_lib/softmax.py has the same dotted name)."""
    if dotted.startswith("tantra_lib."):
        return getattr(importlib.import_module("tantra_lib"), dotted.split(".", 1)[1], None)
    return _resolve(dotted)


class _Mode(TorchFunctionMode):
    def __init__(self, exercise: str, funcs: dict, modules: dict):
        super().__init__()
        self.exercise = exercise
        self.funcs = funcs  # id(object) -> dotted name
        # forward's code object of each forbidden nn.Module class -> dotted name. A module is
        # not a torch function, so the mode never sees it directly: it sees the torch
        # functions its forward calls, with that forward's frame on the stack.
        self.modules = modules

    def _forbidden_module_on_stack(self) -> str | None:
        """The forbidden module whose forward is running between the learner's frame and here."""
        frame = sys._getframe(2)  # skip this method and __torch_function__
        while frame is not None and _is_internal(frame.f_code.co_filename):
            name = self.modules.get(frame.f_code)
            if name is not None:
                return name
            frame = frame.f_back
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.funcs.get(id(func))
        if name is None and self.modules:
            name = self._forbidden_module_on_stack()
        if name is not None and _called_from_learner(skip=1):
            raise ShortcutUsed(self.exercise, name)
        return func(*args, **(kwargs or {}))


class ShortcutGuard:
    """``with ShortcutGuard("softmax", ["torch.nn.functional.softmax", ...]):`` forbids those
    routines to learner code for the duration of the block."""

    def __init__(self, exercise: str, forbids: Iterable[str]):
        self.exercise = exercise
        self.forbids = frozenset(forbids)
        funcs, modules = {}, {}
        for dotted in self.forbids:
            obj = _resolve(dotted)
            if obj is None or dotted.startswith("tantra_lib"):
                continue  # tantra_lib references guard themselves (see `reference`)
            if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
                code = getattr(obj.forward, "__code__", None)  # what runs when the module is called
                if code is not None:
                    modules[code] = dotted
            else:
                funcs[id(obj)] = dotted
        self._mode = _Mode(exercise, funcs, modules) if funcs or modules else None
        self._token = None
        # every forbidden object, tantra_lib's included, for `check_object`
        self._objects = [(obj, dotted) for dotted in self.forbids if (obj := _resolve_any(dotted)) is not None]

    def check_object(self, obj) -> None:
        """Raise ShortcutUsed when `obj`, what the learner hands to the check, is itself a
        forbidden routine rather than code of their own: ``softmax = F.softmax``, a
        ``functools.partial`` of it, tantra_lib's reference, a forbidden class, a subclass or an
        instance (or a bound method of one) of it. The frame test cannot see these: the check,
        not learner code, would call them."""
        while isinstance(obj, functools.partial):
            obj = obj.func
        if inspect.ismethod(obj):
            obj = obj.__self__  # a bound method: judge the object it belongs to
        candidates = obj.__mro__ if isinstance(obj, type) else (obj, *type(obj).__mro__)
        for candidate in candidates:
            for forbidden, dotted in self._objects:
                if candidate is forbidden:
                    raise ShortcutUsed(self.exercise, dotted)

    def __enter__(self):
        # Inside another guard the outer names stay forbidden too (its torch function mode
        # is still on the stack; its tantra_lib names must not slip through either).
        outer = _ACTIVE.get()
        names = (self.forbids | outer[1]) if outer is not None else self.forbids
        self._token = _ACTIVE.set((self.exercise, names))
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

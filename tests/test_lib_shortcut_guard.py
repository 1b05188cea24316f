"""The shortcut guard. The functions defined in this file stand for learner code (they live
outside torch, the standard library and tantra_lib); tantra_lib's own code calling the same
routines must keep working."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import softmax as imported_early  # an alias taken before any guard
from torch.overrides import _get_current_function_mode_stack

import tantra_lib
from tantra_lib.shortcut_guard import ShortcutGuard, ShortcutUsed, forbidden_now

SOFTMAX = "torch.nn.functional.softmax"


def learner_softmax(x):
    return F.softmax(x, dim=-1)


def learner_alias(x):
    return imported_early(x, dim=-1)


def learner_module(x):
    return nn.Softmax(dim=-1)(x)


def learner_method(x):
    return x.softmax(-1)


def learner_by_hand(x):
    e = torch.exp(x - x.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def learner_uses_lib_softmax(x):
    return tantra_lib.softmax(x)


def learner_uses_lib_attention(x):
    return tantra_lib.scaled_dot_product_attention(x, x, x)[0]


def learner_linear(x, layer):
    return layer(x)


def learner_silu(x):
    return F.silu(x)


def learner_swiglu(x, m):
    return m(x)


class SubclassOfReference(tantra_lib.MultiHeadAttention):
    pass


class SubclassOfTorch(nn.MultiheadAttention):
    pass


class OwnAttention(nn.Module):
    def forward(self, x):
        return learner_by_hand(x)


@pytest.fixture
def x(device):
    return torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).to(device)


def test_forbidden_function_from_learner_code_raises(x):
    with ShortcutGuard("softmax", [SOFTMAX]):
        with pytest.raises(ShortcutUsed) as info:
            learner_softmax(x)
        learner_by_hand(x)  # elementary ops stay allowed
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.exercise == "softmax" and err.used == SOFTMAX
    assert "`softmax`" in str(err) and SOFTMAX in str(err)


def test_alias_imported_before_the_guard_is_caught(x):
    with ShortcutGuard("softmax", [SOFTMAX]):
        with pytest.raises(ShortcutUsed):
            learner_alias(x)


def test_nn_module_is_caught(x):
    with ShortcutGuard("softmax", ["torch.nn.Softmax"]):
        with pytest.raises(ShortcutUsed, match="torch.nn.Softmax"):
            learner_module(x)
        learner_softmax(x)  # only the module is forbidden here
    with ShortcutGuard("softmax", [SOFTMAX]):  # the module runs F.softmax for the learner: caught too
        with pytest.raises(ShortcutUsed):
            learner_module(x)


def test_tensor_method_is_caught(x):
    with ShortcutGuard("softmax", ["torch.Tensor.softmax", "torch.softmax"]):
        with pytest.raises(ShortcutUsed, match="torch.Tensor.softmax"):
            learner_method(x)
        with pytest.raises(ShortcutUsed, match="torch.softmax"):
            torch.softmax(x, -1)  # called straight from this (learner) frame


def test_same_function_from_tantra_lib_code_is_allowed(x, device):
    torch.manual_seed(0)
    swiglu = tantra_lib.SwiGLU(5, 8).to(device)  # its forward calls F.silu
    layer = nn.Linear(5, 5).to(device)
    with ShortcutGuard("ffn", ["torch.nn.functional.silu", "torch.nn.functional.linear"]):
        out = learner_swiglu(x, swiglu)  # F.silu and F.linear run inside tantra_lib / nn.Linear
        with pytest.raises(ShortcutUsed, match="silu"):
            learner_silu(x)
        with pytest.raises(ShortcutUsed, match="linear"):  # nn.Linear called by the learner
            learner_linear(x, layer)
    torch.testing.assert_close(out, swiglu(x))


def test_tantra_lib_reference_forbidden_only_from_learner_code(x, device):
    with ShortcutGuard("softmax", ["tantra_lib.softmax"]):
        assert "tantra_lib.softmax" in forbidden_now()
        with pytest.raises(ShortcutUsed, match="tantra_lib.softmax"):
            learner_uses_lib_softmax(x)
        learner_uses_lib_attention(x)  # tantra_lib's attention calls tantra_lib.softmax: fine
        learner_softmax(x)  # F.softmax is not forbidden in this guard
    with ShortcutGuard("MultiHeadAttention", ["tantra_lib.MultiHeadAttention"]):
        with pytest.raises(ShortcutUsed, match="MultiHeadAttention"):
            tantra_lib.MultiHeadAttention(8, 2)
        tantra_lib.TransformerBlock(8, 2, 16)  # builds a MultiHeadAttention inside tantra_lib: fine


def test_code_compiled_elsewhere_counts_as_learner_code(x):
    namespace = {"F": F}
    exec(compile("def cell_softmax(x):\n    return F.softmax(x, -1)\n", "<notebook cell>", "exec"), namespace)
    with ShortcutGuard("softmax", [SOFTMAX]):
        with pytest.raises(ShortcutUsed):
            namespace["cell_softmax"](x)


def _nothing_forbidden(x):
    assert forbidden_now() == frozenset()
    assert _get_current_function_mode_stack() == []
    learner_softmax(x)
    learner_module(x)
    learner_uses_lib_softmax(x)
    tantra_lib.MultiHeadAttention(8, 2)


def test_guard_restores_state_on_exit_and_after_errors(x):
    _nothing_forbidden(x)
    with ShortcutGuard("softmax", [SOFTMAX, "torch.nn.Softmax", "tantra_lib.softmax", "tantra_lib.MultiHeadAttention"]):
        pass
    _nothing_forbidden(x)
    with pytest.raises(ShortcutUsed):
        with ShortcutGuard("softmax", [SOFTMAX, "tantra_lib.softmax"]):
            learner_softmax(x)
    _nothing_forbidden(x)
    with pytest.raises(ZeroDivisionError):
        with ShortcutGuard("softmax", [SOFTMAX]):
            1 / 0  # noqa: B018
    _nothing_forbidden(x)


def test_nested_guards(x):
    with ShortcutGuard("outer", [SOFTMAX, "tantra_lib.softmax"]):
        with ShortcutGuard("inner", ["torch.nn.functional.log_softmax", "tantra_lib.log_softmax"]):
            assert forbidden_now() == {SOFTMAX, "tantra_lib.softmax", "torch.nn.functional.log_softmax",
                                       "tantra_lib.log_softmax"}
            with pytest.raises(ShortcutUsed):
                learner_softmax(x)  # the outer guard still holds
            with pytest.raises(ShortcutUsed):
                learner_uses_lib_softmax(x)
            with pytest.raises(ShortcutUsed):
                F.log_softmax(x, -1)
        assert forbidden_now() == {SOFTMAX, "tantra_lib.softmax"}
        F.log_softmax(x, -1)  # the inner guard is gone
        with pytest.raises(ShortcutUsed):
            learner_softmax(x)
    _nothing_forbidden(x)


def test_unknown_names_are_ignored(x):
    with ShortcutGuard("softmax", ["torch.nn.functional.no_such_thing", "no_such_module.f"]):
        learner_softmax(x)


def test_handing_over_a_forbidden_routine_itself_is_caught():
    """`softmax = F.softmax` in a solution cell: the check, not learner code, would call it."""
    forbids = [SOFTMAX, "tantra_lib.softmax", "tantra_lib.MultiHeadAttention", "torch.nn.MultiheadAttention",
               "torch.nn.Softmax"]
    guard = ShortcutGuard("softmax", forbids)
    handed_over = {
        SOFTMAX: [F.softmax, imported_early, functools.partial(F.softmax, dim=-1)],
        "tantra_lib.softmax": [tantra_lib.softmax, functools.partial(tantra_lib.softmax, dim=-1)],
        "tantra_lib.MultiHeadAttention": [tantra_lib.MultiHeadAttention, SubclassOfReference],
        "torch.nn.MultiheadAttention": [nn.MultiheadAttention, SubclassOfTorch],
        "torch.nn.Softmax": [nn.Softmax(dim=-1), nn.Softmax(dim=-1).forward],  # an instance: the check calls it
    }
    for dotted, objects in handed_over.items():
        for obj in objects:
            with pytest.raises(ShortcutUsed) as info:
                guard.check_object(obj)
            assert info.value.used == dotted
    own_objects = (learner_softmax, learner_by_hand, OwnAttention, OwnAttention(), OwnAttention().forward,
                   tantra_lib.log_softmax, nn.Linear, nn.Linear(2, 2), None)
    for own in own_objects:
        guard.check_object(own)


def test_checks_report_a_handed_over_routine_as_a_shortcut():
    from tantra_lib.checks import check_softmax
    from tantra_lib.checks._core import CheckFailed

    with pytest.raises(CheckFailed) as info:
        check_softmax(F.softmax)
    assert info.value.result.status == "shortcut"

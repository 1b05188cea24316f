"""Exercise checks, one module per lesson, all on the one mechanism in ``_core``.

    from tantra_lib.checks import check_softmax
    check_softmax(softmax)      # prints a pass line, or raises CheckFailed naming the mistake

Each ``check_<name>`` takes the learner's function or class ``<name>`` (the same contract
name as in tantra_lib and in the lesson), runs it on the current device with the shortcut
guard on, and with ``hidden=True`` runs the further cases nbgrader's hidden tests use.
"""

from ._core import (  # noqa: F401
    MIME_TYPE,
    REGISTRY,
    CheckFailed,
    Exercise,
    Mistake,
    Result,
    exercise,
    lookup,
    outcome,
    results_from_outputs,
    run_check,
)

# One module per lesson, in course order.
_LESSON_MODULES = (
    "softmax",  # 01_softmax
    "attention",  # 02_attention
    "multi_head",  # 03_multi_head
    "positional",  # 04_positional_encoding
    "norm",  # 05_layer_norm
    "feed_forward",  # 06_feed_forward
    "block",  # 07_residual_block
    "gpt",  # 08_gpt
    "kv_cache",  # 09_kv_cache
    "pretrained",  # 10_pretrained
)


def _load_all() -> None:
    import importlib

    for mod in _LESSON_MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def __getattr__(attr: str):
    # check_<name> is looked up lazily so importing one lesson's checks stays cheap.
    if attr.startswith("check_"):
        _load_all()
        for ex in REGISTRY.values():
            if attr == f"check_{ex.name}":
                import importlib

                mod = importlib.import_module(ex.fn.__module__)
                return getattr(mod, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")

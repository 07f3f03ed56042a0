"""What every masker of this plugin shares: argument checks, MAE's hidden count, the context a masker needs,
and which encoder supplies features (the model's own, or the EMA teacher of a teacher target)."""

from __future__ import annotations

from typing import Any

import torch

from maskkit import ConfigError, Encoder
from maskkit.interfaces import Grid

SOURCES = ("auto", "encoder", "teacher")


def check_ratio(ratio: Any, key: str = "ratio") -> float:
    """A mask ratio: a float strictly between 0 and 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ConfigError(key, f"expected a float in (0, 1), got {ratio!r}")
    return float(ratio)


def check_fraction(value: Any, key: str) -> float:
    """A fraction in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(key, f"expected a float in [0, 1], got {value!r}")
    return float(value)


def check_positive(value: Any, key: str, kind: type = float) -> Any:
    """A positive number (an int when ``kind`` is int)."""
    ok = (isinstance(value, int) if kind is int else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok or value <= 0:
        raise ConfigError(key, f"expected a positive {'int' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def check_source(source: Any) -> str:
    if source not in SOURCES:
        raise ConfigError("source", f"expected one of {', '.join(SOURCES)}, got {source!r}")
    return source


def mae_num_hidden(ratio: float, grid: Grid) -> int:
    """MAE's count: ``N - int(N * (1 - ratio))`` hidden patches (the built-in ``random`` masker's)."""
    n = grid[0] * grid[1]
    return n - int(n * (1 - ratio))


def need(masker: str, **context: Any) -> None:
    """Refuse a call that lacks context this masker cannot work without (a blind call, e.g. from a test)."""
    missing = [name for name, value in context.items() if value is None]
    if missing:
        raise ValueError(f"masker {masker} needs {' and '.join(missing)} (the engine passes them; called by hand: "
                         f"masker(B, grid, generator=g, {', '.join(f'{m}=...' for m in missing)}))")


def _teacher(model: Any) -> Encoder | None:
    """The EMA teacher encoder of the model's target (``model.target.teacher``), or ``None``."""
    teacher = getattr(getattr(model, "target", None), "teacher", None)
    return teacher if isinstance(teacher, Encoder) else None


def feature_encoder(model: Any, source: str) -> Encoder:
    """The encoder whose features a masker reads: ``model.encoder`` (``source='encoder'``), the EMA teacher of a
    teacher target (``model.target.teacher``, as the ``maskkit-teacher`` plugin's ``teacher`` target has;
    ``source='teacher'``), or the teacher when there is one and else the encoder (``auto``).

    A model built from a recipe was checked by :func:`check_feature_source`; a model put together by hand
    without a teacher for ``source='teacher'`` is a ``ValueError`` here, at the first draw."""
    teacher = _teacher(model)
    if source == "teacher":
        if teacher is None:
            raise ValueError("source='teacher' needs a target with an EMA teacher encoder (target: {name: teacher}, "
                             "from the maskkit-teacher plugin)")
        return teacher
    if source == "auto" and teacher is not None:
        return teacher
    return model.encoder


def check_feature_source(model: Any, source: str) -> Encoder:
    """:func:`feature_encoder` at build time (a masker's ``check_model``): ``source='teacher'`` on a model whose
    target has no EMA teacher is a :class:`maskkit.ConfigError` on ``source`` (``masker.source``)."""
    if source == "teacher" and _teacher(model) is None:
        target = type(getattr(model, "target", None)).__name__
        raise ConfigError("source", f"'teacher' needs a target with an EMA teacher encoder (target: {{name: teacher}}, "
                                    f"from the maskkit-teacher plugin), but target {target} has none; expected "
                                    "encoder or auto with this target")
    return feature_encoder(model, source)


def check_grid(encoder: Encoder, grid: Grid, masker: str) -> None:
    if tuple(encoder.grid) != tuple(grid):
        raise ValueError(f"masker {masker}: asked for a mask on grid {tuple(grid)}, but the encoder's grid is "
                         f"{tuple(encoder.grid)}")


def zscore(x: torch.Tensor, dim: tuple[int, ...] | int = -1) -> torch.Tensor:
    """``x`` normalized to zero mean and unit variance over ``dim`` (ColorMAE normalizes each pattern)."""
    x = x - x.mean(dim=dim, keepdim=True)
    return x / x.std(dim=dim, keepdim=True).clamp_min(1e-6)

"""How a comparison writes its numbers, the same in the report, its tables and the per-run lines."""

from __future__ import annotations

from typing import Callable


def pct(x: float) -> str:
    """A percentage already scaled to 0-100: ``71.45``."""
    return f"{x:.2f}"


def loss(x: float) -> str:
    """A loss: ``0.4050``."""
    return f"{x:.4f}"


def rate(x: float) -> str:
    """A throughput: ``1,268``."""
    return f"{x:,.0f}"


def ms(x: float) -> str:
    """Milliseconds, three significant digits: ``0.412``."""
    return f"{x:.3g}"


def secs(x: float) -> str:
    """A duration: ``41.2 s`` under two minutes, else ``4.9 min``."""
    return f"{x:.1f} s" if abs(x) < 120 else f"{x / 60:.1f} min"


def si(n: float) -> str:
    """A large count with a unit prefix: ``3.21M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def plus_minus(stat: dict | None, fmt: Callable[[float], str], scale: float = 1.0) -> str:
    """``mean ± std`` of a summary statistic (``{"mean": ..., "std": ...}``) in ``fmt``, times ``scale``; ``-`` for
    none."""
    if not stat or stat.get("mean") is None:
        return "-"
    text = fmt(stat["mean"] * scale)
    if stat.get("std") is not None:
        text += f" ± {fmt(stat['std'] * scale).lstrip('+')}"  # a spread has no sign
    return text

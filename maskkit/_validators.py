"""attrs validators for recipe config classes: each raises a :class:`~maskkit.errors.ConfigError` naming the
field (the caller adds the section and file)."""

from __future__ import annotations

import math

from maskkit.errors import ConfigError, expected


def positive_int(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(attribute.name, expected("a positive int", value))


def non_negative_int(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(attribute.name, expected("an int >= 0", value))


def non_negative_float(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(attribute.name, expected("a finite number >= 0", value))


def optional(validator):
    def check(inst, attribute, value):
        if value is not None:
            validator(inst, attribute, value)

    return check


def one_of(*choices):
    def check(inst, attribute, value):
        if value not in choices:
            raise ConfigError(attribute.name, expected(f"one of {', '.join(map(str, choices))}", value))

    return check


def betas(inst, attribute, value):
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    if not ok:
        raise ConfigError(attribute.name, expected("two floats in [0, 1)", value))


def boolean(inst, attribute, value):
    if not isinstance(value, bool):
        raise ConfigError(attribute.name, expected("true or false", value))


def boolean_or_auto(inst, attribute, value):
    if not (isinstance(value, bool) or value == "auto"):
        raise ConfigError(attribute.name, expected("true, false or auto", value))


def positive_int_or_auto(inst, attribute, value):
    if value != "auto":
        positive_int(inst, attribute, value)


def sequence_to_tuple(value):
    """Converter: a YAML list becomes a tuple; anything else is left for the validator to name (a scalar ``0.5``
    would otherwise fail inside ``tuple()`` as "'float' object is not iterable", without the key)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def number_pair(value) -> bool:
    """Whether ``value`` is a tuple of two numbers (booleans are not numbers here)."""
    return isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)


def shown(value):
    """``value`` as the recipe wrote it, for a message (a converted tuple back to a list)."""
    return list(value) if isinstance(value, tuple) else value


def crop_scale(inst, attribute, value):
    """RandomResizedCrop's ``scale``: ``[min, max]`` with ``0 < min <= max <= 1``."""
    if not (number_pair(value) and 0 < value[0] <= value[1] <= 1):
        raise ConfigError(attribute.name, expected("[min, max] with 0 < min <= max <= 1", shown(value)))


def aspect_ratio(inst, attribute, value):
    """RandomResizedCrop's ``ratio``: ``[min, max]`` with ``0 < min <= max``."""
    if not (number_pair(value) and 0 < value[0] <= value[1] and math.isfinite(value[1])):
        raise ConfigError(attribute.name, expected("[min, max] with 0 < min <= max", shown(value)))


def device(inst, attribute, value):
    """``auto`` or a torch device string (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    check_device(value, attribute.name)


def check_device(value, key: str, file: str | None = None) -> None:
    """A one-line :class:`ConfigError` on ``key`` (of ``file``) unless ``value`` is ``auto`` or a torch device
    string (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    import torch

    if value == "auto":
        return
    try:
        if not isinstance(value, str):
            raise TypeError(value)
        torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(key, expected("auto, cpu, cuda or cuda:N", value), file=file) from None

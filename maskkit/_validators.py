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

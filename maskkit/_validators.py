"""attrs validators for recipe config classes: each raises a :class:`~maskkit.errors.ConfigError` naming the
field (the caller adds the section and file)."""

from __future__ import annotations

import math
import re

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


# timm's augmentation strings (timm.data.auto_augment, read by timm.data.create_transform): a head, then
# "-"-separated parts KEYvalue (value: from the first digit on). timm skips a part without a digit, and rand's
# -tNAME with an unknown NAME falls back to its default operations: both silently, so they are refused here.
AA_POLICIES = ("original", "originalr", "v0", "v0r", "3a")  # AutoAugment policies: -mstd only
AA_PARTS = {  # the parts each head reads, and how timm converts their value
    "rand": {"m": int, "n": int, "p": float, "mstd": float, "mmax": int, "inc": int},
    "augmix": {"m": int, "w": int, "d": int, "a": float, "b": int, "mstd": float},
    **{policy: {"mstd": float} for policy in AA_POLICIES},
}
AA_RAND_OPS = ("weights", "3aw", "3a")  # rand's -tNAME: the operation sets timm knows by name
AA_EXPECTED = ("null or timm's augmentation string: rand-KEYvalue... (m, n, p, mstd, mmax, inc, tNAME), "
               "augmix-... (m, w, d, a, b, mstd), or original, originalr, v0, v0r, 3a (-mstd), "
               "e.g. rand-m9-mstd0.5-inc1")


def auto_augment(inst, attribute, value):
    """timm's RandAugment / AugMix / AutoAugment string (``rand-m9-mstd0.5-inc1``), ``null`` or ``""`` for none:
    what timm reads whole; a head or part it refuses, or a part it would skip, is a one-line error."""
    if value is None or value == "":
        return
    problem = auto_augment_problem(value) if isinstance(value, str) else "not a string"
    if problem:
        raise ConfigError(attribute.name, f"{expected(AA_EXPECTED, value)}: {problem}")


def auto_augment_problem(text: str) -> str | None:
    """Why timm would refuse or partly skip the augmentation string ``text``; ``None`` when it reads all of it.
    timm picks the parser by prefix (``rand...``, ``augmix...``, else a policy), which then wants its exact head."""
    head, *parts = text.split("-")
    kind = "rand" if text.startswith("rand") else "augmix" if text.startswith("augmix") else head
    if head != kind or kind not in AA_PARTS:
        return f"unknown head {head!r}"
    seen: set[str] = set()
    for part in parts:
        key, problem = _aa_part(kind, part)
        if problem is None and key in seen:
            problem = f"{key} is given twice (timm would use only one of them)"
        if problem:
            return f"part {part!r}: {problem}"
        seen.add(key)
    return None


def _aa_part(kind: str, part: str) -> tuple[str, str | None]:
    """The key of one ``KEYvalue`` part of a ``kind`` string, and what is wrong with it (``None``: nothing)."""
    if kind == "rand" and part.startswith("t"):  # timm reads rand's t before looking for a number
        ok = part[1:] in AA_RAND_OPS
        return "t", None if ok else f"t names an operation set, one of {', '.join(AA_RAND_OPS)} (timm would " \
            "silently use its default set)"
    split = re.split(r"(\d.*)", part)  # timm's own split: the key, then the value from the first digit on
    if len(split) < 2:
        return part, "no value (timm would silently skip this part)"
    key, value, rest = split[0], split[1], "".join(split[2:])
    if rest:
        return key, "a line break in the value (timm would silently skip what follows it)"
    convert = AA_PARTS[kind].get(key)
    if convert is None:
        return key, f"unknown key {key!r} for {kind}; expected one of {', '.join(AA_PARTS[kind])}"
    try:
        convert(value)
    except ValueError:
        return key, f"{key} takes {'an integer' if convert is int else 'a number'}"
    return key, None

"""Fine-tuning's ``auto_augment``: timm's RandAugment / AugMix / AutoAugment string, checked when the recipe is
loaded against what timm's parsers (``timm.data.auto_augment``) read. timm skips some parts silently (one without
a digit; rand's ``-tNAME`` with an unknown NAME falls back to its default operations), so a typo such as
``rand-m9-mstdX`` would train with another augmentation than the recipe says: those are refused here."""

from __future__ import annotations

import re

from maskkit.errors import ConfigError, expected

# a string is a head, then "-"-separated parts KEYvalue (the value: from the first digit on)
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


def check_auto_augment(inst, attribute, value):
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

"""The plugin author's toolkit: validators that name the argument, the recipe-folder hook, and the rule that
plugins use only the public API."""

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskkit import toolkit
from maskkit.errors import ConfigError
from maskkit.registry import Registry

REPO = Path(__file__).parents[1]


@pytest.mark.parametrize("validator, good, bad, message", [
    (toolkit.ratio, [0.5, 1e-3, 0.999], [0, 1, 1.5, -0.1, True, "0.5", None], "expected a float in (0, 1)"),
    (lambda v: toolkit.positive_int(v, "size"), [1, 7], [0, -1, 1.5, True, "3"], "expected a positive int"),
    (lambda v: toolkit.non_negative_int(v, "size"), [0, 7], [-1, 0.5, False], "expected an int >= 0"),
    (lambda v: toolkit.positive_float(v, "size"), [0.1, 3], [0, -2, True, "1"], "expected a number > 0"),
    (lambda v: toolkit.non_negative_float(v, "size"), [0, 2.5], [-0.1, False], "expected a number >= 0"),
    (lambda v: toolkit.boolean(v, "size"), [True, False], [0, 1, "yes"], "expected true or false"),
    (lambda v: toolkit.one_of(v, ("mean", "cls"), "size"), ["mean", "cls"], ["max", None], "expected one of mean, cls"),
])
def test_validators_return_good_values_and_name_the_key_of_bad_ones(validator, good, bad, message):
    for value in good:
        assert validator(value) == value
    for value in bad:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            validator(value)
        assert info.value.key in ("ratio", "size")


@given(st.floats(min_value=0.0, max_value=1.0))
def test_ratio_accepts_exactly_the_open_interval(value):
    if 0 < value < 1:
        assert toolkit.ratio(value) == value and isinstance(toolkit.ratio(value), float)
    else:
        with pytest.raises(ConfigError):
            toolkit.ratio(value)


def test_recipes_hook_registers_a_folder(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "b.yaml").write_text("{}")
    (folder / "a.yaml").write_text("{}")
    (folder / "notes.txt").write_text("not a recipe")
    assert toolkit.recipe_files(folder) == {"a": folder / "a.yaml", "b": folder / "b.yaml"}
    assert toolkit.recipe_files(tmp_path / "none") == {}

    class Shipping:
        maskkit_add_recipes = staticmethod(toolkit.recipes_hook(folder))

    reg = Registry.from_plugins(autoload=False, plugins={"shipping": Shipping()})
    assert reg.recipe_path("a") == folder / "a.yaml" and reg.get("recipe", "b").plugin == "shipping"


def test_plugins_import_only_the_public_api():
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "plugins").rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.match(r"\s*(from|import)\s+maskkit\.(builtin|_\w+)\b", line)]
    assert offenders == []

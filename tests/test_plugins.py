"""The plugin system: built-ins through the hooks, entry points, clashes, broken plugins, provenance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import maskkit
from maskkit.builtin.masking import RandomMasker
from maskkit.errors import PluginError, UnknownComponentError
from maskkit.registry import make_plugin_manager

REPO = Path(__file__).parents[1]


def test_builtins_come_through_the_hooks(builtin_registry):
    assert builtin_registry.list("masker") == ["random"]
    assert builtin_registry.list("decoder") == ["mae"]
    assert {"pixels", "norm_pixels"} <= set(builtin_registry.list("target"))
    assert {"mse", "l1", "smooth_l1", "cosine"} <= set(builtin_registry.list("loss"))
    assert builtin_registry.get("masker", "random").plugin == "maskkit"
    # built-ins are ordinary hook implementations of the "maskkit" plugin
    impls = builtin_registry.plugin_manager.hook.maskkit_add_maskers.get_hookimpls()
    assert [builtin_registry.plugin_manager.get_name(i.plugin) for i in impls] == ["maskkit"]


def test_create_and_list_with_wildcards(builtin_registry):
    masker = maskkit.create("masker", "random", ratio=0.5, registry=builtin_registry)
    assert isinstance(masker, RandomMasker) and masker.ratio == 0.5
    names = maskkit.list_components("encoder", "vit_base_patch16_*", registry=builtin_registry)
    assert "vit_base_patch16_224" in names and all(n.startswith("vit_base_patch16_") for n in names)
    assert maskkit.list_components("loss", "*l1", registry=builtin_registry) == ["l1", "smooth_l1"]
    with pytest.raises(ValueError, match="unknown component kind"):
        builtin_registry.list("maskers")


def test_unknown_name_lists_close_matches_and_plugins(builtin_registry):
    with pytest.raises(UnknownComponentError) as info:
        builtin_registry.get("masker", "randm")
    assert "did you mean random" in str(info.value) and "loaded plugins: maskkit" in str(info.value)


class ClashPlugin:
    @maskkit.hookimpl
    def maskkit_add_maskers(self):
        return {"random": RandomMasker}


def test_name_clash_names_both_plugins():
    with pytest.raises(PluginError,
                       match="masker 'random' is registered twice: by plugin 'maskkit' and by plugin 'clash'"):
        maskkit.Registry.from_plugins(autoload=False, plugins={"clash": ClashPlugin()})


class Misspelled:
    @maskkit.hookimpl
    def maskkit_add_maskerz(self):
        return {}


def test_misspelled_hook_is_caught():
    """One line naming the plugin, the hook it implements and the hook it probably meant (not pluggy's text with
    the plugin object's repr twice)."""
    with pytest.raises(PluginError) as info:
        make_plugin_manager(autoload=False, plugins={"typo": Misspelled()})
    assert str(info.value) == ("plugin 'typo' implements a hook maskkit does not have: maskkit_add_maskerz "
                               "(did you mean maskkit_add_maskers?)")


class MisspelledArgument:
    @maskkit.hookimpl
    def maskkit_step_end(self, trainer, step, losses):
        pass


def test_a_hook_argument_the_hook_does_not_give_is_one_line(tmp_path):
    """A hook implementation taking an argument its hook does not give: one line naming the hook, the argument,
    the closest one the hook gives and all of them (pluggy's first line named none of them), whether the plugin
    is an object or a file."""
    with pytest.raises(PluginError) as info:
        make_plugin_manager(autoload=False, plugins={"typo": MisspelledArgument()})
    assert str(info.value) == ("plugin 'typo': maskkit_step_end takes 'losses', which the hook does not give (did "
                               "you mean loss?); it gives: trainer, model, step, loss (take any of them)")
    path = tmp_path / "typo.py"
    path.write_text("import maskkit\n\n@maskkit.hookimpl\ndef maskkit_train_start(trainer, modle):\n    pass\n")
    loaded = make_plugin_manager(autoload=False, files=[str(path)])
    assert [f.error for f in loaded.failures] == ["maskkit_train_start takes 'modle', which the hook does not give "
                                                  "(did you mean model?); it gives: trainer, model (take any of them)"]


class WrongReturn:
    @maskkit.hookimpl
    def maskkit_add_losses(self):
        return ["not", "a", "dict"]


def test_hook_returning_wrong_type():
    with pytest.raises(PluginError, match="must return a dict"):
        maskkit.Registry.from_plugins(autoload=False, plugins={"wrong": WrongReturn()})


def test_hookspecs_module_documents_every_hook():
    from maskkit import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("maskkit_")]
    assert len(hooks) >= 12
    for name in hooks:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """Install a real throwaway plugin package into a private site folder: CONTRIBUTING.md's checkerboard
    walkthrough, plus a second entry point whose module fails to import."""
    from test_contributing import walkthrough

    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    src.mkdir()
    files, _ = walkthrough()
    pyproject = files["pyproject.toml"].replace('version = "0.1.0"', 'version = "0.3.1"')
    pyproject = pyproject.replace('checkerboard = "maskkit_checkerboard"',
                                  'checkerboard = "maskkit_checkerboard"\nbroken = "mk_broken"')
    pyproject = pyproject.replace('py-modules = ["maskkit_checkerboard"]',
                                  'py-modules = ["maskkit_checkerboard", "mk_broken"]')
    (src / "pyproject.toml").write_text(pyproject)
    (src / "maskkit_checkerboard.py").write_text(files["maskkit_checkerboard.py"])
    (src / "mk_broken.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    return site


def _run(site, *args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    env.pop("MASKKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "maskkit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_installed_plugin_is_listed_and_broken_one_reported(plugin_site):
    result = _run(plugin_site, "plugins")
    assert result.returncode == 0, result.stderr
    assert "checkerboard" in result.stdout and "0.3.1" in result.stdout
    assert "plugin 'broken' failed to load" in result.stdout and "broken on purpose" in result.stdout
    assert "random" in result.stdout  # the rest keep working


def test_installed_plugin_masker_trains_from_a_recipe(plugin_site, tmp_path):
    recipe = tmp_path / "checker.yaml"
    recipe.write_text((REPO / "tests" / "data" / "checker.yaml").read_text())
    result = _run(plugin_site, "train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress", "--no-eval")
    assert result.returncode == 0, result.stderr
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2
    versions = (tmp_path / "run" / "versions.json").read_text()
    assert '"plugin:checkerboard": "0.3.1"' in versions


def test_autoload_can_be_disabled(plugin_site):
    env_result = subprocess.run(
        [sys.executable, "-c", "import maskkit; print(maskkit.list_components('masker'))"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(plugin_site), "MASKKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert env_result.stdout.strip() == "['random']", env_result.stderr

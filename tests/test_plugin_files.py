"""One-file plugins: ``--plugin PATH.py|MODULE``, ``MASKKIT_PLUGINS``, a recipe's and a spec's ``plugins:``;
provenance (the file and its hash), the same clash and failure rules as installed plugins, compare workers."""

import hashlib
import json
import os
import textwrap

import pytest
import yaml
from helpers import tiny_tree

import maskkit
from maskkit.cli import main, split_plugin_options
from maskkit.errors import PluginError, UnknownComponentError
from maskkit.registry import PLUGINS_ENV, Registry

STRIPES = '''
"""Stripes: hide whole rows of the patch grid (a one-file plugin)."""

import torch

import maskkit


class Stripes(maskkit.Masker):
    def __init__(self, rows: int = 2):
        self.rows = rows

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        h, w = grid
        order = torch.rand(batch_size, h, generator=generator, device=device).argsort(dim=1)
        hidden_rows = order < self.rows  # [B, h]
        return hidden_rows[:, :, None].expand(batch_size, h, w).reshape(batch_size, h * w)

    def num_hidden(self, grid):
        return self.rows * grid[1]


@maskkit.hookimpl
def maskkit_add_maskers():
    return {"stripes": Stripes}
'''


@pytest.fixture
def stripes(tmp_path):
    path = tmp_path / "stripes.py"
    path.write_text(STRIPES)
    return path


def write_plugin(path, body):
    path.write_text(textwrap.dedent(body))
    return path


def test_a_file_registers_with_its_path_and_hash_as_provenance(stripes):
    reg = Registry.from_plugins(autoload=False, files=[str(stripes)])
    entry = reg.get("masker", "stripes")
    digest = hashlib.sha256(stripes.read_bytes()).hexdigest()
    assert entry.plugin == str(stripes) and entry.version == f"sha256:{digest}"
    assert reg.versions()[str(stripes)] == f"sha256:{digest}"
    assert reg.sources[str(stripes)].file == str(stripes)
    mask = reg.create("masker", "stripes", rows=3)(4, (7, 7))
    assert mask.shape == (4, 49) and mask.sum(1).tolist() == [21] * 4


def test_relative_paths_and_modules_and_the_environment(stripes, tmp_path, monkeypatch):
    other = write_plugin(tmp_path / "pkg_loss.py", '''
        import maskkit
        from maskkit.builtin.losses import MSELoss

        @maskkit.hookimpl
        def maskkit_add_losses():
            return {"mse_again": MSELoss}
    ''')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry.from_plugins(autoload=False, files=["stripes.py", "pkg_loss"])  # a relative file, a module
    assert reg.get("masker", "stripes").plugin == str(stripes)
    assert reg.get("loss", "mse_again").plugin == "pkg_loss"
    monkeypatch.setenv(PLUGINS_ENV, os.pathsep.join([str(stripes), str(other)]))
    reg = Registry.from_plugins(autoload=False, files=["stripes.py"])  # the same file twice: loaded once
    assert reg.get("masker", "stripes").plugin == str(stripes)
    assert reg.get("loss", "mse_again").plugin == str(other)
    assert reg.plugin_specs == (str(stripes), str(other))


def test_failures_are_recorded_and_named_like_installed_plugins(tmp_path):
    broken = write_plugin(tmp_path / "broken.py", "raise RuntimeError('broken on purpose')\n")
    reg = Registry.from_plugins(autoload=False, files=[str(broken), str(tmp_path / "missing.py")])
    assert [f.name for f in reg.failures] == [str(broken), str(tmp_path / "missing.py")]
    assert "broken on purpose" in reg.failures[0].error and "no such plugin file" in reg.failures[1].error
    assert reg.list("masker") == ["random"]  # the others keep working
    with pytest.raises(UnknownComponentError, match="failed to load: .*broken.py \\(RuntimeError: broken on purpose"):
        reg.get("masker", "stripes")


def test_a_clash_names_the_file(tmp_path):
    clash = write_plugin(tmp_path / "clash.py", '''
        import maskkit
        from maskkit.builtin.masking import RandomMasker

        @maskkit.hookimpl
        def maskkit_add_maskers():
            return {"random": RandomMasker}
    ''')
    with pytest.raises(PluginError, match=f"masker 'random' is registered twice: by plugin 'maskkit' and by plugin "
                                          f"'{clash}'"):
        Registry.from_plugins(autoload=False, files=[str(clash)])


def test_plugin_option_before_or_after_the_command(stripes, capsys):
    assert split_plugin_options(["--plugin", "a.py", "train", "r.yaml", "--plugin=b", "x=1", "--", "--plugin"]) == \
        (["a.py", "b"], ["train", "r.yaml", "x=1", "--", "--plugin"])
    assert main(["--plugin", str(stripes), "list", "masker"]) == 0
    assert "stripes" in capsys.readouterr().out.split()
    assert main(["plugins", "--plugin", str(stripes)]) == 0
    out = capsys.readouterr().out
    assert "stripes" in out and "stripes.py" in out and "sha256:" in out
    assert main(["masks", "show", "stripes", "rows=3", "--grid", "7x7", "--out", str(stripes.parent / "m.png"),
                 "--plugin", str(stripes)]) == 0


def test_a_recipe_names_its_plugin_and_the_run_records_it(stripes, tmp_path, capsys):
    folder = tmp_path / "recipes"
    folder.mkdir()
    stripes.rename(folder / "stripes.py")
    plugin = folder / "stripes.py"
    tree = tiny_tree(plugins=["stripes.py"], masker={"name": "stripes", "rows": 3})
    tree["train"].update(max_steps=2, ckpt_every=0)
    (folder / "r.yaml").write_text(yaml.safe_dump(tree))
    assert main(["train", str(folder / "r.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert resolved["plugins"] == [str(plugin)]  # absolute: the run folder is readable from anywhere
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert versions[f"plugin:{plugin}"] == "sha256:" + hashlib.sha256(plugin.read_bytes()).hexdigest()
    # the checkpoint's recipe brings its plugin along: no --plugin needed to evaluate it
    capsys.readouterr()
    assert main(["eval", "knn", str(tmp_path / "run" / "checkpoint.pth"), "eval.k=3", "--device", "cpu"]) == 0
    assert "kNN" in capsys.readouterr().out
    (folder / "bad.yaml").write_text(yaml.safe_dump(tiny_tree(plugins=[3])))
    assert main(["train", str(folder / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "plugins: expected a list of plugin files" in capsys.readouterr().err


def test_a_recipe_plugin_file_found_nowhere_names_both_places_it_looked(tmp_path, monkeypatch, capsys):
    """A relative plugin file is looked for in the recipe's folder, then the working directory: the one-line
    error names the recipe file, the key, the entry as written and both folders (not only the working
    directory's path), when the recipe is loaded, before anything trains."""
    folder, work = tmp_path / "recipes", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    tree = tiny_tree(plugins=["nothere.py"])
    tree["train"].update(max_steps=1, ckpt_every=0)
    (folder / "r.yaml").write_text(yaml.safe_dump(tree))
    line = (f"{folder / 'r.yaml'}: plugins: nothere.py: no such plugin file (looked in the recipe's folder, "
            f"{folder}, and the working directory, {work})")
    with pytest.raises(maskkit.ConfigError) as info:
        maskkit.load_recipe(folder / "r.yaml")
    assert str(info.value) == line
    assert main(["train", str(folder / "r.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"maskkit: error: {line}" and not (tmp_path / "run").exists()
    with pytest.raises(maskkit.ConfigError) as info:  # an override's file is looked for the same way
        maskkit.load_recipe(folder / "r.yaml", ["plugins=[sub/other.py]"])
    assert str(info.value) == line.replace("nothere.py", "sub/other.py")
    missing = tmp_path / "gone.py"  # an absolute path: looked for there only
    with pytest.raises(maskkit.ConfigError) as info:
        maskkit.load_recipe(folder / "r.yaml", [f"plugins=[{missing}]"])
    assert str(info.value) == f"{folder / 'r.yaml'}: plugins: {missing}: no such plugin file"


def test_a_run_trained_with_plugin_option_records_it_for_its_checkpoint(stripes, tmp_path, monkeypatch, capsys):
    """``maskkit train R --plugin x.py`` writes x.py (absolute) into the run's recipe: its checkpoint is resumed
    and evaluated without ``--plugin`` (it used to be "unknown masker 'stripes'")."""
    monkeypatch.chdir(stripes.parent)
    tree = tiny_tree(masker={"name": "stripes", "rows": 3})
    tree["train"].update(max_steps=2, ckpt_every=0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tree))
    assert main(["train", "r.yaml", "--plugin", "stripes.py", "--out", "run", "--no-progress"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["plugins"] == [str(stripes)]
    capsys.readouterr()
    assert main(["train", "--resume", "run/checkpoint.pth", "train.max_steps=3", "--no-progress"]) == 0
    assert main(["eval", "knn", "run/checkpoint.pth", "eval.k=3", "--device", "cpu"]) == 0
    assert "kNN" in capsys.readouterr().out


def test_a_spec_plugin_reaches_the_plan_and_its_worker(stripes, tmp_path):
    from maskkit.compare import load_spec, make_plan
    from maskkit.compare.runner import PLAN_FILE
    from maskkit.compare.worker import main as worker_main

    base = tiny_tree()
    base["train"].update(max_steps=2, ckpt_every=0)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "tiny.yaml", "plugins": ["stripes.py"], "seeds": 1, "budget": {"steps": 2},
            "variants": {"random": {}, "stripes": {"masker": {"name": "stripes", "rows": 2}}},
            "eval": {"knn": True, "reconstructions": 0, "mask_samples": 0, "k": 3}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    registry = Registry.from_plugins(autoload=False)
    loaded = load_spec(tmp_path / "spec.yaml", registry=registry)
    assert loaded.plugins == (str(stripes),)
    plan = make_plan(loaded, registry)
    assert plan.plugins == (str(stripes),)
    out = tmp_path / "out"
    plan.save(out / PLAN_FILE)
    assert maskkit.compare.plan.Plan.load(out / PLAN_FILE).plugins == (str(stripes),)
    # the worker starts from plan.json alone: it loads the plugin itself
    assert worker_main([str(out), "stripes/seed0"]) == 0
    assert json.loads((out / "runs" / "stripes" / "seed0" / "compare.json").read_text())["status"] == "done"


def test_a_file_plugin_that_raises_is_named_in_the_one_line_error(tmp_path, capsys):
    """A bug in a ``--plugin`` file is that plugin's failure (exit 2, the file named), not an internal error."""
    plugin = write_plugin(tmp_path / "buggy.py", """
        import maskkit

        class Buggy(maskkit.Masker):
            def __call__(self, batch_size, grid, *, generator=None, device=None):
                raise RuntimeError("index out of range in my masker")

            def num_hidden(self, grid):
                return grid[0] * grid[1] // 2

        @maskkit.hookimpl
        def maskkit_add_maskers():
            return {"buggy": Buggy}
    """)
    code = main(["masks", "show", "buggy", "--plugin", str(plugin), "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "buggy.py" in err and "index out of range in my masker" in err, err


def test_a_wrong_mask_from_a_file_plugin_names_the_file(tmp_path, capsys):
    """Training with a ``--plugin`` masker whose masks miss its declared count stops at once, one line naming
    the masker and the file that registered it."""
    plugin = write_plugin(tmp_path / "greedy.py", """
        import torch

        import maskkit

        class Greedy(maskkit.Masker):
            def __call__(self, batch_size, grid, *, generator=None, device=None):
                mask = torch.zeros(batch_size, grid[0] * grid[1], dtype=torch.bool, device=device)
                mask[:, : self.num_hidden(grid) + 1] = True  # one patch more than declared
                return mask

            def num_hidden(self, grid):
                return grid[0] * grid[1] // 2

        @maskkit.hookimpl
        def maskkit_add_maskers():
            return {"greedy": Greedy}
    """)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_tree(masker={"name": "greedy"})))
    code = main(["train", str(recipe), "--plugin", str(plugin), "--out", str(tmp_path / "run"), "--no-progress",
                 "--no-eval"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err == (f"maskkit: error: masker greedy (plugin {plugin}): declared 24 hidden patches per sample, "
                   "sample 0 hides 25"), err


def test_a_plugin_error_names_the_line_of_the_plugin_that_raised(tmp_path, monkeypatch, capsys):
    """Where in the plugin's own code it failed: a syntax error or an exception while the file is imported
    (``(line N)`` of that file), an exception in a module plugin's package (``(file:line)``), and a masker's
    bug while it runs; each still one line."""
    syntax = write_plugin(tmp_path / "syntax.py", """
        import maskkit

        x = (
    """)
    name = write_plugin(tmp_path / "name.py", """
        import maskkit


        y = undefined_name + 1
    """)
    package = tmp_path / "pkg_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg_plugin import parts\n")
    (package / "parts.py").write_text("import maskkit\n\nraise RuntimeError('missing weights file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [(syntax, "SyntaxError: '(' was never closed (line 4)"),
             (name, "NameError: name 'undefined_name' is not defined (line 5)"),
             ("pkg_plugin", f"RuntimeError: missing weights file ({package / 'parts.py'}:3)")]
    for plugin, end in cases:
        assert main(["list", "masker", "--plugin", str(plugin)]) == 2
        err = capsys.readouterr().err
        assert err == f"maskkit: error: --plugin: {plugin}: failed to load: {end}\n", err
    buggy = write_plugin(tmp_path / "buggy.py", """
        import maskkit

        class Buggy(maskkit.Masker):
            def __call__(self, batch_size, grid, *, generator=None, device=None):
                return [][batch_size]

            def num_hidden(self, grid):
                return 1

        @maskkit.hookimpl
        def maskkit_add_maskers():
            return {"buggy": Buggy}
    """)
    assert main(["masks", "show", "buggy", "--plugin", str(buggy), "--out", str(tmp_path / "m.png")]) == 2
    assert capsys.readouterr().err == (f"maskkit: error: plugin '{buggy}' failed: IndexError: list index out of "
                                       "range (line 6)\n")


def test_a_plugin_asked_for_by_name_that_does_not_load_stops_the_command(tmp_path, monkeypatch, capsys):
    """Installed plugins that fail are left out with a note; one asked for by name (``--plugin``,
    ``MASKKIT_PLUGINS``, a recipe's ``plugins``) is needed, hooks-only ones included: one line, exit 2, naming
    where it was asked for. ``maskkit plugins`` still lists the failure instead."""
    hooks_only = write_plugin(tmp_path / "hooks_only.py", """
        import maskkit

        raise ImportError("needs a package that is not installed")

        @maskkit.hookimpl
        def maskkit_step_end():
            pass
    """)
    missing = tmp_path / "missing.py"
    tree = tiny_tree()
    tree["train"].update(max_steps=1, ckpt_every=0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tree))
    train = ["train", str(tmp_path / "r.yaml"), "--no-progress", "--no-eval"]
    cases = [
        ([*train, "--out", str(tmp_path / "a"), "--plugin", str(missing)],
         f"maskkit: error: --plugin: {missing}: failed to load: FileNotFoundError: no such plugin file"),
        ([*train, "--out", str(tmp_path / "b"), f"plugins=[{hooks_only}]"],
         f"maskkit: error: {tmp_path / 'r.yaml'}: plugins: {hooks_only}: failed to load: ImportError: needs a "),
    ]
    for argv, start in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(start) and len(err.splitlines()) == 1, err
        assert not (tmp_path / argv[argv.index("--out") + 1]).exists()  # nothing trained
    from maskkit.registry import default_registry

    monkeypatch.setenv(PLUGINS_ENV, str(missing))
    default_registry.cache_clear()  # built once per process: now with the environment's plugin
    try:
        assert main(["list", "masker"]) == 2
        assert capsys.readouterr().err.startswith(f"maskkit: error: {PLUGINS_ENV}: {missing}: failed to load: ")
        assert main(["plugins"]) == 0
        assert f"plugin '{missing}' failed to load" in capsys.readouterr().out
    finally:
        monkeypatch.delenv(PLUGINS_ENV)
        default_registry.cache_clear()


def test_a_checkpoint_trained_with_a_hook_only_plugin_loads_without_it(tmp_path):
    """Training needs every plugin its recipe names; evaluating or exporting the checkpoint needs only those
    that provide its components."""
    from maskkit.engine.checkpoint import load_model
    from maskkit.engine.trainer import Trainer

    hook = write_plugin(tmp_path / "logger_hook.py", """
        import maskkit

        @maskkit.hookimpl
        def maskkit_step_end():
            pass
    """)
    tree = tiny_tree(plugins=[str(hook)])
    tree["train"].update(max_steps=1, ckpt_every=0)
    registry = Registry.from_plugins(autoload=False)
    Trainer(maskkit.Recipe(tree), tmp_path / "run", registry=registry, progress=False).fit()
    hook.unlink()
    model, recipe = load_model(tmp_path / "run" / "checkpoint.pth", registry=registry)[:2]
    assert recipe.plugins == (str(hook),) and model.encoder is not None
    with pytest.raises(maskkit.ConfigError, match="plugins: .*logger_hook.py: failed to load"):
        Trainer(recipe, tmp_path / "again", registry=registry, progress=False).fit()


def test_a_module_asked_for_by_name_that_is_also_installed_must_load(tmp_path, monkeypatch):
    """A module that is also installed (here: registered under another name, as an entry point is) and whose
    hook raises is recorded under that name; asked for by module name, it is still refused."""
    import importlib

    write_plugin(tmp_path / "brokenmod.py", """
        import maskkit

        @maskkit.hookimpl
        def maskkit_add_maskers():
            raise RuntimeError("broken on purpose")
    """)
    dist = tmp_path / "brokenpkg-0.1.dist-info"  # installed: an entry point "broken = brokenmod"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[maskkit]\nbroken = brokenmod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reg = Registry.from_plugins(autoload=True, files=["brokenmod"], strict=False)
    assert ("broken", "brokenmod") in [(f.name, f.module) for f in reg.failures]
    with pytest.raises(maskkit.ConfigError, match="plugins: broken: failed to load: .*broken on purpose"):
        reg.require_loaded(["brokenmod"], key="plugins")
    reg.require_loaded(["some_other_module"], key="plugins")  # only what was asked for

"""maskkit compare, what a comparison checks and says: each variant's own warm-up, scores counted only under
the plan's evaluation settings, warnings on seeds and unequal compute, a failed run retrained once its recipe
changes, spec errors naming the file, variant and key, and the exact t-quantile of the paired intervals."""

import csv
import json
import os
from pathlib import Path

import attrs
import pytest
import torch
import yaml
from context_maskers import ContextMaskersPlugin
from helpers import SmallFashion, tiny_tree
from test_compare import PoisonVariant, quiet, write_spec

import maskkit
from maskkit.compare import load_spec, make_plan, run_comparison, run_status
from maskkit.compare.files import DONE, EVAL_FILE, STATUS_FILE, TRAINED
from maskkit.compare.plan import Plan
from maskkit.compare.results import collect, findings, summarize, t95
from maskkit.compare.runner import eval_settings
from maskkit.errors import ConfigError


@pytest.fixture(scope="module")
def registry():
    return maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion()})


# -- the schedule: each variant's own warm-up -------------------------------------------------------------------


def test_a_variant_that_changes_its_warmup_trains_with_it(tmp_path, registry):
    """train.warmup_epochs is the variant's to change: its share of its own training (here 96 steps), scaled to
    the steps it trains, reaches its run's recipe; the others keep the base's."""
    path = write_spec(tmp_path, overrides=["train.max_steps=null", "train.epochs=8", "train.warmup_epochs=1"],
                      variants={"r75": {}, "longwarm": {"train.warmup_epochs": 2},
                                "r50": {"masker.ratio": 0.5, "train.warmup_epochs": 4}},
                      budget={"match": "tokens", "steps": 16, "reference": "r75"})
    plan = make_plan(load_spec(path, registry=registry), registry)  # 12 steps an epoch, the recipes train 96
    assert [v.steps for v in plan.variants] == [16, 16, 8]  # r50: 16 x 104 / 200 tokens a step = 8.32 -> 8
    assert [v.warmup_steps for v in plan.variants] == [2, 4, 4]  # 12/96, 24/96, 48/96 of the steps trained
    for run, warm in zip(plan.runs, (2, 4, 4)):
        assert run.recipe["train"]["warmup_epochs"] * plan.steps_per_epoch == pytest.approx(warm)
    assert "warm-up (r75 2 of 16, longwarm 4 of 16, r50 4 of 8 steps, each variant recipe's" in plan.schedule_text()
    assert plan.variant("longwarm").other_changes == "train.warmup_epochs=2"


# -- scores count only under the plan's evaluation settings -----------------------------------------------------


def _fake_run(out, run, plan, *, settings, knn):
    """A finished run folder as the runner leaves it (checkpoint step, compare.json, eval.json)."""
    run_dir = run.run_dir(out)
    run_dir.mkdir(parents=True)
    torch.save({"step": run.steps}, run_dir / "checkpoint.pth")
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(run.recipe))
    (run_dir / STATUS_FILE).write_text(json.dumps({"run": run.run_id, "status": DONE}))
    (run_dir / EVAL_FILE).write_text(json.dumps({"knn_top1": knn, "linear_top1": knn, "settings": settings}))


def test_scores_made_with_other_evaluation_settings_are_not_reported(tmp_path, registry):
    """A Ctrl-C while re-evaluating after `eval` changed leaves some eval.json of the old settings: the report
    (--report-only too) shows those runs as needing re-evaluation, never their scores, as the runner does."""
    plan = make_plan(load_spec(write_spec(tmp_path), registry=registry), registry)
    old = attrs.evolve(plan, eval=attrs.evolve(plan.eval, k=1))
    out = tmp_path / "out"
    r75, r50 = plan.runs
    _fake_run(out, r75, plan, settings=eval_settings(plan), knn=0.5)
    _fake_run(out, r50, plan, settings=eval_settings(old), knn=0.9)
    plan.save(out / "plan.json")
    loaded = Plan.load(out / "plan.json")  # what --report-only reads: the settings as JSON holds them
    rows, _ = collect(out, loaded)
    assert [(r["status"], r["knn_top1"]) for r in rows] == [("done", 0.5), ("needs re-evaluation", None)]
    assert [run_status(r, loaded, out).state for r in (r75, r50)] == [DONE, TRAINED]  # the runner agrees
    summary = summarize(loaded, rows)
    assert summary[1]["knn_top1"]["n"] == 0 and summary[1]["delta_knn_top1"]["n"] == 0
    assert [r["status"] for r in collect(out, old)[0]] == ["needs re-evaluation", "done"]


# -- non-finite scores ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_a_non_finite_score_leaves_its_seed_out_of_every_count_and_the_report_says_which(tmp_path, registry, bad,
                                                                                          shown):
    """r50's seed 1 scored a NaN (or inf) kNN top-1: that seed is not finished. Its variant's seeds column,
    means (of every number, not only the kNN's), paired differences and counts all rest on seed 0 alone, and
    the report names the variant, the seed and the score, in its runs table and under "Read before ranking"."""
    from maskkit.compare.report import write_report

    plan = make_plan(load_spec(write_spec(tmp_path, seeds=2), registry=registry), registry)
    out = tmp_path / "out"
    knn = {"r75/seed0": 0.50, "r75/seed1": 0.55, "r50/seed0": 0.60, "r50/seed1": bad}
    for run in plan.runs:
        _fake_run(out, run, plan, settings=eval_settings(plan), knn=0.5)
        scores = json.loads((run.run_dir(out) / EVAL_FILE).read_text())
        (run.run_dir(out) / EVAL_FILE).write_text(json.dumps({**scores, "knn_top1": knn[run.run_id],
                                                                   "linear_top1": 0.7}))
    plan.save(out / "plan.json")
    rows, _ = collect(out, plan)
    r50_1 = next(r for r in rows if (r["variant"], r["seed"]) == ("r50", 1))
    assert (r50_1["variant"], r50_1["seed"], r50_1["status"]) == ("r50", 1, "non-finite score")
    assert r50_1["knn_top1"] is None and r50_1["linear_top1"] is None
    assert r50_1["non_finite"] == [f"knn_top1={shown}"]
    r50 = summarize(plan, rows)[1]
    assert (r50["finished"], r50["seeds_finished"]) == (1, [0])
    assert r50["knn_top1"] == {"mean": 0.60, "std": None, "n": 1}
    assert r50["linear_top1"]["n"] == 1  # its finite linear score is left out too: one seed count for the row
    assert r50["delta_knn_top1"]["n"] == 1 and r50["delta_knn_top1"]["mean"] == pytest.approx(0.10)
    assert r50["delta_linear_top1"]["n"] == 1 and r50["non_finite"] == {1: [f"knn_top1={shown}"]}
    report = write_report(out, plan)
    text = (report / "report.md").read_text()
    warnings = text.split("## Read before ranking\n\n")[1].split("\n\n")[0]
    assert f"r50/seed1 gave a non-finite score (knn_top1={shown})" in warnings, warnings
    assert "left out of r50's means, seed count and paired differences" in warnings
    assert "The variants' means cover different seeds (r75: seeds 0, 1; r50: seed 0)" in warnings
    assert "| r50/seed1 | non-finite score |" in text
    assert [line for line in text.splitlines() if line.startswith("| r50 |")][0].endswith("| 1/2 |")
    with (report / "results.csv").open() as handle:
        csv_rows = {(r["variant"], r["seed"]): r for r in csv.DictReader(handle)}
    assert (csv_rows["r50", "1"]["status"], csv_rows["r50", "1"]["non_finite"], csv_rows["r50", "1"]["knn_top1_pct"]) \
        == ("non-finite score", f"knn_top1={shown}", "")
    assert csv_rows["r50", "0"]["non_finite"] == ""
    text = (report / "results.json").read_text()
    assert any("r50/seed1 gave a non-finite score" in note for note in json.loads(text)["findings"])
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: the value is named as text only


# -- warnings on seeds ------------------------------------------------------------------------------------------


def _row(variant, seed, knn):
    row = {"variant": variant, "seed": seed, "status": "done" if knn is not None else "failed", "aux": {}}
    row.update({k: None for k in ("knn_top1", "linear_top1", "finetune_top1", "random_init_knn_top1",
                                  "random_init_linear_top1", "random_init_finetune_top1", "final_loss",
                                  "images_per_s", "masker_ms_per_batch", "train_time_s", "eval_time_s")})
    row["knn_top1"] = row["linear_top1"] = knn
    return row


def test_a_difference_on_one_paired_seed_and_means_over_other_seeds_are_called_out(tmp_path, registry):
    """Two seeds planned, the reference's second run failed: r50's difference rests on one paired seed (no
    interval) and the two means cover different seeds; one seed finished of three says so too."""
    plan = attrs.evolve(make_plan(load_spec(write_spec(tmp_path), registry=registry), registry), seeds=(0, 1))
    rows = [_row("r75", 0, 0.50), _row("r50", 0, 0.55), _row("r75", 1, None), _row("r50", 1, 0.40)]
    notes = findings(plan, summarize(plan, rows))
    assert "r50 vs r75, kNN top-1: +5.00 points over one paired seed: no interval" in " ".join(notes), notes
    assert any(n.startswith("The variants' means cover different seeds (r75: seed 0; r50: seeds 0, 1)")
               for n in notes), notes
    assert not any(n.startswith("One seed") for n in notes)

    three = attrs.evolve(plan, seeds=(0, 1, 2))
    rows = [_row("r75", 0, 0.50), _row("r50", 0, 0.55)] + [_row(v, s, None) for s in (1, 2) for v in ("r75", "r50")]
    notes = findings(three, summarize(three, rows))
    assert notes[0].startswith("One seed finished of the 3 planned: the differences between variants have no "
                               "error bar"), notes
    assert not any("over one paired seed" in n or "different seeds" in n for n in notes)


# -- warnings on unequal compute --------------------------------------------------------------------------------


def test_unequal_compute_is_called_out_with_the_numbers(tmp_path, registry):
    """r50 shows the encoder 200 tokens a step against r75's 104: under equal epochs that is 1.92x the encoder
    tokens, under equal tokens 26 steps against 50; variants of equal cost get no such note."""
    epochs = make_plan(load_spec(write_spec(tmp_path), registry=registry), registry)
    notes = [n for n in findings(epochs, []) if n.startswith("Unequal")]
    assert notes == [
        "Unequal compute: the budget holds the steps equal (4 each, the same images), but the encoders process "
        "different numbers of tokens: r75 104 a step (416 in all), r50 200 a step (800 in all); the most is 1.92x "
        "the least. A variant may score higher for the extra compute alone; `budget: {match: tokens}` gives every "
        "variant the same encoder tokens instead."]
    tokens = make_plan(load_spec(write_spec(tmp_path, budget={"match": "tokens", "steps": 50}), registry=registry),
                       registry)
    notes = [n for n in findings(tokens, []) if n.startswith("Unequal")]
    assert len(notes) == 1 and notes[0].startswith(
        "Unequal steps: the budget holds the encoder tokens equal (about 5,200 each), but the variants train "
        "different numbers of steps: r75 50, r50 26; the most is 1.92x the least."), notes
    same = make_plan(load_spec(write_spec(tmp_path, variants={"r75": {}, "r74": {"masker.ratio": 0.74}}),
                               registry=registry), registry)
    assert not any(n.startswith("Unequal") for n in findings(same, []))  # 104 and 112 a step: within 10%


# -- a failed run whose recipe changed --------------------------------------------------------------------------


@pytest.mark.parametrize("record", ["compare.json", "recipe.yaml"])
def test_a_run_that_failed_before_its_first_checkpoint_is_retrained_once_its_recipe_changes(tmp_path, record):
    """Nothing is lost (no checkpoint), and its failure was the old recipe's: once the spec changes that run's
    recipe (a lower learning rate after a diverged loss), it trains again without --retry-failed. The recipe it
    failed with is read from the failure's record, else (a record of an older maskkit) from recipe.yaml."""
    poisoned = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(),
                                                                      "poison": PoisonVariant("r75")})
    clean = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion()})
    eval_ = {"knn": True, "baseline": False, "mask_samples": 0, "reconstructions": 0}
    out = tmp_path / "out"
    plan = make_plan(load_spec(write_spec(tmp_path, budget={"steps": 2}, eval=eval_), registry=poisoned), poisoned)
    first = run_comparison(plan, out, registry=poisoned, console=quiet(), progress=False, report=False)
    assert first.failed == ("r75/seed0",) and not (out / "runs/r75/seed0/checkpoint.pth").exists()
    assert run_comparison(plan, out, registry=clean, console=quiet(), progress=False,
                          report=False).failed == ("r75/seed0",)  # the same recipe: not retried

    status = json.loads((out / "runs/r75/seed0" / STATUS_FILE).read_text())
    if record == "compare.json":
        (out / "runs/r75/seed0/recipe.yaml").unlink()  # as if it failed before training started
    else:
        del status["recipe"]
        (out / "runs/r75/seed0" / STATUS_FILE).write_text(json.dumps(status))
    lower = {"r75": {"train.base_lr": 1.0e-4}, "r50": {"masker": {"name": "random", "ratio": 0.5}}}
    changed = make_plan(load_spec(write_spec(tmp_path, budget={"steps": 2}, eval=eval_, variants=lower),
                                  registry=clean), clean)
    again = run_comparison(changed, out, registry=clean, console=quiet(), progress=False)
    assert again.trained == ("r75/seed0",) and again.skipped == ("r50/seed0",) and not again.failed
    assert yaml.safe_load((out / "runs/r75/seed0/recipe.yaml").read_text())["train"]["base_lr"] == 1.0e-4
    assert "Failed runs" not in (out / "report" / "report.md").read_text()


# -- spec errors name the file, the variant and the key ---------------------------------------------------------


class Picky(maskkit.Masker):
    """Refuses a grid it does not divide (as simmim_random's ``scale`` does), raising its own key."""

    def __init__(self, scale: int = 3):
        self.scale = scale

    def num_hidden(self, grid):
        if grid[0] % self.scale:
            raise ConfigError("scale", f"the grid {tuple(grid)} is not divisible by scale={self.scale}")
        return grid[0] * grid[1] // 2

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        raise AssertionError("never drawn")


class PickyPlugin:
    @maskkit.hookimpl
    def maskkit_add_maskers(self):
        return {"picky": Picky}


@pytest.mark.parametrize("variants, message", [
    ({"a": {}, "b": {"encoder.depth": -1}},
     "variants.b.encoder: vit_tiny_patch16_224: RuntimeError: number of steps must be non-negative"),
    ({"a": {}, "b": {"decoder.embed_dim": 0}},
     "variants.b.decoder: mae: ZeroDivisionError: float division by zero"),
    ({"a": {"masker": {"name": "picky"}}}, "variants.a.masker.scale: the grid (7, 7) is not divisible by scale=3"),
    ({"a": {}, "b": {"masker": {"name": "picky"}}},  # b's model is a's: the masker is checked on its own
     "variants.b.masker.scale: the grid (7, 7) is not divisible by scale=3"),
    ({"a": {}, "b": {"masker": {"name": "needs_target"}}},  # b's model is a's, but its masker refuses it
     "variants.b.masker.target: expected a target with a 'teacher' (target: {name: teacher}), got "
     "PixelTarget"),
])
def test_component_errors_name_the_spec_variant_and_section(tmp_path, variants, message):
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(), "picky": PickyPlugin(),
                                                                       "context": ContextMaskersPlugin()})
    path = write_spec(tmp_path, variants=variants)
    with pytest.raises(ConfigError) as info:
        make_plan(load_spec(path, registry=registry), registry)
    assert str(info.value) == f"{path}: {message}"


def test_a_training_recipe_names_the_masker_section_of_a_masker_error(tmp_path):
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"picky": PickyPlugin()})
    recipe = maskkit.Recipe(tiny_tree(masker={"name": "picky"}), str(tmp_path / "r.yaml"))
    with pytest.raises(ConfigError) as info:
        maskkit.build_model(recipe, registry)
    assert str(info.value) == f"{tmp_path / 'r.yaml'}: masker.scale: the grid (7, 7) is not divisible by scale=3"


def test_a_spec_plugin_that_is_missing_or_fails_is_an_error_naming_plugins(tmp_path, registry):
    path = write_spec(tmp_path, plugins=["nothere.py"])
    with pytest.raises(ConfigError) as info:
        load_spec(path, registry=registry)
    assert str(info.value) == (f"{path}: plugins: nothere.py: no such plugin file (looked in the spec's folder, "
                               f"{tmp_path}, and the working directory, {Path.cwd()})")
    (tmp_path / "broken.py").write_text("raise ImportError('needs a package that is not installed')\n")
    path = write_spec(tmp_path, plugins=["broken.py"])
    with pytest.raises(ConfigError) as info:
        load_spec(path, registry=registry)
    text = str(info.value)
    assert text.startswith(f"{path}: plugins: {tmp_path / 'broken.py'}: failed to load: ") and \
        "needs a package that is not installed" in text and "\n" not in text


# -- the t-quantile of the paired intervals ---------------------------------------------------------------------

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 31: 2.040, 40: 2.021, 60: 2.000, 120: 1.980, 1000: 1.962}


@pytest.mark.parametrize("dof", sorted(T975))
def test_the_95_percent_t_quantile_matches_the_published_values(dof):
    assert round(t95(dof), 3) == T975[dof]


def test_the_t_quantile_tends_to_the_normal():
    assert abs(t95(10**6) - 1.959966) < 1e-5 and t95(31) > t95(32) > t95(1000) > 1.96


# -- quick mode -------------------------------------------------------------------------------------------------


def test_quick_mode_drops_fine_tuning_as_its_label_says(tmp_path, registry):
    """--quick is labelled "a subset, kNN only": a spec that fine-tunes does not fine-tune in quick mode (the
    slowest evaluation there is, on the whole split), and the report has no fine-tune column."""
    from maskkit.compare.report import table_columns
    from maskkit.compare.results import accuracy_keys
    from maskkit.compare.spec import EvalSpec

    quick = EvalSpec(knn=True, linear=True, finetune={"max_steps": 2}).as_quick()
    assert (quick.knn, quick.linear, quick.finetune, quick.quick) == (True, False, None, True)
    plan = make_plan(load_spec(write_spec(tmp_path), registry=registry), registry)
    plan = attrs.evolve(plan, eval=attrs.evolve(plan.eval, finetune={"max_steps": 2}).as_quick())
    assert [k for k, _ in accuracy_keys(plan)] == ["knn_top1"]
    assert "fine-tune top-1 (%)" not in table_columns(plan)


# -- the per-GPU workers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c", "SIGTERM"])
def test_interrupted_workers_are_stopped_and_have_every_log_closed(tmp_path, monkeypatch, registry, how):
    """Ctrl-C or a SIGTERM to the comparison while two workers run: both are stopped and each one's worker.log
    is closed (not the last one opened, twice). A SIGTERM used to kill the comparison alone, leaving its workers
    training on; it now stops them and says how to continue, in one line."""
    import signal

    from maskkit.compare import runner
    from maskkit.compare.plan import RunPlan
    from maskkit.errors import WorkersInterrupted, describe_failure

    opened, stopped = [], []

    class Worker:
        def __init__(self, cmd, **kwargs):
            self.cmd = cmd

        def poll(self):
            return None

        def terminate(self):
            stopped.append(self.cmd[-1])

        def wait(self, timeout=None):
            return 0

    def logged_open(path, mode="r"):
        opened.append(open(path, mode))
        return opened[-1]

    def interrupt(seconds):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, in the main thread

    monkeypatch.setattr(runner.subprocess, "Popen", Worker)
    monkeypatch.setattr(runner, "open", logged_open, raising=False)
    monkeypatch.setattr(runner.time, "sleep", interrupt)
    plan = make_plan(load_spec(write_spec(tmp_path), registry=registry), registry)
    runs = [RunPlan(v, 0, 4, {}) for v in ("a", "b")]
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else WorkersInterrupted) as info:
        runner._run_workers(runs, tmp_path / "out", ["0", "1"], False, plan=plan)
    assert stopped == ["a/seed0", "b/seed0"] and len(opened) == 2
    assert all(handle.closed for handle in opened)
    assert signal.getsignal(signal.SIGTERM) == before
    if how == "SIGTERM":
        assert describe_failure(info.value) == (128 + signal.SIGTERM, (
            "interrupted by SIGTERM while 2 worker(s) ran a/seed0, b/seed0; each was stopped and keeps its last "
            f"checkpoint (its worker.log says which); resume with: maskkit compare {plan.spec_file} --out "
            f"{tmp_path / 'out'}"))


# -- the loss curves --------------------------------------------------------------------------------------------


def test_loss_curves_draw_the_finished_runs_only(tmp_path, registry, monkeypatch):
    """A seed that failed at step 2 of 4 (or is still training) is left out of its variant's mean curve, which
    would otherwise stop at step 2 (the steps every seed logged) and average in a diverging run."""
    from maskkit.compare import report

    plan = make_plan(load_spec(write_spec(tmp_path, seeds=2), registry=registry), registry)
    out = tmp_path / "out"
    for run in plan.runs:
        _fake_run(out, run, plan, settings=eval_settings(plan), knn=0.5)
        steps = range(1, run.steps + 1)
        if run.run_id == "r50/seed1":
            steps = range(1, 3)
            (run.run_dir(out) / STATUS_FILE).write_text(json.dumps({"status": "failed", "error": "diverged"}))
        (run.run_dir(out) / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 1.0 / s, "loss_avg": 1.0 / s}) + "\n" for s in steps))
    drawn = {}
    monkeypatch.setattr(report, "plot_loss_curves", lambda plan, curves, path: drawn.update(curves))
    report.write_report(out, plan)
    assert sorted(drawn) == ["r50/seed0", "r75/seed0", "r75/seed1"]
    assert [r["step"] for r in drawn["r50/seed0"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("quick", [False, True])
def test_both_csv_files_say_whether_the_evaluation_was_quick(tmp_path, registry, quick):
    """results.csv and summary.csv are read without the report (a spreadsheet, a pandas frame): each row carries
    `quick`, as results.json's comparison.quick does, so subset kNN scores are never mistaken for full ones."""
    from maskkit.compare.report import write_report

    plan = make_plan(load_spec(write_spec(tmp_path), registry=registry), registry)
    plan = attrs.evolve(plan, eval=plan.eval.as_quick()) if quick else plan
    out = tmp_path / "out"
    for run in plan.runs:
        _fake_run(out, run, plan, settings=eval_settings(plan), knn=0.5)
    report = write_report(out, plan)
    assert json.loads((report / "results.json").read_text())["comparison"]["quick"] is quick
    for name in ("results.csv", "summary.csv"):
        with (report / name).open() as handle:
            rows = list(csv.DictReader(handle))
        assert [r["quick"] for r in rows] == [json.dumps(quick)] * 2, name  # true / false, as in results.json


def test_accuracy_plots_of_a_quick_evaluation_say_so(tmp_path, registry, monkeypatch):
    """accuracy.png and accuracy_vs_compute.png are read on their own (pasted into slides): under --quick their
    titles say the scores are kNN on a subset, as the report's heading does."""
    import matplotlib.pyplot as plt

    from maskkit.compare.plots import plot_accuracy, plot_accuracy_vs_compute

    plan = make_plan(load_spec(write_spec(tmp_path), registry=registry), registry)
    rows = [_row("r75", 0, 0.50), _row("r50", 0, 0.55)]
    titles = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (titles.append([ax.get_title() for ax in fig.axes]), close(fig)))
    for evaluation in (plan.eval, plan.eval.as_quick()):
        quick = attrs.evolve(plan, eval=evaluation)
        plot_accuracy(quick, rows, summarize(quick, rows), tmp_path / "a.png")
        plot_accuracy_vs_compute(quick, summarize(quick, rows), tmp_path / "b.png")
    assert not any("QUICK" in t for t in titles[0] + titles[1])
    assert all("; QUICK: kNN on 2000/1000 images" in t for t in titles[2] + titles[3]), titles

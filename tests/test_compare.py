"""maskkit compare: the spec format and its errors, matched budgets, a tiny comparison end to end, and resume."""

import argparse
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import SmallFashion, tiny_tree
from rich.console import Console

import maskkit
from maskkit import cli
from maskkit.compare import load_spec, make_plan, run_comparison
from maskkit.compare.cli import add_parser
from maskkit.compare.runner import training_time
from maskkit.compare.worker import main as worker_main
from maskkit.errors import ConfigError, MaskkitError

REPORT_FILES = ("results.csv", "summary.csv", "results.json", "report.md", "report.html", "loss_curves.png",
                "accuracy.png", "accuracy_vs_compute.png", "reconstructions.png", "masks.png")


class Crash(BaseException):
    """Stands for the process dying (a kill): a plain Exception would be recorded as the run's failure."""


class CrashAfterCheckpoint:
    """Crashes the run of ``variant`` right after its checkpoint of ``step`` is written."""

    def __init__(self, variant, step):
        self.variant, self.step = variant, step

    @maskkit.hookimpl
    def maskkit_checkpoint_saved(self, trainer, step):
        if step == self.step and trainer.run_dir.parent.name == self.variant:
            raise Crash(f"crash after step {step}")


@pytest.fixture(scope="module")
def registry():
    return maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion()})


def quiet():
    return Console(file=open("/dev/null", "w"), width=200)


def write_spec(folder, **changes):
    """A tiny spec: the tests' tiny recipe (7x7 grid, batch 8, 96 images = 12 steps/epoch) and two variants of
    the built-in random masker, 4 steps each, one seed, kNN + linear probe."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = tiny_tree(data={"name": "small_fashion"})
    tree["train"].update(max_steps=6, ckpt_every=2, log_every=1)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tree))
    spec = {"description": "random 75% against random 50%", "base": "tiny.yaml",
            "variants": {"r75": {}, "r50": {"masker": {"name": "random", "ratio": 0.5}}},
            "seeds": 1, "budget": {"match": "epochs", "steps": 4},
            "eval": {"knn": True, "linear": True, "reconstructions": 3, "mask_samples": 4}}
    spec.update(changes)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def scores(out, run_id):
    data = json.loads((out / "runs" / run_id / "eval.json").read_text())
    return {k: data[k] for k in ("knn_top1", "linear_top1")}


def losses(out, run_id):
    return [json.loads(line)["loss"] for line in (out / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]


# -- the spec ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"variant": {"a": {}}}, "variant: unknown key (did you mean variants?)"),
    ({"variants": {"a": {"maskr": {"name": "random"}}}}, "variants.a.maskr: unknown key (did you mean masker?)"),
    ({"variants": {"a": ["masker.ratio"]}}, "variants.a: bad override 'masker.ratio': expected key.path=value"),
    ({"variants": {"a": ["masker.ratio=[0.5"]}}, "variants.a: bad override 'masker.ratio=[0.5': the value is not"),
    ({"variants": {"a": {"masker.ratio.x": 1}}}, "variants.a.masker.ratio.x: cannot set masker.ratio.x"),
    ({"variants": {"a": {"masker": {"name": "blok", "ratio": 0.5}}}},
     "variants.a.masker.name: unknown masker 'blok'"),
    ({"variants": {"a": {"masker.ratio": 1.5}}}, "variants.a.masker.ratio: expected a float in (0, 1), got 1.5"),
    ({"variants": {"a": {"masker.size": 3}}}, "variants.a.masker.size: random has no argument 'size'"),
    ({"variants": {"a": {"train.batch_size": 4}}}, "variants.a.train.batch_size: a variant may not change this"),
    ({"variants": {"a": {"seed": 3}}}, "variants.a.seed: a variant may not change this"),
    ({"budget": {"match": "flops"}}, "budget.match: expected one of epochs, tokens, got 'flops'"),
    ({"budget": {"match": "tokens", "reference": "r25"}}, "budget.reference: no variant named 'r25'"),
    ({"budget": {"epochs": 1, "steps": 3}}, "budget: give one of epochs, steps, tokens, not epochs and steps"),
    ({"eval": {"knn": False}}, "eval: measure something"),
    ({"seeds": 0}, "seeds: expected a positive count"),
    ({"base": "nothere.yaml"}, "base: 'nothere.yaml': no such recipe file"),
    ({"device": "gpu"}, "device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_spec_errors_are_one_line_naming_the_file_and_key(tmp_path, registry, changes, message):
    path = write_spec(tmp_path, **changes)
    with pytest.raises(ConfigError) as info:
        load_spec(path, registry=registry)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_device_torch_does_not_know_stops_the_comparison_before_any_run(tmp_path, capsys):
    path = write_spec(tmp_path)
    assert cli.main(["compare", str(path), "--device", "gpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == "maskkit: error: --device: expected auto, cpu, cuda or cuda:N, got 'gpu'\n"
    assert not (tmp_path / "out").exists()


def test_spec_forms_resolve_to_recipes(tmp_path, registry):
    path = write_spec(tmp_path, variants={"base": None, "swap": {"masker": {"name": "random", "ratio": 0.5}},
                                          "dotted": {"masker.ratio": 0.5}, "cli": ["masker.ratio=0.5"]},
                      seeds=[3, 7], overrides=["train.base_lr=2.0e-3"])
    spec = load_spec(path, registry=registry)
    trees = {v.name: v.tree for v in spec.variants}
    assert trees["base"]["masker"] == {"name": "random", "ratio": 0.75}
    assert trees["swap"] == trees["dotted"] == trees["cli"] != trees["base"]
    assert all(t["train"]["base_lr"] == 2e-3 for t in trees.values())
    assert spec.seeds == (3, 7) and spec.data_seed == 0 and [v.name for v in spec.variants] == list(trees)
    assert spec.variant("swap").describe() == "masker={name: random, ratio: 0.5}"
    plan = make_plan(spec, registry)
    assert [r.run_id for r in plan.runs][:4] == ["base/seed3", "swap/seed3", "dotted/seed3", "cli/seed3"]
    for run in plan.runs:  # every run: its own init/mask seed, the one data order, the budget's steps
        assert run.recipe["seed"] == run.seed and run.recipe["data_seed"] == 0
        assert run.recipe["train"]["max_steps"] == 4


SHIPPED_SPECS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "compare").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: p.stem)
def test_shipped_comparisons_load_and_plan(path):
    """Every spec under recipes/compare/ builds every variant (block and grid come from maskkit-blockmask)."""
    pytest.importorskip("maskkit_blockmask")
    registry = maskkit.Registry.from_plugins()
    spec = load_spec(path, registry=registry)
    plan = make_plan(spec, registry)
    assert len(plan.runs) == len(spec.variants) * len(spec.seeds) and len(plan.runs) >= 4
    assert len({run.recipe["data_seed"] for run in plan.runs}) == 1
    if plan.match == "epochs":
        assert all(run.steps == plan.runs[0].steps > 0 for run in plan.runs)


def test_matched_token_budget_steps_by_hand(tmp_path, registry):
    """7x7 = 49 patches + 1 cls token, batch 8, 96 images -> 12 steps/epoch.
    random 0.75 hides 49 - int(49 * 0.25) = 37: 12 visible + 1 = 13 tokens/image, 104/step.
    random 0.5 hides 49 - int(49 * 0.5) = 25: 24 visible + 1 = 25 tokens/image, 200/step.
    dense encoder: all 49 + 1 = 50 tokens/image, 400/step."""
    variants = {"r75": {}, "r50": {"masker.ratio": 0.5}, "dense": {"encoder.dense": True}}
    plan = make_plan(load_spec(write_spec(tmp_path, variants=variants,
                                          budget={"match": "tokens", "steps": 50, "reference": "r75"}),
                               registry=registry), registry)
    assert plan.steps_per_epoch == 12
    assert [v.tokens_per_image for v in plan.variants] == [13, 25, 50]
    assert [v.tokens_per_step for v in plan.variants] == [104, 200, 400]
    assert plan.budget_tokens == 50 * 104 == 5200
    assert [v.steps for v in plan.variants] == [50, 26, 13]  # 5200/200 = 26, 5200/400 = 13
    assert [r.recipe["train"]["max_steps"] for r in plan.runs] == [50, 26, 13]
    assert "equal encoder tokens" in plan.budget_text()

    plan = make_plan(load_spec(write_spec(tmp_path, variants=variants, budget={"match": "tokens", "tokens": 1000}),
                               registry=registry), registry)
    assert [v.steps for v in plan.variants] == [10, 5, 3]  # 9.6 -> 10, 5.0, 2.5 -> 3 (halves round up)
    path = write_spec(tmp_path, variants=variants, budget={"match": "tokens", "tokens": 1000})
    path.write_text(path.read_text().replace("tokens: 1000", "tokens: 1.0e3"))  # YAML 1.2: a float, but whole
    assert "1.0e3" in path.read_text()
    float_plan = make_plan(load_spec(path, registry=registry), registry)
    assert [v.steps for v in float_plan.variants] == [10, 5, 3]

    plan = make_plan(load_spec(write_spec(tmp_path, variants=variants, budget={"match": "epochs", "epochs": 2}),
                               registry=registry), registry)
    assert [v.steps for v in plan.variants] == [24, 24, 24]
    assert [v.encoder_tokens for v in plan.variants] == [24 * 104, 24 * 200, 24 * 400]
    assert "equal epochs" in plan.budget_text()


def test_plan_refuses_a_variant_whose_model_cannot_be_built(tmp_path, registry):
    """Caught before anything trains, not when that variant's run starts."""
    spec = load_spec(write_spec(tmp_path, variants={"r75": {}, "deep": {"decoder.depthh": 2}}), registry=registry)
    with pytest.raises(ConfigError, match=r"spec.yaml: variants.deep.decoder.depthh: mae has no argument 'depthh'"):
        make_plan(spec, registry)


def test_training_time_counts_the_work_behind_the_final_checkpoint():
    timing = {"sessions": [{"start_step": 0, "marks": [[2, 1.0], [4, 2.0]]},  # crashed after step 5
                           {"start_step": 4, "marks": [[6, 1.5]]}]}
    assert training_time(timing, final_step=6) == 2.0 + 1.5
    assert training_time({"sessions": [{"start_step": 0, "marks": []}]}) == 0.0
    assert training_time(None) is None


# -- end to end -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory, registry):
    """The two-variant comparison, uninterrupted."""
    folder = tmp_path_factory.mktemp("full")
    spec = load_spec(write_spec(folder), registry=registry)
    outcome = run_comparison(make_plan(spec, registry), folder / "out", registry=registry, console=quiet(),
                             progress=False)
    return folder / "out", outcome


def test_comparison_end_to_end_writes_every_report_file(full):
    out, outcome = full
    assert sorted(outcome.trained) == ["r50/seed0", "r75/seed0"] and not outcome.failed
    for name in REPORT_FILES:
        assert (out / "report" / name).is_file() and (out / "report" / name).stat().st_size > 0, name
    from PIL import Image

    for name in REPORT_FILES[5:]:
        assert Image.open(out / "report" / name).size[0] > 100
    with (out / "report" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [("r75", "0", "done"), ("r50", "0", "done")]
    assert [int(r["tokens_per_step"]) for r in rows] == [104, 200]
    for r in rows:  # percentages in the CSV, as in the tables, with the unit in the column name
        assert 1 < float(r["knn_top1_pct"]) <= 100 and 1 < float(r["linear_top1_pct"]) <= 100
        assert 1 < float(r["random_init_knn_top1_pct"]) <= 100  # the random-init baseline is scored by default
        assert float(r["final_loss"]) > 0 and float(r["images_per_s"]) > 0 and float(r["train_time_s"]) > 0
        assert 0 < float(r["masker_ms_per_batch"]) < 1000
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["comparison"]["budget"]["match"] == "epochs"
    r50 = results["variants"][1]
    assert r50["variant"] == "r50" and r50["knn_top1"]["n"] == 1 and r50["knn_top1"]["std"] is None
    assert 100 * r50["knn_top1"]["mean"] == pytest.approx(float(rows[1]["knn_top1_pct"]))  # fractions in JSON
    assert 100 * r50["delta_knn_top1"]["mean"] == pytest.approx(float(rows[1]["knn_top1_pct"]) -
                                                                float(rows[0]["knn_top1_pct"]))
    with (out / "report" / "summary.csv").open() as handle:
        summary_rows = list(csv.DictReader(handle))
    assert float(summary_rows[1]["delta_knn_top1_points_mean"]) == pytest.approx(100 * r50["delta_knn_top1"]["mean"])
    # the random-init encoder of a seed is scored once and shared by the variants (the same encoder)
    assert rows[0]["random_init_knn_top1_pct"] == rows[1]["random_init_knn_top1_pct"]
    assert len(list((out / "baselines").glob("*.json"))) == 1
    report = (out / "report" / "report.md").read_text()
    assert ("| variant | masker | kNN top-1 (%) | linear top-1 (%) | final loss | images/s | masker ms/batch | "
            "enc. tokens/step") in report
    assert "| r50 | random(ratio=0.5) |" in report and "| (random init) | r75's encoder, untrained |" in report
    assert "equal epochs" in report and "data_seed 0" in report and "![" in report
    assert "## Read before ranking" in report and "One seed: the differences between variants have no error bar" \
        in report and results["findings"][0].startswith("One seed")
    # the same data order in every run, masks and init from the seed; the schedule planned over the steps trained
    recipes = [yaml.safe_load((out / "runs" / v / "seed0" / "recipe.yaml").read_text()) for v in ("r75", "r50")]
    assert [(r["seed"], r["data_seed"], r["train"]["max_steps"], r["train"]["epochs"]) for r in recipes] == \
        [(0, 0, 4, 1)] * 2
    samples = torch.load(out / "runs" / "r50" / "seed0" / "samples.pt", weights_only=True)
    assert samples["pictures"].shape == (3, 4, 1, 28, 28) and samples["masks"].shape == (4, 49)
    assert samples["masks"].sum(1).tolist() == [25] * 4
    assert samples["mask_images"].shape == (4, 1, 28, 28)  # the test images masks.png draws the masks on


def test_resume_a_half_finished_comparison(full, tmp_path, registry):
    full_out, _ = full
    spec = load_spec(write_spec(tmp_path), registry=registry)
    plan = make_plan(spec, registry)
    out = tmp_path / "out"
    crashing = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(),
                                                                      "crash": CrashAfterCheckpoint("r50", 2)})
    with pytest.raises(Crash):
        run_comparison(plan, out, registry=crashing, console=quiet(), progress=False)
    assert (out / "runs" / "r75" / "seed0" / "eval.json").is_file()
    assert not (out / "runs" / "r50" / "seed0" / "eval.json").exists()

    outcome = run_comparison(plan, out, registry=registry, console=quiet(), progress=False, report=False)
    assert outcome.skipped == ("r75/seed0",) and outcome.resumed == ("r50/seed0",) and not outcome.trained
    for run_id in ("r75/seed0", "r50/seed0"):  # exactly the uninterrupted numbers
        assert scores(out, run_id) == scores(full_out, run_id)
        assert losses(out, run_id) == losses(full_out, run_id)

    (out / "runs" / "r75" / "seed0" / "eval.json").unlink()  # trained but not evaluated: evaluate only
    outcome = run_comparison(plan, out, registry=registry, console=quiet(), progress=False, report=False)
    assert outcome.evaluated == ("r75/seed0",) and outcome.skipped == ("r50/seed0",) and not outcome.trained
    assert scores(out, "r75/seed0") == scores(full_out, "r75/seed0")

    assert worker_main([str(out), "r50/seed0"]) == 0  # the per-GPU worker finds the run finished

    changed = make_plan(load_spec(write_spec(tmp_path, budget={"match": "epochs", "steps": 5}), registry=registry),
                        registry)
    with pytest.raises(MaskkitError, match=r"trained with a different recipe.*differs in train\.max_steps"):
        run_comparison(changed, out, registry=registry, console=quiet(), progress=False)


def test_cli_report_only_and_dry_run(full, tmp_path, capsys):
    out, _ = full
    parser = argparse.ArgumentParser(prog="maskkit")
    add_parser(parser.add_subparsers(dest="command"))
    shutil.rmtree(out / "report")
    args = parser.parse_args(["compare", str(tmp_path / "unused.yaml"), "--out", str(out), "--report-only"])
    (tmp_path / "unused.yaml").write_text("{}")
    console = Console(width=250, force_terminal=False)
    assert args.func(args, console) == 0
    printed = capsys.readouterr().out
    assert "r75" in printed and "r50" in printed and "kNN top-1" in printed
    assert all((out / "report" / name).is_file() for name in REPORT_FILES)

    quickstart = str(Path(__file__).parents[1] / "recipes" / "quickstart.yaml")
    spec = write_spec(tmp_path, base=quickstart, variants={"r75": {}, "block50": {
        "masker": {"name": "blok", "ratio": 0.5}}})
    args = parser.parse_args(["compare", str(spec), "--dry-run"])
    with pytest.raises(ConfigError, match=rf"^{spec}: variants.block50.masker.name: unknown masker 'blok'"):
        args.func(args, console)


class PoisonVariant:
    """Sets a weight of ``variant``'s model to NaN before its first step: a diverged run."""

    def __init__(self, variant):
        self.variant = variant

    @maskkit.hookimpl
    def maskkit_step_start(self, trainer, model, step):
        if trainer.run_dir.parent.name == self.variant:
            with torch.no_grad():
                model.decoder.decoder_pred.weight.fill_(float("nan"))


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path):
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"small": SmallFashion(),
                                                                      "poison": PoisonVariant("r75")})
    spec = load_spec(write_spec(tmp_path, budget={"steps": 2}, eval={"knn": True, "mask_samples": 2,
                                                                     "reconstructions": 2}), registry=registry)
    outcome = run_comparison(make_plan(spec, registry), tmp_path / "out", registry=registry, console=quiet(),
                             progress=False)
    assert outcome.failed == ("r75/seed0",) and outcome.trained == ("r50/seed0",)
    assert "non-finite loss at step 0" in outcome.errors["r75/seed0"]
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "**Failed runs:**" in report and "r75/seed0: non-finite loss" in report
    again = run_comparison(make_plan(spec, registry), tmp_path / "out", registry=registry, console=quiet(),
                           progress=False, report=False)
    assert again.failed == ("r75/seed0",) and again.skipped == ("r50/seed0",) and not again.trained  # not retried


def test_accuracy_axis_zooms_on_the_values_from_a_multiple_of_five():
    from maskkit.compare.report import accuracy_axis

    bottom, top = accuracy_axis([70.5, 73.6, 78.3, 77.9])
    assert bottom == 65.0 and 78.3 < top <= 80.0
    assert accuracy_axis([3.0, 10.0])[0] == 0.0  # never below zero
    assert accuracy_axis([99.5, 100.0])[1] == 100.0  # never above 100


def test_paired_differences_are_signed_and_their_spread_is_not():
    from maskkit.compare.formats import plus_minus

    assert plus_minus({"mean": -0.022, "std": 0.0192}, lambda x: f"{x:+.2f}", 100) == "-2.20 ± 1.92"
    assert plus_minus({"mean": 0.0028, "std": None}, lambda x: f"{x:+.2f}", 100) == "+0.28"


def test_the_schedule_is_planned_over_the_steps_trained(tmp_path, registry):
    """A budget shorter than the base's training keeps the base's share of warm-up (1 of 8 epochs: an eighth)
    instead of cutting the base's schedule, and each run's recipe says what it trains."""
    spec = load_spec(write_spec(tmp_path, overrides=["train.max_steps=null", "train.epochs=8",
                                                     "train.warmup_epochs=1"], budget={"steps": 16}),
                     registry=registry)
    plan = make_plan(spec, registry)  # 96 images of batch 8: 12 steps an epoch; the base trains 96 steps
    assert [v.warmup_steps for v in plan.variants] == [2, 2]  # 16 / 8
    train = plan.runs[0].recipe["train"]
    assert (train["max_steps"], train["epochs"]) == (16, 2) and train["warmup_epochs"] * 12 == pytest.approx(2)
    assert "warm-up (2 of 16 steps" in plan.schedule_text()
    from maskkit.compare.results import findings

    assert not any("warm-up covers" in note for note in findings(plan, []))
    mostly = make_plan(load_spec(write_spec(tmp_path, overrides=["train.max_steps=null", "train.epochs=2",
                                                                 "train.warmup_epochs=1.5"], budget={"steps": 8}),
                                 registry=registry), registry)
    assert any(note.startswith("r75: learning-rate warm-up covers 6 of its 8 steps") for note in
               findings(mostly, []))


def test_findings_say_in_words_what_the_numbers_do_not_support(full):
    import attrs

    from maskkit.compare.results import findings, seed_stats

    plan = attrs.evolve(full[1].plan, seeds=(0, 1, 2))
    stat = seed_stats([0.70, 0.71, 0.72], interval=True)
    assert stat["ci95"] == pytest.approx([0.71 - 4.303 * 0.01 / 3 ** 0.5, 0.71 + 4.303 * 0.01 / 3 ** 0.5])
    summary = [
        {"variant": "r75", "knn_top1": seed_stats([0.6] * 3), "random_init_knn_top1": seed_stats([0.5] * 3),
         "linear_top1": seed_stats([0.6] * 3), "random_init_linear_top1": seed_stats([0.5] * 3)},
        {"variant": "r50", "knn_top1": seed_stats([0.45, 0.46, 0.47]), "random_init_knn_top1": seed_stats([0.5] * 3),
         "linear_top1": seed_stats([0.65] * 3), "random_init_linear_top1": seed_stats([0.5] * 3),
         "delta_knn_top1": seed_stats([0.01, -0.02, 0.015], interval=True),
         "delta_linear_top1": seed_stats([0.05, 0.06, 0.055], interval=True)}]
    notes = findings(plan, summary)
    assert not any(n.startswith("One seed") for n in notes)
    assert any(n.startswith("r50 vs r75, kNN top-1: +0.17 points, 95% interval [") and
               n.endswith("within the seeds' spread, no ranking.") for n in notes), notes
    assert any(n.startswith("r50 vs r75, linear top-1: +5.50 points") and n.endswith("r50 is better.")
               for n in notes), notes
    assert any(n.startswith("r50 scores below its encoder at random initialisation (kNN top-1 46.00% against "
                            "50.00%)") for n in notes), notes
    assert not any(n.startswith("r75 scores below") for n in notes)
    quick = attrs.evolve(plan, eval=plan.eval.as_quick())
    assert findings(quick, summary)[0].startswith("Quick evaluation: kNN on 2000 train / 1000 test images")


def test_quick_mode_scores_a_fixed_subset_and_the_report_says_so(tmp_path, registry, capsys):
    from maskkit.data.fashion_mnist import FashionMNIST
    from maskkit.evaluate import subset

    data = FashionMNIST("test", source="embedded")
    a, b = subset(data, 50, seed=0), subset(data, 50, seed=0)
    assert len(a) == 50 and a.indices == b.indices and a.indices == sorted(set(a.indices))
    assert torch.equal(a[3][0], data[a.indices[3]][0]) and a.mean == data.mean and subset(data, None) is data
    spec = load_spec(write_spec(tmp_path, variants={"r75": {}}, budget={"steps": 2},
                                eval={"knn": True, "linear": True, "reconstructions": 0, "mask_samples": 0}),
                     registry=registry)
    quick = make_plan(spec, registry)
    quick = attrs_evolve(quick, eval=quick.eval.as_quick())
    assert not quick.eval.linear and quick.eval.train_images == 2000
    run_comparison(quick, tmp_path / "out", registry=registry, console=quiet(), progress=False)
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert report.startswith("# Comparison: spec (QUICK evaluation: a subset, kNN only)")
    assert "on a fixed subset (quick mode)" in report and "linear top-1" not in report


def attrs_evolve(obj, **changes):
    import attrs

    return attrs.evolve(obj, **changes)


def test_aux_losses_reach_the_report_when_logged(full, tmp_path):
    from maskkit.compare.report import write_report

    out = tmp_path / "out"
    shutil.copytree(full[0], out)
    for variant, value in (("r75", 0.25), ("r50", 0.5)):
        metrics = out / "runs" / variant / "seed0" / "metrics.jsonl"
        lines = metrics.read_text().splitlines()
        lines[-1] = json.dumps({**json.loads(lines[-1]), "aux/masker.entropy": value})
        metrics.write_text("\n".join(lines) + "\n")
    report = write_report(out, full[1].plan)
    with (report / "results.csv").open() as handle:
        assert [float(r["aux/masker.entropy"]) for r in csv.DictReader(handle)] == [0.25, 0.5]
    text = (report / "report.md").read_text()
    assert "| variant | masker.entropy |" in text and "| r50 | 0.5000 |" in text

"""The runs of a comparison: each variant's cost (encoder tokens per step), the matched budget in steps, and one
training recipe per variant x seed.

Cost model. The encoder's work per image is the number of tokens it processes: the prefix tokens (cls,
registers) plus the visible patches for a sparse encoder (MAE: ``P + N - num_hidden``), or all ``N`` patches
for a dense one. An optimizer step processes ``tokens_per_image * batch_size * accum_steps`` tokens. The decoder
always sees all ``N`` tokens, so it costs the same for every masker and is not counted.

Budget. ``match: epochs`` gives every variant the same steps (so the same images, in the same order); the cost
then differs and the report shows it. ``match: tokens`` gives every variant the encoder tokens the reference
variant processes in its steps (or ``budget.tokens``): ``steps = max(1, round(tokens / tokens_per_step))`` (halves
round up), so a variant that shows the encoder twice as many patches trains half as many steps.

Schedule. The learning-rate schedule is planned over the steps a run actually trains, not cut from the base
recipe's: each variant's warm-up keeps the share of the training that its own recipe gives it
(``warmup_epochs / epochs``: 1 of 8 epochs stays an eighth; the base's, unless the variant changes
``train.warmup_epochs``), scaled to the steps that variant trains under the budget, and the cosine decays to
``min_lr`` at the run's last step. Each run's recipe says so: ``max_steps`` is its steps, ``epochs`` the epochs
they start, ``warmup_epochs`` the scaled warm-up.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import attrs
import torch

from maskkit.builder import masker_hidden
from maskkit.compare.formats import si
from maskkit.compare.spec import BUILD_ERRORS, CompareSpec, EvalSpec, component_error
from maskkit.errors import ConfigError
from maskkit.recipe import Recipe

PLAN_FORMAT = 1


@attrs.frozen
class VariantPlan:
    """One variant's cost and budget. ``hidden`` is None for a masker hiding a varying count (dense encoder)."""

    name: str
    changes: str
    masker: dict
    grid: tuple[int, int]
    num_patches: int
    num_prefix_tokens: int
    hidden: int | None
    sparse: bool
    tokens_per_image: int
    tokens_per_step: int
    steps: int
    epochs: float
    other_changes: str = ""  # the changes outside the masker section
    warmup_steps: int = 0  # learning-rate warm-up: the variant recipe's share of its training, scaled to ``steps``

    @property
    def encoder_tokens(self) -> int:
        """Encoder tokens one run of this variant processes in all."""
        return self.steps * self.tokens_per_step

    @property
    def mask_ratio(self) -> float | None:
        return None if self.hidden is None else self.hidden / self.num_patches

    def masker_text(self) -> str:
        """``block(ratio=0.5)``: the masker's registry name and arguments."""
        args = ", ".join(f"{k}={v}" for k, v in self.masker.items() if k != "name")
        return f"{self.masker.get('name')}({args})"


@attrs.frozen
class RunPlan:
    """One training run: a variant at a seed, with its full recipe (what ``recipe.yaml`` of the run holds)."""

    variant: str
    seed: int
    steps: int
    recipe: dict = attrs.field(repr=False)

    @property
    def run_id(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def run_dir(self, out_dir: str | Path) -> Path:
        return Path(out_dir) / "runs" / self.variant / f"seed{self.seed}"


@attrs.frozen
class Plan:
    """Everything needed to run and report a comparison; saved as ``plan.json`` in the output folder (the
    worker processes and the report read it, never the spec)."""

    spec_file: str
    description: str
    base: str
    match: str
    reference: str | None
    budget_tokens: int | None
    steps_per_epoch: int
    batch_size: int
    effective_batch: int
    train_images: int
    seeds: tuple[int, ...]
    data_seed: int
    device: str | None
    eval: EvalSpec
    variants: tuple[VariantPlan, ...]
    runs: tuple[RunPlan, ...]
    # one-file plugins and modules every run loads (the spec's, --plugin, MASKKIT_PLUGINS), so a worker process
    # builds the registry the plan was made with; a base recipe's own plugins travel in each run's recipe
    plugins: tuple[str, ...] = ()

    def variant(self, name: str) -> VariantPlan:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def run(self, run_id: str) -> RunPlan:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise KeyError(run_id)

    def eval_settings(self) -> dict:
        """The evaluation settings an ``eval.json`` must have been made with to count for this plan (as JSON
        holds them: what the runner writes into ``eval.json["settings"]``)."""
        return json.loads(json.dumps(attrs.asdict(self.eval), default=str))

    def evaluated_with(self, scores: Any) -> bool:
        """Whether ``scores`` (a run's ``eval.json``) were made with this plan's evaluation settings: the one test
        by which the runner counts a run finished and the report counts its scores (stale scores, from before
        the spec's ``eval`` changed, count for neither)."""
        return isinstance(scores, dict) and scores.get("settings") == self.eval_settings()

    def schedule_text(self) -> str:
        """One sentence saying how the learning rate was scheduled over the budget (for the report)."""
        warm = list(dict.fromkeys(f"{v.warmup_steps} of {v.steps}" for v in self.variants))
        if len(warm) > 1:
            warm = [f"{v.name} {v.warmup_steps} of {v.steps}" for v in self.variants]
        return (f"learning rate: linear warm-up ({', '.join(warm)} steps, each variant recipe's warm-up share of "
                "its training) then cosine decay to the recipe's min_lr at each run's last step, planned over the "
                "steps trained")

    def budget_text(self) -> str:
        """One sentence saying how the budget was matched (for the report)."""
        spe = self.steps_per_epoch
        if self.match == "epochs":
            steps = self.variants[0].steps
            return (f"equal epochs: every variant trains {steps} steps ({steps / spe:.3g} epochs of {spe} steps, "
                    f"batch {self.effective_batch}) on the same images in the same order; the encoder tokens each "
                    "variant processes differ with its masking (column 'enc. tokens/step').")
        ref = f"the {self.reference} variant's {self.variant(self.reference).steps} steps" if self.reference else \
            "the spec's budget"
        steps = ", ".join(f"{v.name} {v.steps}" for v in self.variants)
        return (f"equal encoder tokens: every variant processes about {si(self.budget_tokens or 0)} encoder tokens "
                f"(as many as {ref}, batch {self.effective_batch}); steps per variant: {steps}. Data order is the "
                "same; a variant with fewer steps sees a prefix of it.")

    def to_json(self) -> dict:
        tree = attrs.asdict(self, recurse=True)
        tree["format"] = PLAN_FORMAT
        return tree

    @classmethod
    def from_json(cls, tree: dict) -> "Plan":
        tree = dict(tree)
        tree.pop("format", None)
        tree["seeds"] = tuple(tree["seeds"])
        tree["plugins"] = tuple(tree.get("plugins") or ())
        tree["eval"] = EvalSpec(**_known(EvalSpec, tree["eval"]))
        tree["variants"] = tuple(VariantPlan(**{**_known(VariantPlan, v), "grid": tuple(v["grid"])})
                                 for v in tree["variants"])
        tree["runs"] = tuple(RunPlan(**_known(RunPlan, r)) for r in tree["runs"])
        return cls(**_known(cls, tree))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(json.loads(Path(path).read_text()))


def _check_blind_masker(masker, grid: tuple[int, int], variant, file: str | None) -> None:
    """Draw a few masks of a blind masker and check them (bool, [B, N], the declared count), so a wrong one is
    refused by the plan and not when its run starts; a masker that looks at the images is checked when drawn."""
    from maskkit.errors import MaskError
    from maskkit.interfaces import masker_context
    from maskkit.masking import check_masker

    name = variant.masker.get("name")
    if {"images", "model"} & set(masker_context(masker, name)):
        return
    try:
        check_masker(masker, grid, name=name, batch_size=4, seeds=(0, 1))
    except MaskError as exc:
        where = f"{file}: " if file else ""
        raise MaskError(f"{where}variants.{variant.name}: {exc}") from None


def _known(cls, tree: dict) -> dict:
    """The keys of ``tree`` that are fields of ``cls`` (a plan.json written by another version loads)."""
    names = {f.name for f in attrs.fields(cls)}
    return {k: v for k, v in tree.items() if k in names}


def tokens_per_image(sparse: bool, num_patches: int, num_prefix_tokens: int, hidden: int | None) -> int:
    """Tokens the encoder processes per image: prefix + visible patches (sparse) or prefix + all (dense)."""
    if sparse:
        if hidden is None:
            raise ValueError("a sparse encoder needs a fixed hidden count")
        return num_prefix_tokens + num_patches - hidden
    return num_prefix_tokens + num_patches


def warmup_share(warmup_epochs: float, steps_per_epoch: int, steps: int) -> float:
    """The share of a recipe's training (``steps`` steps) that its warm-up takes (at most all of it), as the
    engine counts warm-up steps: ``round(warmup_epochs * steps_per_epoch)``."""
    return min(1.0, round(warmup_epochs * steps_per_epoch) / steps) if steps > 0 else 0.0


def _hidden(masker, grid: tuple[int, int], name: Any) -> int | None:
    """:func:`maskkit.builder.masker_hidden`, and any other error it raises as one naming the ``masker``."""
    try:
        return masker_hidden(masker, grid)
    except BUILD_ERRORS as exc:
        raise ConfigError("masker", f"{name}: {exc}") from None


def matched_steps(tokens: int, per_step: int) -> int:
    """Steps that process about ``tokens`` encoder tokens at ``per_step`` tokens a step: the nearest whole number
    (halves round up), at least one."""
    return max(1, int(tokens / per_step + 0.5))


@attrs.frozen
class _EncoderShape:
    grid: tuple[int, int]
    num_prefix_tokens: int
    sparse: bool
    embed_dim: int


def _checks_its_model(masker: Any) -> bool:
    """Whether ``masker`` defines a :meth:`~maskkit.Masker.check_model` of its own (the default accepts all)."""
    from maskkit.interfaces import Masker

    check = getattr(type(masker), "check_model", None)
    return check is not None and check is not Masker.check_model


def make_plan(spec: CompareSpec, registry=None, *, device: str | None = None) -> Plan:
    """Compute each variant's cost and steps and the recipe of every run (seed-major order: all variants at the
    first seed come first, so an interrupted comparison is complete for some seed as early as possible)."""
    from maskkit.builder import build_dataset, build_masker, build_model
    from maskkit.registry import default_registry

    registry = (registry or default_registry()).with_plugins(spec.plugins)
    file = spec.file
    device = device if device is not None else spec.device
    base = Recipe(spec.base_tree, spec.file)
    cfg = base.train
    train_images = len(build_dataset(base, "train", registry))
    spe = (train_images // cfg.batch_size) // cfg.accum_steps
    if spe < 1:
        raise ConfigError("train.batch_size", f"{train_images} training images make no step of batch "
                          f"{cfg.batch_size} x accum_steps {cfg.accum_steps}", file=file)
    effective = cfg.batch_size * cfg.accum_steps
    default_steps = cfg.max_steps or cfg.epochs * spe  # every variant's recipe trains these (SHARED_KEYS)
    budget = spec.budget
    if budget.steps is not None:
        ref_steps = budget.steps
    elif budget.epochs is not None:
        ref_steps = max(1, int(budget.epochs * spe + 0.5))
    else:
        ref_steps = default_steps

    encoders: dict[str, Any] = {}
    costs = []
    for variant in spec.variants:
        recipe = Recipe(variant.tree, file)
        try:
            # Build each distinct model once, so a bad decoder, target or loss argument is refused now and not
            # hours later when its run starts; keep only the encoder's geometry (and width, the maskers' wiring).
            key = json.dumps([recipe.component(s) for s in ("encoder", "decoder", "target", "loss")],
                             sort_keys=True, default=str)
            built = key in encoders
            if not built:  # the model with this variant's masker: its check_model runs too
                with torch.random.fork_rng(devices=[]):
                    enc = build_model(recipe, registry).encoder
                encoders[key] = _EncoderShape(enc.grid, enc.num_prefix_tokens, bool(enc.sparse), enc.embed_dim)
                del enc
            masker = build_masker(recipe, registry, encoders[key])
            if built and _checks_its_model(masker):  # it may refuse the model (a teacher source, no teacher)
                with torch.random.fork_rng(devices=[]):
                    build_model(recipe, registry)
            grid = tuple(encoders[key].grid)
            hidden = _hidden(masker, grid, variant.masker.get("name"))
        except ConfigError as exc:
            raise ConfigError(f"variants.{variant.name}.{exc.key}" if exc.key else f"variants.{variant.name}",
                              exc.message, file=file) from None
        except BUILD_ERRORS as exc:  # a component's constructor refused an argument: name its section
            raise component_error(exc, variant, file) from None
        encoder = encoders[key]
        n = grid[0] * grid[1]
        _check_blind_masker(masker, grid, variant, file)
        if encoder.sparse and hidden is None:
            raise ConfigError(f"variants.{variant.name}.masker", f"{variant.masker.get('name')} hides a varying "
                              "number of patches per sample, but the encoder is sparse (visible tokens only); use "
                              "a dense encoder (encoder.dense: true) or a fixed-count masker", file=file)
        per_image = tokens_per_image(encoder.sparse, n, encoder.num_prefix_tokens, hidden)
        costs.append((variant, grid, n, encoder, hidden, per_image, per_image * effective))

    if budget.match == "tokens":
        if budget.tokens is not None:
            total = budget.tokens
        else:
            total = ref_steps * next(c[6] for c in costs if c[0].name == budget.reference)
    else:
        total = None

    variants = []
    for variant, grid, n, encoder, hidden, per_image, per_step in costs:
        steps = matched_steps(total, per_step) if total is not None else ref_steps
        variants.append(VariantPlan(
            name=variant.name, changes=variant.describe(), masker=variant.masker,
            other_changes=", ".join(c.describe() for c in variant.changes if c.key.split(".")[0] != "masker"),
            grid=grid, num_patches=n,
            num_prefix_tokens=encoder.num_prefix_tokens, hidden=hidden, sparse=bool(encoder.sparse),
            tokens_per_image=per_image, tokens_per_step=per_step, steps=steps, epochs=steps / spe,
            # the variant's own warm-up (train.warmup_epochs is not shared), its share scaled to its steps
            warmup_steps=round(warmup_share(Recipe(variant.tree, file).train.warmup_epochs, spe, default_steps)
                               * steps)))
    runs = []
    for seed in spec.seeds:
        for variant, vplan in zip(spec.variants, variants):
            tree = copy.deepcopy(variant.tree)
            tree["seed"] = seed
            tree["data_seed"] = spec.data_seed
            train = tree.setdefault("train", {})
            # the schedule over the steps trained (see the module docstring), said in the run's recipe
            train.update(max_steps=vplan.steps, epochs=max(1, math.ceil(vplan.steps / spe)),
                         warmup_epochs=vplan.warmup_steps / spe)
            if device is not None:
                train["device"] = device
            runs.append(RunPlan(variant.name, seed, vplan.steps, tree))
    return Plan(spec_file=file, description=spec.description, base=spec.base, match=budget.match,
                reference=budget.reference if budget.match == "tokens" and budget.tokens is None else None,
                budget_tokens=total, steps_per_epoch=spe, batch_size=cfg.batch_size, effective_batch=effective,
                train_images=train_images, seeds=spec.seeds, data_seed=spec.data_seed, device=device,
                eval=spec.eval, variants=tuple(variants), runs=tuple(runs), plugins=registry.plugin_specs)

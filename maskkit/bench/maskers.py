"""The extra cost of a masker: ``maskkit bench --masker NAME[,key=value,...]``.

Two models of the same recipe that differ only in the masker, MAE's ``random`` and ``NAME``, with the same
weights, images and optimizer. Four things are timed round-robin in one process (so a shared machine's drifts
hit all alike): drawing a batch of masks alone with each masker (as the model draws it, with the context it
names and the mask check), and a whole training step (forward with the masks drawn inside it, auxiliary losses,
backward, AdamW) with each. The ratios against ``random`` are the masker's cost.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from maskkit.errors import ConfigError


def parse_masker(text: str) -> dict[str, Any]:
    """``"NAME[,key=value,...]"`` -> a recipe masker spec ``{"name": NAME, key: value}`` (values as YAML)."""
    from maskkit.recipe import apply_overrides

    name, *pairs = [part.strip() for part in text.split(",") if part.strip()]
    bad = [p for p in pairs if "=" not in p]
    if not name or "=" in name or bad:
        raise ConfigError("--masker", f"expected NAME[,key=value,...] such as random,ratio=0.6, got {text!r}")
    return apply_overrides({"masker": {"name": name}}, [f"masker.{p}" for p in pairs],
                           file="--masker")["masker"]


@attrs.frozen
class MaskerCost:
    """Median seconds of drawing one batch of masks and of one training step, with ``random`` and the masker."""

    model: str
    masker: str  # as given: NAME[,key=value]
    batch_size: int
    draw_random: float
    draw_masker: float
    step_random: float
    step_masker: float
    aux: tuple[str, ...]  # the auxiliary losses the masker's model adds

    @property
    def step_ratio(self) -> float:
        return self.step_masker / self.step_random

    @property
    def draw_share(self) -> float:
        """The masker's draw as a fraction of its step."""
        return self.draw_masker / self.step_masker

    def line(self) -> str:
        return (f"{self.model}, batch {self.batch_size}: masker {self.masker} draws a batch in "
                f"{1e3 * self.draw_masker:.2f} ms (random: {1e3 * self.draw_random:.2f} ms, "
                f"{self.draw_masker / self.draw_random:.1f}x); a training step with it takes "
                f"{self.step_masker:.3f} s against {self.step_random:.3f} s with random: {self.step_ratio:.2f}x "
                f"(the draw is {100 * self.draw_share:.1f}% of its step)")


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    from maskkit.bench.steps import time_call

    return time_call(fn, device)


def measure_masker_cost(spec, masker: str, *, batch_size: int, steps: int, warmup: int, device: torch.device,
                        amp_dtype: torch.dtype | None = None, registry=None, seed: int = 0) -> MaskerCost:
    """Time ``masker`` (``NAME[,key=value]``) against ``random`` on the model of ``spec``
    (:func:`maskkit.bench.steps.model_spec`): see the module docstring."""
    from maskkit.builder import build_model
    from maskkit.engine.optim import make_optimizer
    from maskkit.recipe import Recipe

    masker_spec = parse_masker(masker)
    models = {}
    for key, mspec in (("random", {"name": "random", "ratio": 0.75}), ("masker", masker_spec)):
        torch.manual_seed(seed)  # the same weights for the shared parts
        models[key] = build_model(Recipe({**spec.tree, "masker": mspec}, f"bench:{spec.name}"), registry)
        models[key] = models[key].to(device).train()
    enc = models["random"].encoder
    gen = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn(batch_size, enc.in_chans, *enc.img_size, generator=gen, device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def drawer(model) -> Callable[[], Any]:
        def draw():
            with autocast():
                return model.draw(batch_size, gen, device, images=images, sync_checks=device.type == "cpu")
        return draw

    def stepper(model) -> Callable[[], Any]:
        optimizer = make_optimizer(model, lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), device=device)
        counter = [0]

        def step():
            with autocast():
                out = model(images, generator=gen, step=counter[0], sync_checks=device.type == "cpu")
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter[0] += 1
            return out
        return step

    members = {"draw_random": drawer(models["random"]), "draw_masker": drawer(models["masker"]),
               "step_random": stepper(models["random"]), "step_masker": stepper(models["masker"])}
    aux: Sequence[str] = ()
    for name, fn in members.items():
        for _ in range(warmup):
            out = fn()
        if name == "step_masker":
            aux = tuple(out.aux)
    times: dict[str, list[float]] = {name: [] for name in members}
    order = list(members)
    for round_ in range(steps):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            times[name].append(_timed(members[name], device))
    med = {name: statistics.median(values) for name, values in times.items()}
    return MaskerCost(spec.name, masker, batch_size, med["draw_random"], med["draw_masker"], med["step_random"],
                      med["step_masker"], tuple(aux))

"""Time one pretraining step (forward, backward, AdamW) of several models in one process, round-robin.

Variants of one model size (all built with the same widths and depths, same batch, same optimizer):

* ``mae``: maskkit's MAE, the encoder run on the visible patches only (the paper's sparse design);
* ``dense``: the same encoder fed all patches, hidden ones replaced by a mask token (the paper's baseline);
* ``official``: the official ``models_mae.py`` structure (:mod:`maskkit.mae_reference`) with maskkit's
  weights copied in, the "official-style reference" maskkit's MAE step must not be slower than;
* ``hf``: transformers' ``ViTMAEForPreTraining`` (SDPA attention) as an external reference, when installed.

Model FLOPs of one step are counted once per variant with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
products, convolutions and attention, forward and backward); the peak is the best rate of a large matrix
product in the bench's dtype, timed in the same round-robin, so model-FLOPs utilisation (MFU) is relative to
what this device reaches on a plain GEMM now, which also cancels out much of a shared machine's noise.
"""

from __future__ import annotations

import contextlib
import gc
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from maskkit.errors import ConfigError

VARIANTS = ("mae", "dense", "official", "hf")
VARIANT_LABELS = {"mae": "maskkit MAE (visible patches)", "dense": "mask-token encoder (all patches)",
                  "official": "official-style MAE (models_mae.py structure)",
                  "hf": "transformers ViTMAEForPreTraining"}


# -- FLOP counting ------------------------------------------------------------------------------------------


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _extra_flop_formulas() -> dict:
    """Formulas FlopCounterMode lacks: the CPU flash-attention kernels that SDPA picks on the CPU (the
    counter knows the CUDA ones only), with the same counts as its CUDA SDPA formulas."""
    aten = torch.ops.aten
    extra = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    return extra


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())


def count_flops(fn: Callable[[], Any]) -> int:
    """Model FLOPs (2 per multiply-add) of running ``fn`` once."""
    counter = flop_counter()
    with counter:
        fn()
    return int(counter.get_total_flops())


# -- models -------------------------------------------------------------------------------------------------


@attrs.frozen
class ModelSpec:
    """One model size: ``name`` as given (``vit_base_patch16``), the recipe tree of maskkit's MAE for it."""

    name: str
    tree: dict
    source: str  # the registered recipe it came from, or "built-in defaults"


def model_spec(name: str, overrides: Sequence[str] = (), registry=None) -> ModelSpec:
    """The MAE recipe for ``name``: the registered ``mae_<name>`` recipe when there is one (so the shipped
    recipes are what is measured), or the registered recipe ``name`` itself (``quickstart``), else MAE's
    defaults (75% random masking, decoder 8 x 512, 16 heads, norm-pix MSE) around the timm ViT ``name``
    (``_224`` appended when ``name`` is not itself a timm model).
    ``overrides`` are recipe overrides (``encoder.depth=2``)."""
    import timm

    from maskkit.recipe import Recipe, load_recipe

    for recipe_name in (f"mae_{name}", name):  # a registered recipe may be named directly (quickstart)
        if registry is not None and recipe_name in registry.entries("recipe"):
            recipe = load_recipe(recipe_name, overrides, registry=registry)
            return ModelSpec(name, recipe.tree, recipe_name)
    timm_name = name if timm.is_model(name) else f"{name}_224"
    if not timm.is_model(timm_name):
        raise ConfigError("--models", f"{name!r} is neither a timm ViT nor one with '_224' appended "
                                      "(e.g. vit_base_patch16, vit_large_patch16, vit_huge_patch14)")
    patch = re.search(r"patch(\d+)", timm_name)
    size = re.search(r"_(\d+)$", timm_name)
    tree = {
        "data": {"name": "image_folder", "root": ".", "in_chans": 3},
        "masker": {"name": "random", "ratio": 0.75},
        "encoder": {"name": timm_name, "img_size": int(size.group(1)) if size else 224,
                    "patch_size": int(patch.group(1)) if patch else 16, "in_chans": 3},
        "decoder": {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16},
        "target": {"name": "norm_pixels"},
        "loss": {"name": "mse"},
    }
    recipe = Recipe(tree, f"bench:{name}").with_overrides(overrides)
    recipe.validate()
    return ModelSpec(name, recipe.tree, "built-in defaults")


def build_maskkit(spec: ModelSpec, dense: bool, registry) -> torch.nn.Module:
    """maskkit's model for ``spec``; ``dense=True`` gives the mask-token baseline (``encoder.dense: true``)."""
    from maskkit.builder import build_model
    from maskkit.recipe import Recipe

    tree = {**spec.tree, "encoder": {**spec.tree["encoder"], "dense": dense}}
    return build_model(Recipe(tree, f"bench:{spec.name}"), registry)


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return hasattr(transformers, "ViTMAEForPreTraining")


def build_hf_like(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' ``ViTMAEForPreTraining`` with ``model``'s sizes (read off the built maskkit model, so both
    have the same widths, depths, heads and MLPs), SDPA attention, norm-pix loss, random init."""
    import transformers

    enc, dec = model.encoder, model.decoder
    enc_block, dec_block = enc.blocks[0], dec.decoder_blocks[0]
    if enc.img_size[0] != enc.img_size[1] or enc.patch_size[0] != enc.patch_size[1]:
        raise ConfigError("encoder", "the transformers reference needs square images and patches")
    config = transformers.ViTMAEConfig(
        image_size=enc.img_size[0], patch_size=enc.patch_size[0], num_channels=enc.in_chans,
        hidden_size=enc.embed_dim, num_hidden_layers=len(enc.blocks), num_attention_heads=enc_block.attn.num_heads,
        intermediate_size=enc_block.mlp.fc1.out_features,
        decoder_hidden_size=dec.decoder_embed.out_features, decoder_num_hidden_layers=len(dec.decoder_blocks),
        decoder_num_attention_heads=dec_block.attn.num_heads, decoder_intermediate_size=dec_block.mlp.fc1.out_features,
        mask_ratio=float(model.masker.ratio), norm_pix_loss=bool(getattr(model.target, "normalize", True)),
        layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu", attn_implementation="sdpa")
    return transformers.ViTMAEForPreTraining(config)


# -- the step -----------------------------------------------------------------------------------------------


@attrs.define
class Variant:
    """One model being benchmarked: how to run one training step, and what was measured."""

    model_name: str
    kind: str  # mae | dense | official | hf
    model: torch.nn.Module
    step: Callable[[], torch.Tensor]  # one training step
    params: int
    compile: bool = False  # torch.compile the model once its FLOPs are counted (eagerly)
    compile_scope: str = "components"  # components | blocks (see maskkit.engine.compiling)
    flops: int = 0
    peak_memory: int | None = None
    warmup_seconds: float = 0.0  # the warm-up steps after the FLOP count, compilation included
    times: list[float] = attrs.field(factory=list)

    @property
    def label(self) -> str:
        return VARIANT_LABELS[self.kind]

    def compile_model(self) -> None:
        """``torch.compile`` in place as ``train.compile_scope`` does: scope ``components``, maskkit's
        components one by one but the masker, as the trainer does (dynamo cannot build the frozen attrs
        ``MaskedOutput`` of ``MaskedModel.forward``), and the references whole; scope ``blocks``, every model's
        transformer blocks one by one."""
        from maskkit.engine.compiling import compile_model, transformer_blocks

        if self.kind not in ("hf", "official"):
            compile_model(self.model, self.compile_scope, skip=(self.model.masker,))
        elif self.compile_scope == "components":
            self.model.compile()
        else:
            for block in transformer_blocks(self.model):
                block.compile()


def make_variant(model_name: str, kind: str, model: torch.nn.Module, *, batch_size: int, device: torch.device,
                 amp_dtype: torch.dtype | None, compile: bool = False, compile_scope: str = "components",
                 seed: int = 0) -> Variant:
    """Move ``model`` to ``device`` and build its step: fixed random images (the data pipeline is measured
    apart), masks drawn on the device each step as the trainer does, AdamW as the trainer builds it (fused on
    CUDA), bf16 autocast when ``amp_dtype`` is set. ``compile``, ``compile_scope``: see
    :meth:`Variant.compile_model`.

    maskkit's variants check the masker's hidden count as the trainer does: on the host in the first step (the
    FLOP-counted one, never timed), then by a device-side assertion (``sync_checks=False``), since the host check
    (``nonzero``) waits for the device in the middle of every step it is made in."""
    from maskkit.engine.optim import make_optimizer

    model = model.to(device).train()
    optimizer = make_optimizer(model, lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    if kind == "hf":
        cfg = model.config
        shape = (batch_size, cfg.num_channels, cfg.image_size, cfg.image_size)
    elif kind == "official":
        shape = (batch_size, model.in_chans, *model.patch_embed.img_size)
    else:
        shape = (batch_size, model.encoder.in_chans, *model.encoder.img_size)
    images = torch.randn(shape, generator=gen, device=device)
    num_visible = model.num_visible() if kind in ("mae", "dense") else None
    host_checked = False  # whether a step has checked the mask count on the host (the first one does)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    def step() -> torch.Tensor:
        nonlocal host_checked
        with autocast():
            if kind == "hf":
                loss = model(pixel_values=images).loss
            elif kind == "official":
                loss = model(images, generator=gen)[0]
            else:
                mask = model.draw_mask(batch_size, gen, device, sync_checks=not host_checked)
                host_checked = True
                loss = model(images, mask=mask, num_visible=num_visible).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Variant(model_name, kind, model, step, params, compile, compile_scope)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _repeated(step: Callable[[], Any], times: int) -> Callable[[], None]:
    """``step`` run ``times`` times in a row, as one call."""
    def run() -> None:
        for _ in range(times):
            step()
    return run


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, the device drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class PeakProbe:
    """A square matrix product in the bench's dtype; its best rate over the run is the 'peak' of MFU."""

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int, repeats: int):
        self.device, self.dtype, self.size, self.repeats = device, dtype, size, repeats
        self.rates: list[float] = []
        gen = torch.Generator(device=device).manual_seed(0)
        self._a = torch.randn(size, size, generator=gen, device=device).to(dtype)
        self._b = torch.randn(size, size, generator=gen, device=device).to(dtype)
        self._out = torch.empty_like(self._a)

    @classmethod
    def for_device(cls, device: torch.device, dtype: torch.dtype, size: int | None = None) -> "PeakProbe":
        """8192^2 x 20 on CUDA, 1024^2 x 4 on the CPU."""
        if size is None:
            size = 8192 if device.type == "cuda" else 1024
        return cls(device, dtype, size, 20 if device.type == "cuda" else 4)

    def run(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self._a, self._b, out=self._out)

    def measure(self) -> float:
        seconds = time_call(self.run, self.device)
        rate = 2 * self.size**3 * self.repeats / seconds
        self.rates.append(rate)
        return rate

    @property
    def peak(self) -> float:
        return max(self.rates) if self.rates else float("nan")


@attrs.define
class SoftStop:
    """SIGTERM (what ``timeout`` sends) while rounds are timed ends them after the round under way, so that what
    was measured is still reported; before any round is done it ends the run at once (exit status 143).

    ``with SoftStop() as stop:`` installs the handler (in the main thread only) and restores the old one;
    :func:`benchmark_steps` sets ``timing`` once a round is done and reads ``requested`` before each round."""

    requested: bool = False
    timing: bool = False
    _installed: bool = False
    _previous: Any = None  # the handler to put back (None when it was set from C)

    def __enter__(self) -> SoftStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.timing:
            raise SystemExit(128 + signum)
        self.requested = True


def benchmark_steps(variants: list[Variant], *, steps: int, warmup: int, device: torch.device,
                    peak: PeakProbe, progress: Callable[[str], None] | None = None,
                    stop: SoftStop | None = None, steps_per_round: int = 1) -> int:
    """Count each variant's FLOPs (one eager step, which is also the first warm-up step; on CUDA the peak
    memory of that step too, as this variant's own: its parameters plus what the step allocates at its peak,
    activations, gradients and the new AdamW state, not the other variants' weights), compile it if asked,
    warm up, then time ``steps`` rounds. Each round runs every variant once and the peak matrix product once,
    starting one later each round, so that the drifts of a shared machine hit all alike. A variant's turn is
    ``steps_per_round`` consecutive steps timed between two device syncs, and its time is their mean: training
    queues step after step without waiting for the device, so a sync after every step would add, to every
    step, the device's drain and the host's refill of its queue, which a launch-bound step never pays in
    ``maskkit train``. Returns the rounds timed: fewer than ``steps`` when ``stop`` was requested (SIGTERM),
    none if before the first."""
    say = progress or (lambda message: None)
    stop = stop or SoftStop()
    for v in variants:
        if stop.requested:
            return 0
        say(f"counting FLOPs: {v.model_name} {v.kind}")
        if device.type == "cuda":  # every variant is on the device: count only what this one adds
            _sync(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        v.flops = count_flops(v.step)
        _sync(device)
        if device.type == "cuda":
            own_params = sum(p.numel() * p.element_size() for p in v.model.parameters())
            v.peak_memory = torch.cuda.max_memory_allocated(device) - before + own_params
        started = time.perf_counter()
        if v.compile and not stop.requested:
            say(f"compiling: {v.model_name} {v.kind}")
            v.compile_model()
        for _ in range(max(0, warmup - 1)):
            if stop.requested:
                break
            v.step()
        _sync(device)
        v.warmup_seconds = time.perf_counter() - started
    if stop.requested:
        say("stopped by SIGTERM before the rounds")
        return 0
    peak.measure()  # warm-up of the GEMM, not a rate of the run: dropped, the earlier models' rounds' rates kept
    peak.rates.pop()
    members: list[Variant | PeakProbe] = [*variants, peak]
    for round_ in range(steps):
        if stop.requested:
            say(f"stopped by SIGTERM after {round_} of {steps} rounds")
            return round_
        say(f"round {round_ + 1}/{steps}")
        shift = round_ % len(members)
        for member in members[shift:] + members[:shift]:
            if isinstance(member, PeakProbe):
                member.measure()
            else:
                member.times.append(time_call(_repeated(member.step, steps_per_round), device) / steps_per_round)
        stop.timing = True
    return steps


@attrs.frozen
class StepResult:
    model: str
    variant: str
    label: str
    params: int
    batch_size: int
    seconds: float  # median seconds per step
    seconds_min: float
    images_per_s: float
    flops: int  # model FLOPs per step
    flops_per_s: float
    mfu: float  # flops_per_s / measured peak
    slowdown_vs_mae: float | None  # this variant's seconds / maskkit MAE's seconds (same model)
    peak_memory: int | None
    warmup_seconds: float | None = None  # warm-up after the FLOP count; with --compile, what compiling took
    rounds: int | None = None  # rounds timed: fewer than asked when a SIGTERM stopped them (SoftStop)


def summarize(variants: list[Variant], batch_size: int, peak: float) -> list[StepResult]:
    results = []
    mae_seconds = {v.model_name: statistics.median(v.times) for v in variants if v.kind == "mae" and v.times}
    for v in variants:
        seconds = statistics.median(v.times)
        base = mae_seconds.get(v.model_name)
        results.append(StepResult(
            model=v.model_name, variant=v.kind, label=v.label, params=v.params, batch_size=batch_size,
            seconds=seconds, seconds_min=min(v.times), images_per_s=batch_size / seconds, flops=v.flops,
            flops_per_s=v.flops / seconds, mfu=(v.flops / seconds) / peak,
            slowdown_vs_mae=None if base is None else seconds / base, peak_memory=v.peak_memory,
            warmup_seconds=v.warmup_seconds, rounds=len(v.times)))
    return results


def free(variants: list[Variant]) -> None:
    """Drop the models and optimizers (their memory) of ``variants``."""
    for v in variants:
        v.model = v.step = None  # type: ignore[assignment]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

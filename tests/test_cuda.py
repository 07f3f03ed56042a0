"""The GPU path: no host synchronisation inside a training step, bf16 autocast and fused AdamW on CUDA, and
``train.compile``.

Tests marked ``cuda`` are skipped without a GPU (``pytest -m cuda``, as ``scripts/gpu-check.sh`` runs them).
The unmarked ones check on the CPU what does not need a GPU: that model forward and backward ask the host for
no tensor value (``.item()``, ``bool()``, ``nonzero``...) when the visible count is given, as the trainer does,
and that ``torch.compile`` trains.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_tree
from torch.utils._python_dispatch import TorchDispatchMode

import maskkit
from maskkit.engine.trainer import Trainer

# Operators whose result the host must wait for (a value, or an output size that depends on values).
HOST_SYNC_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::nonzero_static",
                 "aten::masked_select", "aten::_unique", "aten::_unique2", "aten::unique_dim",
                 "aten::unique_consecutive", "aten::equal", "aten::allclose", "aten::repeat_interleave"}
SPIED_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostSyncSpy(TorchDispatchMode):
    """Records every operator in ``HOST_SYNC_OPS`` (and indexing by a boolean mask) run while active."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in HOST_SYNC_OPS:
            self.calls.append(name)
        elif name == "aten::index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                            for i in (args[1] if len(args) > 1 else ())):
            self.calls.append("aten::index (boolean mask)")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Yield a list of what inside the block read tensor values on the host: the Python methods that do
    (``Tensor.item``, ``__bool__``...) monkeypatched, and the operators seen by a dispatch mode."""
    calls: list[str] = []
    active = [True]

    def spy_on(name):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, **kwargs):
            if active[0]:
                calls.append(f"Tensor.{name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)

    for name in SPIED_METHODS:
        spy_on(name)
    mode = HostSyncSpy()
    try:
        with mode:
            yield calls
    finally:
        active[0] = False
        calls.extend(mode.calls)
        monkeypatch.undo()


def _model(registry, **encoder):
    tree = tiny_tree()
    tree["encoder"] = {**tree["encoder"], **encoder}
    return maskkit.build_model(maskkit.Recipe(tree), registry)


def _step_inputs(model, device, batch=4):
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch, 1, 28, 28, generator=gen, device=device)
    hidden = model.masker.num_hidden(model.grid)
    return images, gen, model.encoder.num_patches - hidden


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_forward_and_backward_read_no_tensor_values_when_num_visible_is_given(builtin_registry, monkeypatch, dense):
    """The trainer's step on the CPU: mask drawn from a generator, forward with ``num_visible``, backward. (The
    mask's count is checked on the host on the CPU and on a GPU's first steps: here it is asserted on the device,
    as on a GPU after those steps; on the CPU that assertion itself reads, so the draw is outside the spy.)"""
    model = _model(builtin_registry, dense=dense)
    images, gen, num_visible = _step_inputs(model, "cpu")
    mask = model.draw_mask(images.shape[0], gen, images.device, sync_checks=False)
    with no_host_reads(monkeypatch) as calls:
        out = model(images, mask=mask, num_visible=num_visible)
        out.loss.backward()
    assert calls == []
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "mask_token" not in n)


def test_the_spy_sees_the_check_made_without_num_visible(builtin_registry, monkeypatch):
    """Without ``num_visible`` a sparse model checks that every sample shows as many patches: a host read,
    which the spy must catch (so the test above can fail)."""
    model = _model(builtin_registry)
    images, gen, _ = _step_inputs(model, "cpu")
    mask = model.draw_mask(images.shape[0], gen)
    with no_host_reads(monkeypatch) as calls:
        model(images, mask=mask)
    assert "Tensor.__bool__" in calls and "aten::_local_scalar_dense" in calls


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_compile_trains_like_eager_on_cpu(tmp_path, builtin_registry):
    """``train.compile: true`` (inductor on the CPU; about a minute on 2 shared cores) logs the eager losses, with
    either ``train.compile_scope``."""
    tree = tiny_tree()
    tree["train"].update(max_steps=3, ckpt_every=0)
    eager = Trainer(maskkit.Recipe(tree), tmp_path / "eager", registry=builtin_registry, progress=False)
    eager.fit()
    tree["train"]["compile"] = True
    compiled = Trainer(maskkit.Recipe(tree), tmp_path / "compiled", registry=builtin_registry, progress=False)
    compiled.fit()
    assert compiled.model.encoder._compiled_call_impl is not None  # nn.Module.compile() in place
    torch.testing.assert_close(_losses(tmp_path / "compiled"), _losses(tmp_path / "eager"), atol=1e-4, rtol=1e-4)
    tree["train"]["compile_scope"] = "blocks"  # regional: each block alone, the glue eager
    blocks = Trainer(maskkit.Recipe(tree), tmp_path / "blocks", registry=builtin_registry, progress=False)
    blocks.fit()
    model = blocks.model
    assert model.encoder._compiled_call_impl is None and model.decoder._compiled_call_impl is None
    assert all(b._compiled_call_impl is not None for b in [*model.encoder.blocks, *model.decoder.decoder_blocks])
    torch.testing.assert_close(_losses(tmp_path / "blocks"), _losses(tmp_path / "eager"), atol=1e-4, rtol=1e-4)


class CastCounter(TorchDispatchMode):
    """Counts float32 -> bfloat16 casts (``aten::_to_copy``)."""

    def __init__(self):
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name == "aten::_to_copy" and (kwargs or {}).get("dtype") == torch.bfloat16:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_bf16_weights_are_cast_once_per_optimizer_step_not_per_micro_step(tmp_path, builtin_registry):
    """The trainer keeps one autocast context over a step's micro-steps (backward outside autocast), so its cache
    casts the weights in the first micro-step only; the later ones cast just the activations."""
    per_forward: list[int] = []
    linears: list[int] = []

    class CountCasts:
        @maskkit.hookimpl
        def maskkit_train_start(self, trainer, model):
            linears.append(sum(isinstance(m, torch.nn.Linear) for m in model.modules()))
            def start(module, args):
                module._casts = CastCounter()
                module._casts.__enter__()

            def end(module, args, output):
                module._casts.__exit__(None, None, None)
                per_forward.append(module._casts.casts)

            model.register_forward_pre_hook(start)
            model.register_forward_hook(end)

    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"count-casts": CountCasts()})
    tree = tiny_tree()
    tree["train"].update(max_steps=2, batch_size=4, accum_steps=3, ckpt_every=0, precision="bf16", device="cpu")
    result = Trainer(maskkit.Recipe(tree), tmp_path, registry=registry, progress=False).fit()
    assert result.final_loss == result.final_loss and len(per_forward) == 6
    first, later = per_forward[0], per_forward[1]
    assert per_forward == [first, later, later] * 2
    assert first - later >= 2 * linears[0]  # at least every linear layer's weight and bias


def test_compile_auto_means_cuda_only():
    from maskkit.engine.compiling import compile_enabled

    assert compile_enabled("auto", torch.device("cuda")) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(False, torch.device("cuda"))
    assert maskkit.Recipe(tiny_tree()).train.compile == "auto"
    with pytest.raises(maskkit.ConfigError, match="train.compile: expected true, false or auto"):
        _ = maskkit.Recipe(tiny_tree(train={**tiny_tree()["train"], "compile": "yes"})).train


# -- CUDA only ----------------------------------------------------------------------------------------------


class SyncErrorsDuringSteps:
    """A plugin that makes any host synchronisation an error from ``maskkit_step_start`` to
    ``maskkit_step_end``: the whole step (data to the device, masks, forward, backward, AdamW), not the
    logging after it. From step ``from_step`` on: the first micro-steps of a run check the mask counts on the
    host (``maskkit.engine.trainer._SYNC_CHECKED_STEPS``), on purpose."""

    def __init__(self, from_step: int = 0):
        self.steps = 0
        self.from_step = from_step

    @maskkit.hookimpl
    def maskkit_step_start(self, trainer, model, step):
        if step >= self.from_step:
            torch.cuda.set_sync_debug_mode("error")

    @maskkit.hookimpl
    def maskkit_step_end(self, trainer, model, step, loss):
        torch.cuda.set_sync_debug_mode("default")
        self.steps += 1


@pytest.mark.cuda
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_training_steps_do_not_sync_the_host(tmp_path, dense):
    """After the micro-steps whose masks are checked on the host (3: steps 0 and 1 of 2 micro-steps each)."""
    from maskkit.engine.trainer import _SYNC_CHECKED_STEPS

    assert _SYNC_CHECKED_STEPS <= 4
    spy = SyncErrorsDuringSteps(from_step=2)
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"sync-errors": spy})
    tree = tiny_tree()
    tree["encoder"]["dense"] = dense
    tree["train"].update(max_steps=5, log_every=5, ckpt_every=0, accum_steps=2, clip_grad=1.0, device="cuda")
    try:
        trainer = Trainer(maskkit.Recipe(tree), tmp_path, registry=registry, progress=False)
        result = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert spy.steps == 5 and result.final_loss == result.final_loss  # finite, and every step ran


@pytest.mark.cuda
def test_a_learnable_context_masker_trains_without_host_syncs(tmp_path):
    """Drawn inside the forward from the batch, with an auxiliary loss: no host sync after the checked steps."""
    from context_maskers import ContextMaskersPlugin

    spy = SyncErrorsDuringSteps(from_step=2)
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"sync-errors": spy,
                                                                      "context": ContextMaskersPlugin()})
    tree = tiny_tree(masker={"name": "learned"})
    tree["train"].update(max_steps=4, log_every=4, ckpt_every=0, accum_steps=2, device="cuda")
    try:
        trainer = Trainer(maskkit.Recipe(tree), tmp_path, registry=registry, progress=False)
        result = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert spy.steps == 4 and result.final_loss == result.final_loss
    assert trainer.model.masker.scores.is_cuda and float(trainer.model.masker.scores.detach().abs().sum()) > 0


@pytest.mark.cuda
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_model_step_does_not_sync_on_cuda(builtin_registry, dense):
    model = _model(builtin_registry, dense=dense).cuda()
    images, gen, num_visible = _step_inputs(model, "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    model(images, generator=gen).loss.backward()  # first call: lazy initialisation outside the check
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            mask = model.draw_mask(images.shape[0], gen, images.device, sync_checks=False)  # asserted on device
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(images, mask=mask, num_visible=num_visible)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert mask.is_cuda and torch.isfinite(out.loss)


@pytest.mark.cuda
def test_cuda_defaults_bf16_autocast_fused_adamw_masks_on_device(tmp_path, builtin_registry):
    tree = tiny_tree()
    tree["train"].update(max_steps=2, ckpt_every=0, device="auto")  # precision auto
    trainer = Trainer(maskkit.Recipe(tree), tmp_path, registry=builtin_registry, progress=False)
    trainer.fit()
    assert trainer.device.type == "cuda" and trainer.amp_dtype == torch.bfloat16
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer._draw_mask(0).is_cuda


@pytest.mark.cuda
def test_pixel_targets_stay_float32_under_bf16_autocast(builtin_registry):
    """The loss compares bf16 predictions with fp32 targets: patchify must not be an op autocast lowers."""
    model = _model(builtin_registry).cuda()
    images, gen, _ = _step_inputs(model, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images, generator=gen)
    assert out.target.dtype == torch.float32 and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.target, model.target(images))


@pytest.mark.cuda
def test_nvjpeg_route_is_close_to_the_host_route_and_names_a_bad_file(tmp_path):
    """``data.decode: device`` on CUDA: nvJPEG's inverse DCT and chroma upsampling differ from libjpeg's by a few
    levels, so the crops are close, not equal; a JPEG cut short is still reported by name."""
    from maskkit.bench.data import write_jpegs
    from maskkit.data import ImageFolder, TrainTransform, sample_generator
    from maskkit.data.encoded import DeviceDecoder, EncodedView
    from maskkit.data.loading import stack_collate

    root = write_jpegs(tmp_path, 12) / "images"
    base = ImageFolder(root)
    transform = TrainTransform(224, mean=base.mean, std=base.std, output="uint8")
    items = [(transform(EncodedView(base)[i][0], sample_generator(0, 0, i)), 0) for i in range(len(base))]
    images, _ = DeviceDecoder(transform, "cuda")(stack_collate(items))
    host = torch.stack([transform(base[i][0], sample_generator(0, 0, i)) for i in range(len(base))])
    assert images.is_cuda and images.dtype == torch.uint8 and images.shape == host.shape
    diff = (images.cpu().float() - host.float()).abs()
    assert diff.mean() < 2.0 and diff.quantile(0.99) <= 8, (diff.mean(), diff.max())
    data = (root / "00003.jpg").read_bytes()
    (root / "00003.jpg").write_bytes(data[: len(data) // 2])
    items[3] = (transform(EncodedView(base)[3][0], sample_generator(0, 0, 3)), 0)
    images, labels, info = DeviceDecoder(transform, "cuda")(stack_collate(items))
    assert images.shape[0] == 11 and [b.path for b in info.bad] == [str(root / "00003.jpg")]


@pytest.mark.cuda
def test_training_with_nvjpeg_decode(tmp_path, builtin_registry):
    from maskkit.bench.data import write_jpegs

    root = write_jpegs(tmp_path / "jpegs", 64)
    tree = tiny_tree(data={"name": "image_folder", "root": str(root), "in_chans": 3, "decode": "device"})
    tree["encoder"]["in_chans"] = 3  # RGB JPEGs reach nvJPEG undecoded
    tree["train"].update(max_steps=4, ckpt_every=0, device="cuda", num_workers=2)
    result = Trainer(maskkit.Recipe(tree), tmp_path / "run", registry=builtin_registry, progress=False).fit()
    assert result.steps == 4 and result.final_loss == result.final_loss


@pytest.mark.cuda
def test_finish_ahead_hands_over_results_the_side_stream_has_finished():
    """``finish_ahead`` on CUDA: the worker thread finishes each item on a side stream behind a long kernel and
    returns at once; the caller's stream must wait for that work (without the event, the sums below, queued on
    the caller's stream, would read the tensors before they are filled)."""
    from maskkit.data.ahead import finish_ahead

    def finish(k: int) -> torch.Tensor:
        assert torch.cuda.current_stream() != torch.cuda.default_stream()  # the side stream
        torch.cuda._sleep(50_000_000)  # tens of ms of GPU time before the value is written
        return torch.full((1024, 1024), float(k), device="cuda")

    sums = [batch.sum() for batch in finish_ahead(range(6), finish, "cuda", depth=2)]  # queued, not synced
    assert [float(s) for s in sums] == [float(k * 1024 * 1024) for k in range(6)]


@pytest.mark.cuda
def test_nvjpeg_batches_decoded_ahead_are_not_overwritten_by_the_next_decode(tmp_path, monkeypatch):
    """nvJPEG writes on its own stream, which the caching allocator does not know: without the decoder's wait,
    a batch's decoded images, freed while their crops still queue behind other work, can be handed to the next
    batch's nvJPEG and overwritten. Crops delayed by a long kernel must still equal undelayed ones."""
    from maskkit.bench.data import write_jpegs
    from maskkit.data import ImageFolder, TrainTransform, sample_generator
    from maskkit.data.ahead import finish_ahead
    from maskkit.data.encoded import DeviceDecoder, EncodedView
    from maskkit.data.loading import stack_collate

    base = ImageFolder(write_jpegs(tmp_path, 32) / "images")
    transform = TrainTransform(224, mean=base.mean, std=base.std, output="uint8")
    batches = [stack_collate([(transform(EncodedView(base)[i][0], sample_generator(0, 0, i)), 0)
                              for i in range(k, k + 8)]) for k in range(0, 32, 8)]
    decoder = DeviceDecoder(transform, "cuda")
    expected = [decoder(b)[0].cpu() for b in batches]
    apply = transform.apply

    def delayed_apply(*args, **kwargs):
        torch.cuda._sleep(5_000_000)  # the crop waits behind a long kernel on the decoding stream
        return apply(*args, **kwargs)

    monkeypatch.setattr(transform, "apply", delayed_apply)
    got = [images.cpu() for images, _ in finish_ahead(batches, decoder, "cuda", depth=2)]
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


@pytest.mark.cuda
def test_an_inline_nvjpeg_decode_leaves_memory_the_callers_queued_kernels_read(tmp_path):
    """nvJPEG writes its outputs on its own stream, into memory allocated on the caller's: called inline (no
    decode-ahead), a block freed while a queued kernel still has to read it must not be handed to the decoder
    and overwritten first (torchvision's decode_jpegs_cuda waits for its own stream only)."""
    from maskkit.bench.data import write_jpegs
    from maskkit.data import ImageFolder, TrainTransform, sample_generator
    from maskkit.data.encoded import DeviceDecoder, EncodedView
    from maskkit.data.loading import stack_collate

    base = ImageFolder(write_jpegs(tmp_path, 4) / "images")
    transform = TrainTransform(224, mean=base.mean, std=base.std, output="uint8")
    batch = stack_collate([(transform(EncodedView(base)[i][0], sample_generator(0, 0, i)), 0) for i in range(4)])
    decoder = DeviceDecoder(transform, "cuda")
    sizes = [3 * crop.image.height * crop.image.width for crop in batch[0]]  # the decoder's output buffers
    sums = []
    for _ in range(10):
        ones = [torch.ones(n, dtype=torch.uint8, device="cuda") for n in sizes]
        torch.cuda._sleep(20_000_000)  # the sums below queue behind a long kernel...
        sums += [t.sum() for t in ones]
        del ones  # ...and their memory is free for the next allocation on this stream: the decode's
        decoder(batch)
    assert [int(s) for s in sums] == sizes * 10


# -- CUDA only, the slowest last (a new process each, inductor's compilation, the data pipelines): under the
# GPU check's timeout the quick tests of the paths that no other part runs (nvJPEG, decode-ahead) come first


@pytest.mark.cuda
@pytest.mark.parametrize("masker", ["wrong_later", "wrong_later_looking"])
def test_a_wrong_mask_after_the_checked_steps_stops_the_run_with_one_line(tmp_path, masker):
    """After the host-checked micro-steps the count is asserted on the device; the failed assertion kills the
    CUDA context, so this runs in its own process: ``maskkit train`` exits 2 with one line naming the masker."""
    import subprocess
    import sys

    import yaml

    tree = tiny_tree(masker={"name": masker})
    tree["train"].update(max_steps=6, log_every=6, ckpt_every=0, device="cuda")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tree))
    worker = Path(__file__).parent / "context_masker_worker.py"
    done = subprocess.run([sys.executable, str(worker), "train", str(tmp_path / "r.yaml"),
                           "--out", str(tmp_path / "run"), "--no-progress", "--no-eval"],
                          capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-3000:]
    assert last.startswith("maskkit: error: a device-side assertion failed by step") and masker in last, last


@pytest.mark.cuda
def test_train_compile_on_cuda(tmp_path, builtin_registry):
    tree = tiny_tree()
    tree["train"].update(max_steps=3, ckpt_every=0, compile=True, device="cuda")
    result = Trainer(maskkit.Recipe(tree), tmp_path, registry=builtin_registry, progress=False).fit()
    assert result.final_loss == result.final_loss


@pytest.mark.cuda
def test_bench_on_cuda_with_a_tiny_model(tmp_path):
    from maskkit.bench.cli import BenchSettings, run_benchmark

    settings = BenchSettings(device="cuda", models=("vit_tiny_patch16",), batch_size=4, steps=2, warmup=2,
                             dtype="bf16", compile=False, variants=("mae", "dense", "official", "hf"), workers=2,
                             data_images=64, data=True, overrides=("encoder.img_size=64", "decoder.depth=1"), seed=0)
    results = run_benchmark(settings)
    rows = {r["variant"]: r for r in results["steps"]}
    assert rows["mae"]["flops"] < rows["dense"]["flops"] and rows["official"]["flops"] == rows["mae"]["flops"]
    assert results["peak_flops_per_s"] > 1e12
    for row in results["steps"]:  # each variant's own memory: at least its parameters, never all variants' sum
        assert 4 * row["params"] < row["peak_memory"] < torch.cuda.max_memory_allocated()

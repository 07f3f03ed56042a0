"""torch.distributed as started by ``torchrun``: who am I, the few collectives the engine needs, and how the
model is spread over the processes (DDP or FSDP2).

``torchrun --nproc_per_node N -m maskkit train R.yaml`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the
engine then initialises the default process group (NCCL on GPU, gloo on CPU). A plain ``maskkit train`` runs
as world size 1 with no process group.

The recipe's ``distributed`` section (:class:`~maskkit.recipe.DistributedConfig`) picks the strategy: ``ddp``
(default) keeps a full replica per process and all-reduces gradients; ``fsdp`` shards parameters, gradients
and optimizer state with ``torch.distributed.fsdp.fully_shard`` (FSDP2), one unit per transformer block plus
the rest, for encoders too large to replicate. Checkpoints are always written unsharded
(:func:`gather_state`), so a checkpoint of either strategy resumes under either, and loads into a plain model.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn

from maskkit.engine.compiling import transformer_blocks
from maskkit.errors import MaskkitError
from maskkit.recipe import DistributedConfig  # noqa: F401 (validated with the other sections; re-exported)

EXIT_BARRIER_TIMEOUT = datetime.timedelta(hours=24)  # how long the other ranks wait for rank 0's evaluation


def distributed_config(recipe) -> DistributedConfig:
    """The validated ``distributed`` section of ``recipe`` (defaults when absent): ``recipe.distributed``."""
    return recipe.distributed


@attrs.frozen
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # a gloo group for the loop's control flags (stop requests) when the main group is NCCL: its tiny CPU
    # reductions never wait for a GPU stream; None: the default group (gloo already)
    control_group: Any = attrs.field(default=None, eq=False, repr=False)
    # a gloo group with a long timeout for the barrier at exit, where the other ranks wait while rank 0 evaluates
    # (longer than the default group's timeout, 10 minutes under NCCL, would kill them and then rank 0)
    exit_group: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_type: str) -> "DistContext":
        """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local)
            try:
                dist.init_process_group(backend=backend)
            except (ValueError, RuntimeError) as exc:  # e.g. WORLD_SIZE exported by hand, no MASTER_ADDR
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MaskkitError(f"cannot join the process group of WORLD_SIZE={world} (RANK={rank}): {reason}; "
                                   "start multi-process runs with torchrun, or unset WORLD_SIZE") from None
        control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        exit_group = dist.new_group(backend="gloo", timeout=EXIT_BARRIER_TIMEOUT)
        return cls(rank, world, local, control, exit_group)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over all ranks (a copy; identity without a process group)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def max(self, value: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value

    def start_max(self, value: int) -> Callable[[], int]:
        """Start the max of the integer ``value`` over all ranks without waiting for it (collective: every rank
        starts it at the same point); returns the function that waits and gives the result. A CPU reduction on
        :attr:`control_group`, so it runs while the step computes and never synchronises a GPU stream."""
        if not self.enabled:
            return lambda: value
        flag = torch.tensor([value], dtype=torch.int64)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.control_group, async_op=True)

        def result() -> int:
            work.wait()
            return int(flag[0])

        return result

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (collective; ``[obj]`` without a process group)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def shutdown(self) -> None:
        """Tear the process group down on every rank together: a rank that destroys its group while a peer is
        still using the connection can abort at exit (gloo's "terminate called without an active exception").
        The other ranks wait there for rank 0's evaluation, up to :data:`EXIT_BARRIER_TIMEOUT`."""
        if self.enabled and dist.is_initialized():
            dist.barrier(group=self.exit_group)
            dist.destroy_process_group()


# -- spreading the model ------------------------------------------------------------------------------------


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters were sharded by :func:`parallelize` (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class _TupleOutput(nn.Module):
    """The module DDP and FSDP wrap: ``model``'s forward, its output turned from an attrs class (such as
    :class:`~maskkit.interfaces.MaskedOutput`) into a namedtuple with the same fields. DDP and FSDP find the
    output tensors (to hook the backward pass) in tuples, dicts and dataclasses only; a namedtuple keeps the
    attribute access (``out.loss``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._types: dict[type, type] = {}

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if not attrs.has(type(out)):
            return out
        cls = self._types.get(type(out))
        if cls is None:
            cls = self._types[type(out)] = collections.namedtuple(type(out).__name__, attrs.fields_dict(type(out)))
        return cls(*attrs.astuple(out, recurse=False))


def _masker_trains(model: nn.Module) -> bool:
    """Whether the model's masker has trainable parameters: they get gradients only through its auxiliary
    losses, which a masker may compute on some steps only (or from a draw that did not use every parameter)."""
    masker = getattr(model, "masker", None)
    return isinstance(masker, nn.Module) and any(p.requires_grad for p in masker.parameters())


def parallelize(model: nn.Module, ctx: DistContext, cfg: DistributedConfig, device: torch.device) -> nn.Module:
    """The module to call for the forward pass of a multi-process run, over ``model`` (its parameters stay
    ``model``'s). Call it before building the optimizer: FSDP replaces the parameters by sharded ``DTensor`` ones.

    ``ddp``: ``DistributedDataParallel`` (rank 0's parameters are broadcast to all at construction). ``fsdp``:
    FSDP2 in place: ``fully_shard`` on each transformer block, then on the whole (the root unit)."""
    wrapper = _TupleOutput(model)
    if cfg.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (ctx.world_size,))
        for unit in transformer_blocks(model):
            fully_shard(unit, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward)
        return fully_shard(wrapper, mesh=mesh)  # the root keeps its parameters gathered for the backward
    ids = [device.index] if device.type == "cuda" else None
    find = cfg.find_unused_parameters
    if find is None:  # (DDP's static_graph would find them by itself, but it breaks with no_sync accumulation)
        find = not getattr(getattr(model, "encoder", None), "sparse", True) or _masker_trains(model)
    return nn.parallel.DistributedDataParallel(wrapper, device_ids=ids, find_unused_parameters=find)


@contextlib.contextmanager
def no_grad_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally, without the all-reduce (DDP) or reduce-scatter (FSDP2), inside the block:
    for every micro-step of an accumulation but the last. A plain module is left as it is."""
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif hasattr(module, "no_sync"):  # DDP
        with module.no_sync():
            yield
    else:
        yield


# -- unsharded state ----------------------------------------------------------------------------------------


def _full(value):
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _like(value, ref):
    """``value`` (a whole tensor) laid out as ``ref``: sharded like it when ``ref`` is a ``DTensor`` of the same
    global shape (every process holds the whole ``value``, so each just keeps its piece); otherwise unchanged."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor) and isinstance(value, torch.Tensor) and value.shape == ref.shape:
        return distribute_tensor(value.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)
    return value


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> tuple[dict, dict] | None:
    """The whole model and optimizer state dicts on the main process (on the CPU when sharded), ``None`` on
    the others. Under FSDP it gathers every shard, so every process must call it."""
    if not is_sharded(model):
        return (model.state_dict(), optimizer.state_dict()) if ctx.is_main else None

    def whole(value):  # gathered one tensor at a time; only the main process keeps it (on the CPU)
        value = _full(value)
        if not ctx.is_main:
            return None
        return value.cpu() if isinstance(value, torch.Tensor) else value

    model_state = {k: whole(v) for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    optim_state = {"state": {i: {k: whole(v) for k, v in s.items()} for i, s in optim["state"].items()},
                   "param_groups": optim["param_groups"]}
    return (model_state, optim_state) if ctx.is_main else None


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Load whole state dicts (as :func:`gather_state` returns them) into ``model`` and ``optimizer``, sharding
    them like the model's parameters when it is sharded (every process reads the whole checkpoint)."""
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    current = model.state_dict()
    model.load_state_dict({k: _like(v, current.get(k)) for k, v in model_state.items()})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: {k: _like(v, params[int(i)]) for k, v in s.items()} for i, s in optim_state["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": optim_state["param_groups"]})


def unsharded_copy(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A plain (unsharded) model with ``model``'s weights, from ``build()``: what evaluation, export and
    plugins need after FSDP training. Collective: every process must call it."""
    state = {k: _full(v) for k, v in model.state_dict().items()}
    plain = build()
    plain.load_state_dict(state)
    return plain

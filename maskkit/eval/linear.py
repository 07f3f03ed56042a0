"""Linear probe on cached frozen features, with MAE's head: ``BatchNorm1d(D, affine=False)`` then ``Linear``.

Optimiser choice: SGD with momentum 0.9, a short linear warm-up and a per-step cosine decay. MAE trains
the probe with LARS because it uses batches of 16384 images, where a per-layer trust ratio is what keeps
plain SGD stable. Here the features are cached and the batch is small (256 by default); the
parameter-free BatchNorm already puts every input dimension on unit scale, so the head sees a
well-conditioned convex problem on which momentum SGD with a cosine schedule converges quickly and
matches LARS without its extra hyper-parameters. Weight decay defaults to 0, as in MAE.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EVAL_CHUNK = 8192


@dataclass(frozen=True)
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        top1: test accuracy in ``[0, 1]``.
        train_top1: accuracy in ``[0, 1]`` on the training features (eval-mode head).
        epochs: number of epochs trained.
        history: mean training loss of each epoch (``epochs`` entries).
        head: the trained ``nn.Sequential(BatchNorm1d, Linear)`` in eval mode, on CPU.
    """

    top1: float
    train_top1: float
    epochs: int
    history: list[float]
    head: nn.Module = field(repr=False, compare=False)


def make_probe_head(dim: int, num_classes: int, *, generator: torch.Generator | None = None) -> nn.Sequential:
    """MAE's probe head: ``[B, dim] -> [B, num_classes]`` logits.

    ``BatchNorm1d(dim, affine=False, eps=1e-6)`` then ``Linear(dim, num_classes)`` with truncated-normal
    weights (std 0.01, cut at +-2 std) and zero bias.
    """
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01, a=-0.02, b=0.02, generator=generator)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def _lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then half-cosine decay from ``base_lr`` to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


@contextlib.contextmanager
def _intra_op_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set ``torch.set_num_threads(num_threads)``; ``None`` leaves the setting alone."""
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _accuracy(head: nn.Module, feats: Tensor, labels: Tensor) -> float:
    """Top-1 of ``head`` (eval mode) on ``feats [M, D]`` vs ``labels [M]``, in chunks."""
    head.eval()
    correct = 0
    for start in range(0, feats.shape[0], _EVAL_CHUNK):
        logits = head(feats[start : start + _EVAL_CHUNK])
        correct += int((logits.argmax(dim=1) == labels[start : start + _EVAL_CHUNK]).sum())
    return correct / max(1, feats.shape[0])


def _check(name: str, feats: Tensor, labels: Tensor) -> None:
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"{name}: expected features [M, D] and labels [M], got {tuple(feats.shape)} and {tuple(labels.shape)}"
        )


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 90,
    batch_size: int = 256,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    warmup_epochs: int = 1,
    num_classes: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_threads: int | None = None,
) -> LinearProbeResult:
    """Train MAE's linear probe head on cached features and report its accuracy.

    Each epoch visits the training features in a fresh order drawn from a ``torch.Generator`` seeded
    with ``seed`` (which also draws the initial weights), so a run is deterministic for a given seed,
    device and thread count; the global RNG is not touched. The last incomplete batch of an epoch is
    dropped (as MAE does, and so BatchNorm never sees a batch of one); when ``M < batch_size`` the
    whole set is one batch.

    Args:
        train_feats: ``[M, D]`` training features (any float dtype; trained in float32).
        train_labels: ``[M]`` integer labels.
        test_feats: ``[T, D]`` held-out features.
        test_labels: ``[T]`` integer labels.
        epochs: passes over the training features.
        batch_size: samples per SGD step.
        lr: peak learning rate of SGD (momentum 0.9), reached after ``warmup_epochs``, cosine-decayed to 0.
        weight_decay: L2 penalty on the linear layer (0, as in MAE).
        warmup_epochs: epochs of linear learning-rate warm-up.
        num_classes: number of classes; ``max(train_labels, test_labels) + 1`` when ``None``.
        seed: seeds weight init and shuffling.
        device: where to train (features are moved there).
        num_threads: CPU intra-op threads for this call (``torch.set_num_threads``, restored afterwards);
            ``None`` keeps the process setting. The steps are small, so on a shared, oversubscribed CPU
            ``1`` avoids OpenMP threads waiting on each other (measured: minutes instead of seconds).

    Returns:
        :class:`LinearProbeResult` with ``top1``, ``train_top1``, ``epochs``, ``history`` and ``head``.
    """
    _check("train", train_feats, train_labels)
    _check("test", test_feats, test_labels)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features: train has D={train_feats.shape[1]}, test has D={test_feats.shape[1]}")
    if test_feats.shape[0] == 0:
        raise ValueError("test_feats: no test samples to score")
    if train_feats.shape[0] < 2:
        raise ValueError(f"train_feats: expected at least 2 samples (BatchNorm), got {train_feats.shape[0]}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads: expected an integer >= 1 or None, got {num_threads!r}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"epochs, batch_size: expected >= 1 and >= 2, got {epochs!r} and {batch_size!r}")
    device = torch.device(device)
    x_train = train_feats.to(device, torch.float32)
    y_train = train_labels.to(device, torch.int64)
    x_test = test_feats.to(device, torch.float32)
    y_test = test_labels.to(device, torch.int64)
    if min(int(y_train.min()), int(y_test.min())) < 0:
        raise ValueError("labels: expected labels >= 0")
    max_label = max(int(y_train.max()), int(y_test.max()))
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(f"labels: label {max_label} is out of range for num_classes={num_classes}")

    with _intra_op_threads(num_threads), torch.enable_grad():  # callers often evaluate under no_grad
        return _train(x_train, y_train, x_test, y_test, num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed)


def _train(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_epochs: int,
    seed: int,
) -> LinearProbeResult:
    """The training loop of :func:`linear_probe` on validated float32 ``[M, D]`` / int64 ``[M]`` tensors."""
    device = x_train.device
    generator = torch.Generator().manual_seed(seed)
    head = make_probe_head(x_train.shape[1], num_classes, generator=generator).to(device)
    linear = head[1]
    optimizer = torch.optim.SGD(
        [
            {"params": [linear.weight], "weight_decay": weight_decay},
            {"params": [linear.bias], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=0.9,
    )

    num_train = x_train.shape[0]
    batch = min(batch_size, num_train)
    steps_per_epoch = num_train // batch
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(warmup_epochs * steps_per_epoch, total_steps)
    history: list[float] = []
    step = 0
    for _ in range(epochs):
        head.train()
        order = torch.randperm(num_train, generator=generator).to(device)
        x_epoch, y_epoch = x_train[order], y_train[order]  # one gather per epoch; batches are slices
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup_steps, lr)
            rows = slice(i * batch, (i + 1) * batch)
            loss = F.cross_entropy(head(x_epoch[rows]), y_epoch[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            step += 1
        history.append(float(loss_sum) / steps_per_epoch)

    return LinearProbeResult(
        top1=_accuracy(head, x_test, y_test),
        train_top1=_accuracy(head, x_train, y_train),
        epochs=epochs,
        history=history,
        head=head.cpu().eval(),
    )

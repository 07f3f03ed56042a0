"""Weighted k-nearest-neighbour classifier on frozen features (InstDisc, Wu et al. 2018; DINO's ``eval_knn``).

Features are L2-normalised, neighbours are ranked by cosine similarity, and each of the k
neighbours votes for its label with weight ``exp(sim / T)``; the class with the largest summed
weight wins. Ties in the summed vote go to the smallest class index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_inputs(
    train_feats: Tensor, train_labels: Tensor, query_feats: Tensor, k: int, temperature: float, chunk_size: int
) -> None:
    if train_feats.ndim != 2 or query_feats.ndim != 2:
        raise ValueError(
            f"features: expected 2-d [M, D] and [Q, D] tensors, got {tuple(train_feats.shape)} "
            f"and {tuple(query_feats.shape)}"
        )
    if train_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(f"features: train has D={train_feats.shape[1]}, queries have D={query_feats.shape[1]}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"train_labels: expected shape ({train_feats.shape[0]},), got {tuple(train_labels.shape)}")
    if train_feats.shape[0] == 0:
        raise ValueError("train_feats: the feature bank is empty")
    if k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a value > 0, got {temperature!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")


def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    query_feats: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
) -> Tensor:
    """Predict a class per query by a temperature-weighted vote of its k nearest training features.

    Args:
        train_feats: ``[M, D]`` feature bank (any float dtype; computed in float32).
        train_labels: ``[M]`` integer labels in ``[0, num_classes)``.
        query_feats: ``[Q, D]`` features to classify; moved to ``train_feats.device`` chunk by chunk.
        k: neighbours per query; clipped to ``M`` when larger.
        temperature: ``T`` in the vote weight ``exp(cos_sim / T)``; small T approaches 1-NN,
            large T approaches a plain majority vote among the k.
        num_classes: number of classes; ``max(train_labels) + 1`` when ``None``.
        chunk_size: queries per chunk; peak memory is about ``chunk_size * M`` floats.
        leave_one_out: the queries are the bank's own images (query ``i`` is entry ``i``, ``Q == M``): each is
            classified by the others, never by itself (which, at similarity 1, would decide its own vote).

    Returns:
        ``[Q]`` int64 predicted labels on ``query_feats.device``. Ties in the summed vote go to the
        smallest class index; which of several equally similar neighbours fill the last of the k
        slots is unspecified.
    """
    _check_inputs(train_feats, train_labels, query_feats, k, temperature, chunk_size)
    labels = train_labels.to(train_feats.device, torch.int64)
    if int(labels.min()) < 0:
        raise ValueError(f"train_labels: expected labels >= 0, got {int(labels.min())}")
    max_label = int(labels.max())
    if num_classes is None:
        num_classes = max_label + 1
    elif max_label >= num_classes:
        raise ValueError(f"train_labels: label {max_label} is out of range for num_classes={num_classes}")

    if leave_one_out and (query_feats.shape[0] != train_feats.shape[0] or train_feats.shape[0] < 2):
        raise ValueError(f"leave_one_out: expected the bank's own features as queries (at least 2), got "
                         f"{query_feats.shape[0]} queries for a bank of {train_feats.shape[0]}")
    bank = F.normalize(train_feats.float(), dim=1)
    k = min(int(k), bank.shape[0] - leave_one_out)
    preds = []
    for start in range(0, query_feats.shape[0], chunk_size):
        query = F.normalize(query_feats[start : start + chunk_size].to(bank.device).float(), dim=1)
        scores = query @ bank.T  # [c, M]
        if leave_one_out:  # query start + r is bank entry start + r
            rows = torch.arange(query.shape[0], device=bank.device)
            scores[rows, start + rows] = float("-inf")
        sims, idx = scores.topk(k, dim=1)  # [c, k], sorted descending
        # Subtracting each row's best similarity scales that row's weights by one constant: the argmax
        # is unchanged and exp cannot overflow however small T is.
        weights = torch.exp((sims - sims[:, :1]) / temperature)
        votes = torch.zeros(query.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.int64, device=query_feats.device)
    return torch.cat(preds).to(query_feats.device)


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    query_feats: Tensor,
    query_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    leave_one_out: bool = False,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of :func:`knn_predict` on ``query_feats [Q, D]`` against ``query_labels [Q]``.

    The other arguments are those of :func:`knn_predict`; ``Q`` must be at least 1.
    """
    if query_labels.shape != (query_feats.shape[0],):
        raise ValueError(f"query_labels: expected shape ({query_feats.shape[0]},), got {tuple(query_labels.shape)}")
    if query_feats.shape[0] == 0:
        raise ValueError("query_feats: no queries to score")
    preds = knn_predict(
        train_feats,
        train_labels,
        query_feats,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        leave_one_out=leave_one_out,
    )
    return (preds.cpu() == query_labels.cpu().to(torch.int64)).double().mean().item()

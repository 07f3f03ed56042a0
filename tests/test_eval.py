"""Tests of maskkit.eval: feature extraction, weighted kNN, linear probe."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from maskkit.eval import extract_features, knn_accuracy, knn_predict, linear_probe

# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run each test on one intra-op thread (restored afterwards).

    The tensors here are tiny; with several OpenMP threads on a shared, oversubscribed CPU each of the
    thousands of small ops of a probe waits for its sibling thread to be scheduled, which made the file
    take minutes instead of seconds. Results do not depend on the thread count in any assertion below.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def gaussian_clusters(
    num_classes: int, per_class: int, dim: int, *, spread: float, seed: int, noise_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[num_classes * per_class, dim]`` points around standard-normal centres (drawn from ``seed``), and labels."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(10_000 + noise_seed))
    return centres[labels] + spread * noise, labels


def reference_knn(bank, bank_labels, queries, k, temperature, num_classes):
    """Straightforward per-query weighted kNN in float64 Python, for comparison."""
    bank = bank.double() / bank.double().norm(dim=1, keepdim=True)
    preds = []
    for q in queries.double():
        sims = bank @ (q / q.norm())
        order = sorted(range(len(sims)), key=lambda i: -float(sims[i]))[: min(k, len(sims))]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(bank_labels[i])] += math.exp(float(sims[i]) / temperature)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return torch.tensor(preds)


# The hand-checked case: one class-0 point nearest to the query, two class-1 points a little farther.
# Cosine similarities to the query (1, 0): 1.0 (class 0), 0.8 and 0.6 (class 1).
HAND_BANK = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
HAND_LABELS = torch.tensor([0, 1, 1])
HAND_QUERY = torch.tensor([[1.0, 0.0]])


# ------------------------------------------------------------------------------------------------- kNN


def test_knn_hand_checked_temperature_decides_between_nearest_and_majority():
    # T = 0.1: class 0 gets e^10 = 22026, class 1 gets e^8 + e^6 = 3384 -> nearest wins.
    assert math.exp(1 / 0.1) > math.exp(0.8 / 0.1) + math.exp(0.6 / 0.1)
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=3, temperature=0.1).tolist() == [0]
    # T = 1: class 0 gets e^1 = 2.718, class 1 gets e^0.8 + e^0.6 = 4.048 -> majority wins.
    assert math.exp(1.0) < math.exp(0.8) + math.exp(0.6)
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=3, temperature=1.0).tolist() == [1]
    # With k = 2 class 1 has one vote (e^0.8 = 2.23 at T = 1) against e^1: class 0.
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=2, temperature=1.0).tolist() == [0]
    # k = 1 is the nearest neighbour whatever the temperature.
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=1, temperature=100.0).tolist() == [0]


def test_knn_leave_one_out_classifies_each_bank_entry_by_the_others():
    """Query i is bank entry i: its vote is that of the bank without it (by hand: entry 0's nearest other is
    entry 1, class 1), for every entry of a random bank; a query set that is not the bank is refused."""
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_BANK, k=1).tolist() == [0, 1, 1]  # each its own neighbour
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_BANK, k=1, leave_one_out=True).tolist() == [1, 1, 1]
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(23, 5, generator=g), torch.randint(0, 3, (23,), generator=g)
    loo = knn_predict(bank, labels, bank, k=4, temperature=0.5, num_classes=3, chunk_size=5, leave_one_out=True)
    for i in range(23):
        others = torch.arange(23) != i
        alone = knn_predict(bank[others], labels[others], bank[i:i + 1], k=4, temperature=0.5, num_classes=3)
        assert loo[i] == alone[0], i
    with pytest.raises(ValueError, match="leave_one_out"):
        knn_predict(bank, labels, bank[:3], leave_one_out=True)


def test_knn_hand_checked_crossover_temperature():
    # Class 1 wins iff e^(0.8/T) + e^(0.6/T) > e^(1/T); solve for the crossover by bisection and check either side.
    lo, hi = 0.05, 5.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if math.exp(0.8 / mid) + math.exp(0.6 / mid) > math.exp(1 / mid):
            hi = mid
        else:
            lo = mid
    assert 0.2 < lo < 0.5  # the crossover is about T = 0.33
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=3, temperature=lo * 0.98).tolist() == [0]
    assert knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=3, temperature=hi * 1.02).tolist() == [1]


def test_knn_k_larger_than_bank_is_clipped():
    for temperature in (0.1, 1.0):
        full = knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=3, temperature=temperature)
        big = knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=50, temperature=temperature)
        assert torch.equal(full, big)
    acc = knn_accuracy(HAND_BANK, HAND_LABELS, HAND_QUERY, torch.tensor([1]), k=1000, temperature=1.0)
    assert acc == 1.0


def test_knn_vote_tie_goes_to_smallest_class():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 1.0]])  # equally similar to both
    assert knn_predict(bank, torch.tensor([2, 1]), query, k=2, num_classes=3).tolist() == [1]
    assert knn_predict(bank, torch.tensor([1, 2]), query, k=2, num_classes=3).tolist() == [1]


def test_knn_ignores_feature_norm_and_uses_cosine():
    # A huge vector of class 1 pointing away from the query must not beat a tiny one of class 0 pointing at it.
    bank = torch.tensor([[1e-3, 0.0], [-1e3, 1e3]])
    assert knn_predict(bank, torch.tensor([0, 1]), torch.tensor([[5.0, 0.1]]), k=1).tolist() == [0]


def test_knn_matches_reference_and_chunking_does_not_matter():
    g = torch.Generator().manual_seed(3)
    bank, labels = torch.randn(60, 8, generator=g), torch.randint(0, 5, (60,), generator=g)
    queries = torch.randn(37, 8, generator=g)
    expected = reference_knn(bank, labels, queries, k=7, temperature=0.2, num_classes=5)
    for chunk_size in (1, 5, 37, 1024):
        got = knn_predict(bank, labels, queries, k=7, temperature=0.2, chunk_size=chunk_size)
        assert got.dtype == torch.int64 and got.shape == (37,)
        assert torch.equal(got, expected), chunk_size


def test_knn_tiny_temperature_does_not_overflow():
    # exp(sim / T) would overflow float32 for T = 1e-4; the result must still be the nearest neighbour.
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    queries = torch.randn(20, 4, generator=g)
    nearest = knn_predict(bank, labels, queries, k=1)
    assert torch.equal(knn_predict(bank, labels, queries, k=10, temperature=1e-4), nearest)


def test_knn_separated_clusters_are_perfect():
    train, train_y = gaussian_clusters(6, 50, 32, spread=0.05, seed=0)
    test, test_y = gaussian_clusters(6, 20, 32, spread=0.05, seed=0, noise_seed=1)  # same centres, new noise
    assert knn_accuracy(train, train_y, test, test_y, k=20) == 1.0


def test_knn_random_labels_are_at_chance():
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(2000, 16, generator=g), torch.randint(0, 4, (2000,), generator=g)
    queries, query_labels = torch.randn(1000, 16, generator=g), torch.randint(0, 4, (1000,), generator=g)
    acc = knn_accuracy(bank, labels, queries, query_labels, k=20)
    assert 0.18 < acc < 0.32  # chance is 0.25; the binomial sd for 1000 queries is 0.014


def test_knn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, k=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, temperature=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(HAND_BANK, HAND_LABELS, HAND_QUERY, num_classes=1)
    with pytest.raises(ValueError, match="D="):
        knn_predict(HAND_BANK, HAND_LABELS, torch.ones(1, 3))
    with pytest.raises(ValueError, match="empty"):
        knn_predict(torch.empty(0, 2), torch.empty(0, dtype=torch.int64), HAND_QUERY)


@settings(max_examples=40, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_train=st.integers(1, 40),
    num_query=st.integers(1, 12),
    dim=st.integers(1, 6),
    k=st.integers(1, 50),
    temperature=st.floats(0.01, 10.0),
    data=st.data(),
)
def test_knn_invariant_to_positive_rescaling(seed, num_train, num_query, dim, k, temperature, data):
    g = torch.Generator().manual_seed(seed)
    bank, labels = torch.randn(num_train, dim, generator=g), torch.randint(0, 4, (num_train,), generator=g)
    queries = torch.randn(num_query, dim, generator=g)
    # Per-row scales that are powers of two rescale exactly in floating point, so predictions must agree
    # bit for bit even on exact ties; a global scale is any positive float (on continuous random data a
    # near-tie that a rounding difference could flip has negligible probability).
    scale_exp = st.integers(-30, 30)
    bank_scale = torch.tensor(data.draw(st.lists(scale_exp, min_size=num_train, max_size=num_train)))
    query_scale = torch.tensor(data.draw(st.lists(scale_exp, min_size=num_query, max_size=num_query)))
    bank_scaled = bank * torch.pow(2.0, bank_scale.double()).float()[:, None]
    queries_scaled = queries * torch.pow(2.0, query_scale.double()).float()[:, None]
    kw = dict(k=k, temperature=temperature, num_classes=4)
    expected = knn_predict(bank, labels, queries, **kw)
    assert torch.equal(knn_predict(bank_scaled, labels, queries_scaled, **kw), expected)
    global_scale = data.draw(st.floats(1e-3, 1e3))
    assert torch.equal(knn_predict(bank * global_scale, labels, queries * global_scale, **kw), expected)


# ------------------------------------------------------------------------------------------ linear probe


def test_linear_probe_separated_clusters_are_perfect():
    train, train_y = gaussian_clusters(5, 80, 24, spread=0.1, seed=0)
    test, test_y = gaussian_clusters(5, 30, 24, spread=0.1, seed=0, noise_seed=1)
    # An offset and a bad scale are what the parameter-free BatchNorm is there to absorb.
    result = linear_probe(train * 50 + 7, train_y, test * 50 + 7, test_y, epochs=10, batch_size=64)
    assert result.top1 == 1.0 and result.train_top1 == 1.0
    assert result.epochs == 10 and len(result.history) == 10
    assert result.history[-1] < result.history[0]
    assert all(math.isfinite(x) for x in result.history)


def test_linear_probe_head_is_maes():
    train, train_y = gaussian_clusters(3, 20, 8, spread=0.5, seed=0)
    head = linear_probe(train, train_y, train, train_y, epochs=1, batch_size=16).head
    bn, linear = head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert isinstance(linear, nn.Linear) and linear.weight.shape == (3, 8)
    assert not head.training


def test_linear_probe_random_labels_are_near_chance():
    g = torch.Generator().manual_seed(0)
    train, train_y = torch.randn(1000, 16, generator=g), torch.randint(0, 4, (1000,), generator=g)
    test, test_y = torch.randn(1000, 16, generator=g), torch.randint(0, 4, (1000,), generator=g)
    result = linear_probe(train, train_y, test, test_y, epochs=5, batch_size=128)
    assert 0.18 < result.top1 < 0.32


def test_linear_probe_is_deterministic_for_a_seed():
    train, train_y = gaussian_clusters(4, 60, 16, spread=1.5, seed=2)
    test, test_y = gaussian_clusters(4, 20, 16, spread=1.5, seed=2, noise_seed=1)
    kw = dict(epochs=4, batch_size=32, seed=7)
    torch.manual_seed(0)
    a = linear_probe(train, train_y, test, test_y, **kw)
    torch.manual_seed(123)  # the global RNG must not matter
    b = linear_probe(train, train_y, test, test_y, **kw)
    assert a.history == b.history and a.top1 == b.top1 and a.train_top1 == b.train_top1
    assert all(torch.equal(x, y) for x, y in zip(a.head.state_dict().values(), b.head.state_dict().values()))
    c = linear_probe(train, train_y, test, test_y, **{**kw, "seed": 8})
    assert c.history != a.history


def test_linear_probe_small_set_and_ragged_batches():
    # 7 samples with batch 256 (one batch of 7), and 7 with batch 3 (the last sample is dropped each epoch).
    train, train_y = gaussian_clusters(2, 4, 4, spread=0.1, seed=0)
    train, train_y = train[:7], train_y[:7]
    for batch_size in (256, 3):
        result = linear_probe(train, train_y, train, train_y, epochs=3, batch_size=batch_size)
        assert len(result.history) == 3 and 0.0 <= result.top1 <= 1.0
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(train, train_y, train, train_y, epochs=1, num_classes=1)


def test_linear_probe_num_threads_is_restored():
    train, train_y = gaussian_clusters(2, 10, 4, spread=0.1, seed=0)
    assert torch.get_num_threads() == 1  # set by the autouse fixture
    result = linear_probe(train, train_y, train, train_y, epochs=2, batch_size=8, num_threads=2)
    assert torch.get_num_threads() == 1 and result.top1 == 1.0
    with pytest.raises(ValueError, match="num_threads"):
        linear_probe(train, train_y, train, train_y, epochs=1, num_threads=0)


# -------------------------------------------------------------------------------------- feature extraction


class TinyEncoder(nn.Module):
    """Every pixel is a patch token (D = C); the one prefix token is the per-image channel max + a bias."""

    def __init__(self, num_prefix_tokens: int = 1, channels: int = 3):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.bias = nn.Parameter(torch.full((channels,), 0.5))
        self.drop = nn.Dropout(0.5)
        self.calls: list[tuple[bool, bool, bool]] = []  # (training, drop.training, grad enabled)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, self.drop.training, torch.is_grad_enabled()))
        patches = self.drop(images.flatten(2).transpose(1, 2))  # [B, H*W, C]
        prefix = (images.amax(dim=(2, 3)) + self.bias)[:, None].expand(-1, self.num_prefix_tokens, -1)
        return torch.cat([prefix, patches], dim=1)


def tiny_loader(num: int = 7, batch_size: int = 3):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(num, 3, 4, 5, generator=g)
    labels = torch.arange(num) % 3
    return images, labels, DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)


def test_extract_features_pools_mean_and_cls():
    images, labels, loader = tiny_loader()
    enc = TinyEncoder(num_prefix_tokens=1)
    feats, got_labels = extract_features(enc, loader, device="cpu", pool="mean")
    assert feats.shape == (7, 3) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert got_labels.dtype == torch.int64 and torch.equal(got_labels, labels)
    torch.testing.assert_close(feats, images.mean(dim=(2, 3)))  # prefix excluded, dropout off
    feats, _ = extract_features(enc, loader, device="cpu", pool="cls")
    torch.testing.assert_close(feats, images.amax(dim=(2, 3)) + 0.5)
    assert not feats.requires_grad


def test_extract_features_mean_excludes_several_prefix_tokens():
    images, _, loader = tiny_loader()
    feats, _ = extract_features(TinyEncoder(num_prefix_tokens=4), loader, device="cpu")
    torch.testing.assert_close(feats, images.mean(dim=(2, 3)))


def test_extract_features_runs_in_eval_no_grad_and_restores_modes():
    _, _, loader = tiny_loader()
    enc = TinyEncoder()
    enc.train()
    extract_features(enc, loader, device="cpu")
    assert enc.calls and all(call == (False, False, False) for call in enc.calls)
    assert enc.training and enc.drop.training
    # Mixed modes come back as they were, module by module.
    enc.drop.eval()
    extract_features(enc, loader, device="cpu")
    assert enc.training and not enc.drop.training
    enc.eval()
    extract_features(enc, loader, device="cpu")
    assert not enc.training and not enc.drop.training


def test_extract_features_restores_mode_when_the_encoder_raises():
    class Broken(TinyEncoder):
        def forward_features(self, images):
            raise RuntimeError("boom")

    enc = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(enc, tiny_loader()[2], device="cpu")
    assert enc.training and enc.drop.training


def test_extract_features_rejects_cls_without_prefix_and_unknown_pool():
    _, _, loader = tiny_loader()
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        extract_features(TinyEncoder(num_prefix_tokens=0), loader, device="cpu", pool="cls")
    with pytest.raises(ValueError, match="pool"):
        extract_features(TinyEncoder(), loader, device="cpu", pool="max")
    feats, _ = extract_features(TinyEncoder(num_prefix_tokens=0), loader, device="cpu", pool="mean")
    assert feats.shape == (7, 3)


def test_extract_features_amp_dtype_is_ignored_on_cpu():
    images, _, loader = tiny_loader()
    feats, _ = extract_features(TinyEncoder(), loader, device="cpu", amp_dtype=torch.bfloat16)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, images.mean(dim=(2, 3)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extract_features_cuda_bf16():
    images, labels, loader = tiny_loader(num=10, batch_size=4)
    enc = TinyEncoder().cuda()
    linear = nn.Linear(3, 3, bias=False).cuda()
    nn.init.eye_(linear.weight)
    enc.proj = linear
    base_forward = enc.forward_features
    dtypes = []

    def forward_features(x):
        out = enc.proj(base_forward(x))
        dtypes.append(out.dtype)
        return out

    enc.forward_features = forward_features
    feats, got = extract_features(enc, loader, device="cuda", amp_dtype=torch.bfloat16)
    assert set(dtypes) == {torch.bfloat16}
    assert feats.dtype == torch.float32 and feats.device.type == "cpu" and torch.equal(got, labels)
    torch.testing.assert_close(feats, images.mean(dim=(2, 3)), atol=2e-2, rtol=2e-2)
    knn = knn_predict(feats.cuda(), got.cuda(), feats.cuda(), k=1)
    assert knn.device.type == "cuda" and torch.equal(knn.cpu(), got)


def test_linear_probe_trains_when_called_under_no_grad():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    with torch.no_grad():
        result = linear_probe(x, y, x, y, epochs=5, batch_size=16)
    assert result.train_top1 > 0.9 and result.history[-1] < result.history[0]

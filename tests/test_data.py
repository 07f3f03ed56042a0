"""Tests of maskkit.data: IDX files, Fashion-MNIST, ImageFolder, transforms, reproducible loading."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskkit.data import (
    AugmentedDataset,
    EvalTransform,
    FashionMNIST,
    GlobalBatchSampler,
    ImageFolder,
    TrainTransform,
    denormalize,
    make_loader,
    random_resized_crop_params,
    read_idx,
    sample_generator,
    stable_seed,
    write_idx,
)
from maskkit.data import fashion_mnist as fm_module

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian's dataset-fashion-mnist is not installed")
# Class counts of the first 10,000 train / 2,000 test examples (see maskkit/data/embedded/README.md).
TRAIN_COUNTS = [942, 1027, 1016, 1019, 974, 989, 1021, 1022, 990, 1000]
TEST_COUNTS = [200, 203, 214, 190, 219, 195, 197, 200, 194, 188]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def embedded_train() -> FashionMNIST:
    return FashionMNIST("train")


@pytest.fixture(scope="module")
def debian_train() -> FashionMNIST:
    return FashionMNIST("train", source=str(DEBIAN))


def _write_split(folder: Path, prefix: str, n: int, *, gz: bool) -> torch.Tensor:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", (torch.arange(n) % 10).to(torch.uint8))
    return images


# ---------------------------------------------------------------------------------------------- IDX

@FAST
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       dtype=st.sampled_from([torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64]),
       gz=st.booleans())
def test_idx_round_trip(tmp_path: Path, shape: list[int], dtype: torch.dtype, gz: bool) -> None:
    x = (torch.arange(math.prod(shape)) * 37 % 251).reshape(shape).to(dtype)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, x)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    y = read_idx(path)
    assert y.dtype == dtype and y.shape == x.shape and torch.equal(x, y)


def test_idx_gzip_is_deterministic(tmp_path: Path) -> None:
    x = torch.arange(100, dtype=torch.uint8).reshape(4, 25)
    write_idx(tmp_path / "a.gz", x)
    write_idx(tmp_path / "b.gz", x)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.parametrize("content", [
    b"",                                                   # empty
    b"\x89PNG\r\n\x1a\n" + bytes(40),                      # a foreign file
    b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc",  # unknown type code
    b"\x00\x00\x08\x02" + (3).to_bytes(4, "big"),           # header cut short
    b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc",  # data too short
    b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc",  # trailing data
    b"\x1f\x8b\x08\x00garbage-not-deflate",                 # corrupt gzip
    gzip.compress(b"\x00\x00\x08\x01" + (9).to_bytes(4, "big") + b"x")[:-6],  # truncated gzip
])
def test_idx_corrupt_file_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken-idx1-ubyte.gz"):
        read_idx(path)


def test_idx_reads_raw_uint8_header_exactly(tmp_path: Path) -> None:
    path = tmp_path / "raw"
    path.write_bytes(b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6)))
    assert read_idx(path).tolist() == [[0, 1, 2], [3, 4, 5]]


# ------------------------------------------------------------------------------------- Fashion-MNIST

def test_embedded_subset_shapes_labels_balance(embedded_train: FashionMNIST) -> None:
    test = FashionMNIST("test")
    for ds, n, counts in ((embedded_train, 10_000, TRAIN_COUNTS), (test, 2_000, TEST_COUNTS)):
        assert len(ds) == n
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
        assert torch.bincount(ds.labels, minlength=10).tolist() == counts
        assert ds.source_path == fm_module.EMBEDDED_DIR
    assert len(embedded_train.classes) == 10 and embedded_train.classes[9] == "Ankle boot"
    assert embedded_train.in_chans == 1 and embedded_train.mean == (0.2860,) and embedded_train.std == (0.3530,)
    img, label = embedded_train[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8 and type(label) is int
    assert label == int(embedded_train.labels[3])
    # real images, not noise: most pixels are background, the mean is close to the full set's
    x = embedded_train.images.float() / 255
    assert abs(x.mean().item() - 0.2860) < 0.005 and abs(x.std().item() - 0.3530) < 0.005


def test_invalid_split() -> None:
    with pytest.raises(ValueError, match="split"):
        FashionMNIST("val")


@needs_debian
def test_embedded_subset_is_prefix_of_full_set(embedded_train: FashionMNIST, debian_train: FashionMNIST) -> None:
    assert torch.equal(embedded_train.images, debian_train.images[:10_000])
    assert torch.equal(embedded_train.labels, debian_train.labels[:10_000])
    full_test = FashionMNIST("test", source=str(DEBIAN))
    assert torch.equal(FashionMNIST("test").images, full_test.images[:2_000])


@needs_debian
def test_full_set_statistics_match_declared(debian_train: FashionMNIST) -> None:
    x = debian_train.images.double() / 255
    assert round(x.mean().item(), 4) == debian_train.mean[0]
    assert round(x.std().item(), 4) == debian_train.std[0]
    assert torch.bincount(debian_train.labels).tolist() == [6000] * 10


@needs_debian
def test_auto_finds_full_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fm_module.ENV_VAR, raising=False)
    ds = FashionMNIST("test", source="auto")
    assert len(ds) == 10_000 and ds.source_path == DEBIAN


def test_auto_prefers_env_var_and_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    images = _write_split(raw, "t10k", 7, gz=False)
    monkeypatch.setenv(fm_module.ENV_VAR, str(tmp_path))
    ds = FashionMNIST("test", source="auto")
    assert ds.source_path == raw and len(ds) == 7
    assert torch.equal(ds.images[:, 0], images)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_auto_falls_back_to_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fm_module.ENV_VAR, str(tmp_path / "nothing-here"))
    monkeypatch.setattr(fm_module, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.warns(UserWarning, match="MASKKIT_DATA_DIR"):
        ds = FashionMNIST("test", source="auto")
    assert ds.source_path == fm_module.EMBEDDED_DIR and len(ds) == 2_000


def test_home_cache_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fm_module.ENV_VAR, raising=False)
    monkeypatch.setattr(fm_module, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".cache" / "maskkit" / "fashion-mnist"
    _write_split(cache, "train", 12, gz=True)
    assert FashionMNIST("train", source="auto").source_path == cache
    # the test split is not there: auto falls back for it
    assert FashionMNIST("test", source="auto").source_path == fm_module.EMBEDDED_DIR


def test_explicit_directory_layouts_and_errors(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    images = _write_split(flat, "train", 5, gz=True)
    ds = FashionMNIST("train", source=str(flat))
    assert ds.source_path == flat and torch.equal(ds.images[:, 0], images)
    with pytest.raises(FileNotFoundError, match=r"flat.*t10k-images-idx3-ubyte"):
        FashionMNIST("test", source=str(flat))
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        FashionMNIST("train", source=str(tmp_path / "missing-dir"))
    # labels that do not match the images
    write_idx(flat / "train-labels-idx1-ubyte.gz", torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        FashionMNIST("train", source=str(flat))


# ---------------------------------------------------------------------------------------- ImageFolder

def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_with_classes(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "b.png", (0, 0, 255))
    _png(tmp_path / "dog" / "a.PNG", (0, 255, 0), size=(3, 5))
    _png(tmp_path / "cat" / "sub" / "z.png", (255, 0, 0))
    _png(tmp_path / "cat" / "y.png", (10, 20, 30))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _png(tmp_path / "root-level.png", (1, 1, 1))  # ignored when there are class folders
    ds = ImageFolder(str(tmp_path))
    assert ds.classes == ("cat", "dog") and len(ds) == 4
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in ds.samples] == [
        ("cat/sub/z.png", 0), ("cat/y.png", 0), ("dog/a.PNG", 1), ("dog/b.png", 1)]
    img, label = ds[2]
    assert img.dtype == torch.uint8 and img.shape == (3, 5, 3) and label == 1
    assert img[:, 0, 0].tolist() == [0, 255, 0]
    assert ds[0][0][:, 2, 3].tolist() == [255, 0, 0]
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225) and ds.in_chans == 3

    gray = ImageFolder(tmp_path, in_chans=1)
    img, _ = gray[0]
    assert img.shape == (1, 4, 6) and gray.mean == (0.5,) and gray.std == (0.5,)
    assert img[0, 0, 0].item() == round(0.299 * 255)  # PIL's L = 0.299 R + 0.587 G + 0.114 B


def test_image_folder_scales_16_bit_grey_images_to_8_bits(tmp_path: Path) -> None:
    """A 16-bit grey PNG (Pillow mode I;16: scientific and medical images) keeps its contrast: value v becomes
    v >> 8 in every channel, where Pillow's convert() clips everything above 255 to white."""
    values = np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    expected = (values >> 8).astype(np.uint8)
    for in_chans in (1, 3):
        img = ImageFolder(tmp_path, in_chans=in_chans)[0][0]
        assert img.dtype == torch.uint8 and img.shape == (in_chans, 2, 4)
        assert (img == torch.from_numpy(expected)).all()
    # a 32-bit integer image (mode I, a TIFF) of 8-bit values keeps them: only 16-bit images are scaled down
    (tmp_path / "deep.png").unlink()
    Image.fromarray(values.astype(np.int32) // 257, mode="I").save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    img = ImageFolder(tmp_path, in_chans=1, extensions=(".tif",))[0][0]
    assert (img[0] == torch.from_numpy((values // 257).astype(np.uint8))).all()


def test_image_folder_reads_a_linked_folder_once_even_in_a_cycle(tmp_path: Path) -> None:
    """Links are followed (a linked file, a linked folder), but a link back into the tree (``cat/again -> .``)
    does not repeat the class's images once per level of ``cat/again/again/...`` until the OS refuses the path."""
    _png(tmp_path / "cat" / "a.png", (1, 2, 3))
    _png(tmp_path / "elsewhere" / "b.png", (4, 5, 6))
    (tmp_path / "cat" / "again").symlink_to(".", target_is_directory=True)
    (tmp_path / "cat" / "c.png").symlink_to(tmp_path / "elsewhere" / "b.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ("cat", "dog", "elsewhere")
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in ds.samples] == [
        ("cat/a.png", 0), ("cat/c.png", 0), ("dog/linked/b.png", 1), ("elsewhere/b.png", 2)]


def test_image_folder_flat_and_errors(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        _png(tmp_path / "flat" / f"img{i}.jpg", (i * 100, 0, 0))
    ds = ImageFolder(tmp_path / "flat")
    assert ds.classes == () and len(ds) == 3
    assert [ds[i][1] for i in range(3)] == [-1, -1, -1]
    assert [p.name for p, _ in ds.samples] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    with pytest.raises(FileNotFoundError, match="nope: no such directory"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"img0\.jpg: a file, not a directory \(expected a folder"):
        ImageFolder(tmp_path / "flat" / "img0.jpg")  # data.root naming one image instead of its folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="in_chans"):
        ImageFolder(tmp_path / "flat", in_chans=2)


# ----------------------------------------------------------------------------------------- transforms

@FAST
@given(height=st.integers(1, 300), width=st.integers(1, 300), seed=st.integers(0, 2**32),
       s0=st.floats(0.01, 1.0), s1=st.floats(0.01, 1.0), r0=st.floats(0.2, 1.0), r1=st.floats(1.0, 5.0))
def test_crop_params_inside_image_and_scale(height: int, width: int, seed: int, s0: float, s1: float,
                                            r0: float, r1: float) -> None:
    scale, ratio = (min(s0, s1), max(s0, s1)), (r0, r1)
    before = torch.get_rng_state()
    top, left, h, w = random_resized_crop_params(height, width, scale, ratio, torch.Generator().manual_seed(seed))
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is not touched
    assert 0 < h <= height and 0 < w <= width and 0 <= top <= height - h and 0 <= left <= width - w
    area = height * width
    in_bounds = ((h + 0.5) * (w + 0.5) >= scale[0] * area * (1 - 1e-6)
                 and (h - 0.5) * (w - 0.5) <= scale[1] * area * (1 + 1e-6))
    central = (top, left) == ((height - h) // 2, (width - w) // 2) and (h == height or w == width)
    assert in_bounds or central
    # the same draws as torchvision's RandomResizedCrop.get_params after manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio))
    assert (top, left, h, w) == tuple(expected)


def test_train_transform_deterministic_per_seed(embedded_train: FashionMNIST) -> None:
    img = embedded_train[0][0]
    tf = TrainTransform((32, 24), mean=embedded_train.mean, std=embedded_train.std)
    before = torch.get_rng_state()
    a = tf(img, torch.Generator().manual_seed(1))
    assert torch.equal(before, torch.get_rng_state())
    assert a.dtype == torch.float32 and a.shape == (1, 32, 24)
    assert torch.equal(a, tf(img, torch.Generator().manual_seed(1)))
    outs = [tf(img, torch.Generator().manual_seed(s)) for s in range(2, 8)]
    assert all(not torch.equal(a, o) for o in outs)
    lo, hi = (0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530
    assert a.min() >= lo - 1e-5 and a.max() <= hi + 1e-5


def test_train_transform_flip_only(embedded_train: FashionMNIST) -> None:
    img = embedded_train[1][0]
    tf = TrainTransform((28, 28), scale=None, hflip=True)  # no crop, no normalization
    plain, flipped = img.float() / 255, img.flip(-1).float() / 255
    n_flipped = 0
    for s in range(200):
        out = tf(img, torch.Generator().manual_seed(s))
        assert torch.equal(out, plain) or torch.equal(out, flipped)
        n_flipped += torch.equal(out, flipped)
    assert 70 <= n_flipped <= 130
    assert torch.equal(TrainTransform(28, scale=None, hflip=False)(img, torch.Generator()), plain)
    resized = TrainTransform(56, scale=None, hflip=False)(img, torch.Generator())
    assert resized.shape == (1, 56, 56)


@pytest.mark.parametrize("source", ["fashion_mnist", "jpeg"])
def test_uint8_output_normalised_later_equals_the_float_output(source: str, embedded_train: FashionMNIST,
                                                               tmp_path: Path) -> None:
    """The trainer's route (workers crop to uint8, the device normalises the batch) gives exactly the values of
    normalising in the worker, on real images: Fashion-MNIST, and JPEGs read by ImageFolder (a channels-last
    view, the crop's input) with a PIL grayscale copy that must be converted."""
    if source == "jpeg":
        from maskkit.bench.data import write_jpegs

        write_jpegs(tmp_path, 3)
        Image.open(tmp_path / "images" / "00000.jpg").convert("L").save(tmp_path / "images" / "gray.jpg")
        base, size = ImageFolder(tmp_path / "images"), (48, 40)
        assert not base[0][0].is_contiguous() and base[3][0].shape[0] == 3  # grey file -> RGB
    else:
        base, size = embedded_train, (32, 24)
    as_float = TrainTransform(size, mean=base.mean, std=base.std)
    as_uint8 = TrainTransform(size, mean=base.mean, std=base.std, output="uint8")
    for i in range(4 if source == "jpeg" else 8):
        img = base[i][0]
        crop = as_uint8(img, sample_generator(3, 1, i))
        assert crop.dtype == torch.uint8 and crop.is_contiguous() and crop.shape[-2:] == size
        assert torch.equal(as_uint8.normalize_batch(crop[None])[0], as_float(img, sample_generator(3, 1, i)))
    with pytest.raises(ValueError, match="output"):
        TrainTransform(8, output="float16")


def test_a_batch_normalised_on_another_device_copies_mean_and_std_there_once(monkeypatch) -> None:
    """The trainer normalises every batch on the training device: mean and std go there with the first batch
    and are reused (a copy from pageable memory per batch may wait for the device's queue); the transform
    pickled into loader workers carries no device copy."""
    import pickle

    transform = TrainTransform(8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), output="uint8")
    from_host = []  # tensors copied off the CPU
    to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: (from_host.append(tuple(self.shape))
                                                                   if self.device.type == "cpu" else None)
                        or to(self, *a, **k))
    batch = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")  # any device but the CPU
    for _ in range(3):
        out = transform.normalize_batch(batch)
        assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == batch.shape
    assert from_host == [(3, 1, 1), (3, 1, 1)]  # mean and std, with the first batch only
    assert list(transform._normalize._on_device) == [torch.device("meta")]
    assert pickle.loads(pickle.dumps(transform))._normalize._on_device == {}


@FAST
@given(height=st.integers(8, 1000), width=st.integers(8, 1000), size=st.sampled_from([28, 32, 224, 384]))
def test_eval_resize_size_is_torchvisions(height: int, width: int, size: int) -> None:
    """``EvalTransform(size).resize_size`` equals the output size of torchvision's ``Resize(int(size / 0.875))``
    (the long side truncated, e.g. 375 x 499 -> 256 x 340)."""
    from torchvision.transforms.v2 import functional as TF

    expected = tuple(TF.resize(torch.zeros(1, height, width, dtype=torch.uint8), int(size / 0.875)).shape[-2:])
    assert EvalTransform(size).resize_size(height, width) == expected


def test_eval_transform_and_denormalize() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    g = torch.Generator().manual_seed(0)
    same = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
    tf = EvalTransform(32, mean, std)
    out = tf(same)
    expected = (same.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(denormalize(out, mean, std), same.float() / 255, atol=1e-6)
    # a larger image: shorter side to int(224 / 0.875) = 256, then the central 224 x 224
    big = torch.full((3, 300, 400), 200, dtype=torch.uint8)
    big[:, :, :40] = 0  # a band that the resize keeps and the center crop removes
    e224 = EvalTransform(224)
    assert e224.resize_size(300, 400) == (256, 341) and e224.resize_size(375, 499) == (256, 340)
    out = e224(big)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, 200 / 255), atol=1e-6)
    assert EvalTransform((28, 20))(torch.zeros(1, 10, 10, dtype=torch.uint8)).shape == (1, 28, 20)
    assert torch.equal(tf(same), tf(same))


# ---------------------------------------------------------------------------------- loading, sampling

def test_sample_generator_is_stable() -> None:
    # constants computed once; a salted hash (Python's hash) would change them between processes
    assert stable_seed("maskkit/sample", 0, 0, 0) == 6183132755400618194
    g = sample_generator(1234, 5, 678)
    assert g.initial_seed() == 16165112630378950312
    assert torch.randint(0, 2**31, (3,), generator=g).tolist() == [1934541855, 117824037, 461665567]
    seeds = {sample_generator(s, e, i).initial_seed()
             for s in (0, 1) for e in (0, 1, 2) for i in (0, 1, 2, 10**9)}
    assert len(seeds) == 24  # (seed, epoch, index) are not mixed up


@FAST
@given(n=st.integers(0, 150), per_rank=st.integers(1, 12), world=st.integers(1, 4), seed=st.integers(0, 10**6),
       epoch=st.integers(0, 50), drop_last=st.booleans())
def test_global_batch_sampler_ranks_equal_single_process(n: int, per_rank: int, world: int, seed: int,
                                                         epoch: int, drop_last: bool) -> None:
    G = per_rank * world
    single = GlobalBatchSampler(n, G, seed=seed, drop_last=drop_last)
    ranks = [GlobalBatchSampler(n, G, seed=seed, rank=r, world_size=world, drop_last=drop_last)
             for r in range(world)]
    for s in (single, *ranks):
        s.set_epoch(epoch)
    global_batches = list(single)
    assert len(global_batches) == len(single) == (n // G if drop_last else math.ceil(n / G))
    flat = [i for b in global_batches for i in b]
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(n))  # each sample at most once
    assert flat == single.permutation(epoch).tolist()[:len(flat)]
    if not drop_last:
        assert sorted(flat) == list(range(n))
    per_rank_batches = [list(s) for s in ranks]
    for s, batches in zip(ranks, per_rank_batches):
        assert len(s) == len(batches)
        if drop_last:
            assert all(len(b) == per_rank for b in batches)
    for b, global_batch in enumerate(global_batches):
        sizes = [len(global_batch) * (r + 1) // world - len(global_batch) * r // world for r in range(world)]
        joined = []
        for r in range(world):
            if sizes[r]:
                joined += per_rank_batches[r][b]
        assert joined == global_batch


@FAST
@given(n=st.integers(20, 200), G=st.integers(1, 16), seed=st.integers(0, 10**6), data=st.data())
def test_global_batch_sampler_set_start_and_epochs(n: int, G: int, seed: int, data: st.DataObject) -> None:
    sampler = GlobalBatchSampler(n, G, seed=seed)
    sampler.set_epoch(3)
    full = list(sampler)
    k = data.draw(st.integers(0, len(full)))
    sampler.set_start(k)
    assert len(sampler) == len(full) - k
    assert list(sampler) == full[k:]
    sampler.set_epoch(3)  # the same epoch keeps the start
    assert list(sampler) == full[k:]
    sampler.set_epoch(4)  # a new epoch starts at 0 with another order
    other = list(sampler)
    assert len(other) == len(full) and other != full
    assert not torch.equal(sampler.permutation(3), sampler.permutation(4))
    with pytest.raises(ValueError, match="set_start"):
        sampler.set_start(len(full) + 1)


@FAST
@given(n=st.integers(20, 200), G=st.integers(1, 16), world=st.sampled_from([1, 2]), drop_last=st.booleans(),
       seed=st.integers(0, 10**6), data=st.data())
def test_global_batch_sampler_max_batches_is_a_prefix_of_the_epoch(n: int, G: int, world: int, drop_last: bool,
                                                                    seed: int, data: st.DataObject) -> None:
    """``max_batches`` (an epoch of whole optimizer steps) cuts each rank's epoch to its first batches."""
    G *= world
    for rank in range(world):
        whole = GlobalBatchSampler(n, G, seed=seed, rank=rank, world_size=world, drop_last=drop_last)
        full = list(whole)
        m = data.draw(st.integers(0, whole.num_global_batches + 2))
        cut = GlobalBatchSampler(n, G, seed=seed, rank=rank, world_size=world, drop_last=drop_last, max_batches=m)
        assert list(cut) == full[:m] and len(cut) == len(full[:m])
        k = data.draw(st.integers(0, cut.num_global_batches))
        cut.set_start(k)
        assert list(cut) == full[k:m] and len(cut) == len(full[k:m])


def test_global_batch_sampler_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(100, 10, seed=0, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        GlobalBatchSampler(100, 10, seed=0, rank=2, world_size=2)


def test_augmented_dataset_and_loader_two_ranks(embedded_train: FashionMNIST) -> None:
    base = torch.utils.data.Subset(embedded_train, range(64))
    tf = TrainTransform(28, mean=embedded_train.mean, std=embedded_train.std)
    ds = AugmentedDataset(base, tf, seed=7)
    ds.set_epoch(2)
    x, y = ds[5]
    assert torch.equal(x, tf(embedded_train[5][0], sample_generator(7, 2, 5))) and y == int(embedded_train.labels[5])

    def batches(rank: int, world: int, per_rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sampler = GlobalBatchSampler(len(ds), 16, seed=3, rank=rank, world_size=world)
        sampler.set_epoch(2)
        return list(make_loader(ds, sampler))

    single, r0, r1 = batches(0, 1, 16), batches(0, 2, 8), batches(1, 2, 8)
    assert len(single) == 4 and single[0][0].shape == (16, 1, 28, 28) and single[0][1].dtype == torch.int64
    for (xs, ys), (x0, y0), (x1, y1) in zip(single, r0, r1):
        assert x0.shape[0] == 8 and torch.equal(xs, torch.cat([x0, x1])) and torch.equal(ys, torch.cat([y0, y1]))

    evaluated = AugmentedDataset(base, EvalTransform(28, (0.5,), (0.5,)))
    x, _ = evaluated[0]
    assert torch.allclose(x, (embedded_train[0][0].float() / 255 - 0.5) / 0.5)


def test_persistent_workers_follow_set_epoch(embedded_train: FashionMNIST) -> None:
    base = torch.utils.data.Subset(embedded_train, range(24))
    tf = TrainTransform(28, mean=embedded_train.mean, std=embedded_train.std)
    ds = AugmentedDataset(base, tf, seed=11)
    sampler = GlobalBatchSampler(len(ds), 8, seed=0)
    loader = make_loader(ds, sampler, num_workers=2)
    assert loader.persistent_workers and loader.prefetch_factor == 4
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        got = torch.cat([x for x, _ in loader])
        order = [i for b in sampler for i in b]
        want = torch.stack([tf(base[i][0], sample_generator(11, epoch, i)) for i in order])
        assert torch.equal(got, want), f"epoch {epoch}: workers did not use the new epoch"
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(ds, sampler, num_workers=0, persistent_workers=True)

"""``data.decode: device``: loader workers read JPEG files and draw the augmentation, the training device decodes
(nvJPEG on a GPU; libjpeg-turbo on a CPU, which these tests use), crops and flips. On a CPU both routes decode
with libjpeg-turbo, so the device route must give exactly the host route's batches."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_engine import Crash, CrashAfterCheckpoint

from maskkit.data import ImageFolder, TrainTransform, sample_generator
from maskkit.data.encoded import DeviceDecoder, EncodedImage, EncodedView, PlannedCrop
from maskkit.data.fashion_mnist import FashionMNIST
from maskkit.data.loading import AugmentedDataset, BadBatch, BadImages, BadSample, GlobalBatchSampler, make_loader
from maskkit.engine.trainer import Trainer
from maskkit.errors import ConfigError, UnreadableImageError
from maskkit.recipe import load_recipe
from maskkit.registry import Registry


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight photo-like RGB JPEGs (ImageNet-like sizes), a grey JPEG and a PNG (decoded in the worker)."""
    from maskkit.bench.data import write_jpegs

    root = write_jpegs(tmp_path_factory.mktemp("photos"), 8) / "images"
    Image.open(root / "00000.jpg").convert("L").save(root / "grey.jpg")
    Image.open(root / "00001.jpg").save(root / "lossless.png")
    return root


@pytest.fixture(scope="module")
def fashion_jpegs(tmp_path_factory) -> Path:
    """48 real Fashion-MNIST images as grey JPEGs in two class folders, and a PNG."""
    root = tmp_path_factory.mktemp("fashion")
    data = FashionMNIST("train", source="embedded")
    for i in range(48):
        image, label = data[i]
        folder = root / ("upper" if label in (0, 2, 4, 6) else "other")
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(image[0])).save(folder / f"{i:02d}.jpg", quality=92)
    Image.fromarray(np.asarray(data[48][0][0])).save(root / "other" / "48.png")
    return root


def host_crop(base: ImageFolder, transform: TrainTransform, index: int, epoch: int = 0) -> torch.Tensor:
    return transform(base[index][0], sample_generator(0, epoch, index))


def device_batch(base: ImageFolder, transform: TrainTransform, indices, epoch: int = 0) -> torch.Tensor:
    from maskkit.data.loading import stack_collate

    view = EncodedView(base)
    items = [(transform(view[i][0], sample_generator(0, epoch, i)), view[i][1]) for i in indices]
    images, labels = DeviceDecoder(transform, "cpu", base.in_chans)(stack_collate(items))
    assert labels.tolist() == [base.samples[i][1] for i in indices]
    return images


def test_the_worker_reads_jpegs_undecoded_and_decodes_the_rest(photos: Path) -> None:
    base = ImageFolder(photos)
    kinds = {path.name: type(base.encoded(i)[0]).__name__ for i, (path, _) in enumerate(base.samples)}
    assert kinds["00003.jpg"] == kinds["grey.jpg"] == "EncodedImage" and kinds["lossless.png"] == "Tensor"
    encoded = base.encoded(0)[0]
    assert (encoded.height, encoded.width) == tuple(base[0][0].shape[-2:])
    assert encoded.data.dtype == torch.uint8 and bytes(encoded.data.numpy()) == base.samples[0][0].read_bytes()
    # a one-channel model: an RGB JPEG would need a colour conversion that libjpeg does differently from PIL
    grey = ImageFolder(photos, in_chans=1)
    grey_jpeg = [p.name for p, _ in grey.samples].index("grey.jpg")
    assert isinstance(grey.encoded(grey_jpeg)[0], EncodedImage)
    assert isinstance(grey.encoded(0)[0], torch.Tensor) and grey.encoded(0)[0].shape[0] == 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(epoch=st.integers(0, 1000), size=st.sampled_from([(224, 224), (96, 128), (32, 32)]),
       scale=st.sampled_from([(0.2, 1.0), (0.05, 0.3), None]), hflip=st.booleans())
def test_the_device_route_gives_the_host_routes_crops(photos: Path, epoch: int, size, scale, hflip: bool) -> None:
    """The same draws (box, flip) and, with libjpeg-turbo on both sides, the same pixels: for any epoch, output
    size and crop setting, on photo-like JPEGs, a grey JPEG in an RGB run and a PNG decoded in the worker."""
    base = ImageFolder(photos)
    transform = TrainTransform(size, scale=scale, hflip=hflip, mean=base.mean, std=base.std, output="uint8")
    indices = list(range(len(base)))
    expected = torch.stack([host_crop(base, transform, i, epoch) for i in indices])
    assert torch.equal(device_batch(base, transform, indices, epoch), expected)


def test_real_fashion_mnist_jpegs_through_the_loader_equal_the_host_route(fashion_jpegs: Path) -> None:
    """Two loader workers, one-channel JPEGs of real images: batch for batch the host route's values."""
    base = ImageFolder(fashion_jpegs, in_chans=1)
    transform = TrainTransform(28, scale=(0.35, 1.0), mean=base.mean, std=base.std, output="uint8")
    batches = {}
    for route, dataset in (("host", base), ("device", EncodedView(base))):
        sampler = GlobalBatchSampler(len(base), 16, seed=0)
        loader = make_loader(AugmentedDataset(dataset, transform, seed=0, catch_bad=True), sampler, num_workers=2)
        decoder = DeviceDecoder(transform, "cpu", in_chans=1)
        batches[route] = [decoder(batch) for batch in loader]
    assert len(batches["host"]) == 3
    for (host_images, host_labels), (device_images, device_labels) in zip(batches["host"], batches["device"]):
        assert device_images.shape == (16, 1, 28, 28) and torch.equal(device_images, host_images)
        assert torch.equal(device_labels, host_labels)


def test_a_jpeg_that_does_not_decode_joins_the_bad_images_by_name(photos: Path, tmp_path: Path) -> None:
    """A JPEG whose header reads but whose data is cut short fails on the device; it is reported like an
    unreadable file on the host (its path, one line), after a file the worker already could not read."""
    for name in ("00000.jpg", "00001.jpg", "00002.jpg"):
        (tmp_path / name).write_bytes((photos / name).read_bytes())
    data = (photos / "00003.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    base = ImageFolder(tmp_path)
    transform = TrainTransform(64, output="uint8")
    crops = [transform(EncodedView(base)[i][0], sample_generator(0, 0, i)) for i in range(len(base))]
    assert all(isinstance(c, PlannedCrop) for c in crops)  # the header of cut.jpg reads
    cut = [p.name for p, _ in base.samples].index("cut.jpg")
    # the loader already left out a file at position 1 of the sampled batch: the decoder's positions follow it
    earlier = BadSample("/elsewhere/empty.jpg", "cannot identify image file")
    kept = (0, 2, 3, 4)
    images, labels, info = DeviceDecoder(transform, "cpu")((crops, torch.tensor([7, 8, 9, 10]),
                                                            BadBatch((earlier,), kept)))
    assert images.shape == (3, 3, 64, 64) and labels.tolist() == [v for j, v in enumerate([7, 8, 9, 10]) if j != cut]
    assert info.bad[0] == earlier and info.bad[1].path.endswith("cut.jpg")
    assert info.bad[1].reason == "Image is incomplete or truncated"  # torchvision's words, without its source path
    assert info.kept == tuple(k for j, k in enumerate(kept) if j != cut)
    good = [i for i in range(4) if i != cut]
    assert torch.equal(images, torch.stack([host_crop(base, transform, i) for i in good]))
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg: unreadable image \(Image is incomplete"):
        BadImages("stop").accept(DeviceDecoder(transform, "cpu")((crops, torch.zeros(4, dtype=torch.int64))))
    only_bad = DeviceDecoder(transform, "cpu")(([crops[cut]], torch.zeros(1, dtype=torch.int64)))
    assert only_bad[:2] == (None, None) and only_bad[2].kept == ()


def test_a_device_failure_while_decoding_is_raised_not_blamed_on_the_files(photos: Path, monkeypatch) -> None:
    """Out of memory (torchvision rewraps CUDA's as a plain RuntimeError) or a CUDA error left by a failed
    device-side assertion: raised as it is, never turned into good files reported as unreadable."""
    import torchvision.io

    base = ImageFolder(photos)
    transform = TrainTransform(64, output="uint8")
    crops = [transform(EncodedView(base)[i][0], sample_generator(0, 0, i)) for i in range(4)]
    for message in ("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 2.00 GiB",
                    "CUDA error: device-side assert triggered"):
        def failing(*args, message=message, **kwargs):
            raise RuntimeError(message)

        monkeypatch.setattr(torchvision.io, "decode_jpeg", failing)
        with pytest.raises(RuntimeError, match=message.split(":")[-1].strip()[:20]):
            DeviceDecoder(transform, "cpu")((crops, torch.zeros(4, dtype=torch.int64)))


def test_decoding_in_another_thread_keeps_the_training_threads_weight_casts(photos: Path) -> None:
    """Leaving an outermost autocast context clears autocast's cast cache for the whole process. The decoder
    runs in decode-ahead's thread, where no autocast is on: it must not enter one (it used to, to leave the
    trainer's), or every decode would make the trainer cast its weights again."""
    base = ImageFolder(photos)
    transform = TrainTransform(64, output="uint8")
    crops = [transform(EncodedView(base)[i][0], sample_generator(0, 0, i)) for i in range(4)]
    decoder = DeviceDecoder(transform, "cpu")
    weight = torch.nn.Parameter(torch.randn(64, 64))
    x = torch.randn(8, 64, requires_grad=True)  # so that backward keeps the bf16 weight
    casts = []

    def note_casts(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.bfloat16 and t.shape == (64, 64):
            casts.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(note_casts, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = torch.mm(x, weight)  # kept: its graph holds the bf16 weight, whose memory is not reused
            decoded = threading.Thread(target=decoder, args=((crops, torch.zeros(4, dtype=torch.int64)),))
            decoded.start()
            decoded.join()
            second = torch.mm(x, weight)
    assert len(casts) == 2 and len(set(casts)) == 1, (first, second)  # one cast of the weight, used twice


def _train(tree: dict, out: Path, registry, **kwargs) -> list[float]:
    Trainer(load_recipe(tree), out, registry=registry, progress=False, **kwargs).fit()
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_with_device_decode_equals_host_decode_and_resumes_exactly(fashion_jpegs: Path, tmp_path: Path,
                                                                            builtin_registry, monkeypatch) -> None:
    """Bit for bit, though the device route decodes in a thread, batches ahead of the step (finish_ahead)."""
    data = {"name": "image_folder", "root": str(fashion_jpegs), "in_chans": 1}
    host = _train(tiny_tree(data=data), tmp_path / "host", builtin_registry)
    tree = tiny_tree(data={**data, "decode": "device"})
    tree["train"]["num_workers"] = 2
    decoding_threads = set()
    decode = DeviceDecoder.__call__

    def noting_the_thread(self, batch):
        decoding_threads.add(threading.current_thread().name)
        return decode(self, batch)

    monkeypatch.setattr(DeviceDecoder, "__call__", noting_the_thread)
    pulled = []
    loader_batches = Trainer._loader_batches

    def counting(self, count):
        for item in loader_batches(self, count):
            pulled.append(item[0])
            yield item

    monkeypatch.setattr(Trainer, "_loader_batches", counting)
    assert len(host) == 6 and _train(tree, tmp_path / "device", builtin_registry) == host  # bit for bit
    assert len(pulled) == 6  # decoding ahead pulls no batch beyond the last step's
    assert decoding_threads and all(name.startswith("maskkit-finish-ahead") for name in decoding_threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("maskkit-finish-ahead")]
    crashing = Registry.from_plugins(autoload=False, plugins={"crash": CrashAfterCheckpoint(3)})
    with pytest.raises(Crash):
        _train(tree, tmp_path / "resumed", crashing)
    resumed = _train(tree, tmp_path / "resumed", builtin_registry, resume=tmp_path / "resumed" / "checkpoint.pth")
    assert resumed == host


def test_device_decode_of_a_dataset_without_files_is_one_line(tmp_path: Path, builtin_registry) -> None:
    tree = tiny_tree(data={"name": "fashion_mnist", "source": "embedded", "decode": "device"})
    with pytest.raises(ConfigError, match=r"data\.decode: device needs a dataset of image files .*FashionMNIST"):
        Trainer(load_recipe(tree), tmp_path / "run", registry=builtin_registry, progress=False).fit()
    tree["data"]["decode"] = "gpu"
    with pytest.raises(ConfigError, match=r"data\.decode: expected host or device, got 'gpu'"):
        load_recipe(tree)


@pytest.mark.skipif(os.name != "posix", reason="POSIX resource limits")
def test_the_open_files_limit_is_lifted_for_the_images_in_flight() -> None:
    """An image's bytes travel from a worker as a shared tensor holding an open file: the soft limit is raised
    towards what is needed (never past the hard limit, never lowered)."""
    import subprocess
    import sys

    script = ("import resource; from maskkit.data.loading import lift_open_files_limit as lift\n"
              "N = resource.RLIMIT_NOFILE; soft, hard = resource.getrlimit(N); resource.setrlimit(N, (256, hard))\n"
              "want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)\n"
              "print(lift(4096) == want == resource.getrlimit(N)[0], lift(300) == want == resource.getrlimit(N)[0])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


def test_training_with_device_decode_and_workers_lifts_the_open_files_limit(fashion_jpegs: Path, tmp_path: Path,
                                                                           builtin_registry, monkeypatch) -> None:
    import maskkit.engine.trainer as trainer_module

    asked = []
    monkeypatch.setattr(trainer_module, "lift_open_files_limit", lambda needed: asked.append(needed) or needed)
    tree = tiny_tree(data={"name": "image_folder", "root": str(fashion_jpegs), "in_chans": 1, "decode": "device"})
    tree["train"].update(num_workers=2, max_steps=1)
    Trainer(load_recipe(tree), tmp_path / "run", registry=builtin_registry, progress=False).fit()
    batch = tree["train"]["batch_size"]
    assert asked == [2 * 4 * batch * 2 + 1024]  # 2 workers x 4 prefetched batches, twice over, and spare
    tree["data"]["decode"] = "host"
    Trainer(load_recipe(tree), tmp_path / "host", registry=builtin_registry, progress=False).fit()
    assert len(asked) == 1  # the host route sends one uint8 batch tensor: nothing to lift


def test_a_crop_batch_crosses_processes_as_one_tensor_of_bytes(photos: Path) -> None:
    """Pickled as a loader worker sends it, a batch's JPEG bytes travel as one tensor: they come back equal, as
    views of a single storage, with the worker-decoded crops and the draws unchanged; a shallow copy (the
    loader's pin_memory makes one) repacks nothing."""
    import copy
    import io
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 (registers the tensor reductions with ForkingPickler)

    from maskkit.data.encoded import CropBatch
    from maskkit.data.loading import stack_collate

    base = ImageFolder(photos)
    transform = TrainTransform(32, mean=base.mean, std=base.std, output="uint8")
    items = [(transform(EncodedView(base)[i][0], sample_generator(0, 0, i)), i) for i in range(len(base))]
    items.append((torch.full((base.in_chans, 32, 32), 7, dtype=torch.uint8), 9))  # a crop a worker decoded
    crops, _ = stack_collate(items)
    assert isinstance(crops, CropBatch) and sum(isinstance(c, PlannedCrop) for c in crops) >= 2
    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(crops)
    back = ForkingPickler.loads(buffer.getvalue())
    assert isinstance(back, CropBatch) and len(back) == len(crops)
    planned = [(a, b) for a, b in zip(crops, back) if isinstance(a, PlannedCrop)]
    for a, b in planned:
        assert torch.equal(a.image.data, b.image.data)
        assert (a.box, a.flip, a.image.path) == (b.box, b.flip, b.image.path)
    assert len({b.image.data.untyped_storage().data_ptr() for _, b in planned}) == 1  # one tensor for them all
    assert torch.equal(back[-1], crops[-1])
    shallow = copy.copy(back)
    assert type(shallow) is CropBatch and all(x is y for x, y in zip(shallow, back))


def test_loader_workers_send_a_batchs_bytes_with_one_open_file(fashion_jpegs: Path) -> None:
    """Through real workers: a kept batch holds one shared storage for its JPEG bytes (before: one per image, each
    an open file in the training process, about 64 per batch of 64)."""
    base = ImageFolder(fashion_jpegs)
    transform = TrainTransform(28, mean=base.mean, std=base.std, output="uint8")
    data = AugmentedDataset(EncodedView(base), transform)
    loader = make_loader(data, GlobalBatchSampler(len(data), 16, seed=0), num_workers=2)
    open_files = lambda: len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0  # noqa: E731
    before = open_files()
    batches = iter(loader)
    kept = [next(batches) for _ in range(3)]
    storages = [{c.image.data.untyped_storage().data_ptr() for c in crops if isinstance(c, PlannedCrop)}
                for crops, _ in kept]
    assert [len(s) for s in storages] == [1, 1, 1] and all(len(crops) == 16 for crops, _ in kept)
    if before:
        assert open_files() - before < 30  # the workers' pipes (~14) and three batches (before: ~60 in all)
    del batches

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Masks are small tensors: one thread is fastest, and steady on a busy machine."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def fashion_images():
    """``images(n, size, in_chans) -> float [n, in_chans, size, size]``: real Fashion-MNIST training images
    (maskkit's embedded subset), resized and normalized as maskkit's evaluation pipeline does."""
    data = pytest.importorskip("maskkit.data")
    try:
        dataset = data.FashionMNIST(split="train", source="embedded")
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"embedded Fashion-MNIST not available: {exc}")

    def images(n: int, size: int, in_chans: int = 1) -> torch.Tensor:
        transform = data.EvalTransform((size, size), dataset.mean, dataset.std, crop_pct=1.0)
        batch = torch.stack([transform(dataset[i][0]) for i in range(n)])  # [n, 1, size, size]
        return batch.expand(-1, in_chans, -1, -1).contiguous()

    return images


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)

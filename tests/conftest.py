import pytest
import torch

from maskkit.registry import Registry


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The built-ins plus installed plugins."""
    return Registry.from_plugins()


@pytest.fixture(scope="session")
def builtin_registry() -> Registry:
    """The built-ins only (no entry points)."""
    return Registry.from_plugins(autoload=False)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)

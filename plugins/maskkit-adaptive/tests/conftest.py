import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models and masks: one thread is fastest, and steady on a busy machine."""
    torch.set_num_threads(1)
    yield

import sys

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Single-threaded torch in tests that use it: faster on a shared 2-core machine, and the same
    numbers every run. Tests that never import torch are left alone (the analysis side must not need it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

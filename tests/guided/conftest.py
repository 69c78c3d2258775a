"""The guided-face tests run torch single-threaded.

Their tensors are tiny (30 elements) or 10 000-element batches of cheap elementwise ops, where intra-op threads only
add wake-up latency: a 100-step guided loop plus its float64 transcription took 3.2 s with 2 threads on a loaded
2-core machine and 0.14 s with 1.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

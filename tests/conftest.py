"""Fixtures shared by tests/ and tests/contracts/."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (pytestmark = pytest.mark.usefixtures("one_thread")): on 2 cores shared with
    other jobs, 2 threads made tiny training steps 10-30x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

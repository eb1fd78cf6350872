"""Contract tests: one torch thread per module (tests/test_train.py measured 2 threads 10-30x slower on 2 shared
cores)."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

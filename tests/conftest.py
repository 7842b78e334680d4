import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The tests use tiny tensors: one thread avoids oversubscription on small shared machines.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

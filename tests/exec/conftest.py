import pytest
import torch

from exec_helpers import random_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """Near-uniform logits (default init): every argmax is a near-tie, the hardest case
    for bit-exact greedy equivalence."""
    return random_model()


@pytest.fixture(scope="session")
def shipped():
    from hispec_exec import load_model

    return load_model()

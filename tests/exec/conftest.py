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


@pytest.fixture(params=["free", "tiles"])
def row_mode(request, monkeypatch):
    """Both ways the decoding path lays its linear products out: free row counts (where the
    probe finds this machine's products row invariant, as on the developers' AMD EPYC VM)
    and the fixed tiles every other machine falls back to."""
    import hispec_exec.model as model_module

    if request.param == "tiles":
        monkeypatch.setattr(model_module, "FREE_ROWS", False)
    return request.param

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from p2pforget import config  # noqa: E402


@pytest.fixture
def small_cfg():
    """A tiny logistic experiment: 6 clients on a ring, float64, full batch."""
    return config.from_dict({
        "run": {"seed": 3, "rounds": 6},
        "topology": {"kind": "ring", "n_clients": 6},
        "data": {"n_samples_per_client": 20, "n_test": 40, "n_features": 4, "n_classes": 3},
        "train": {"dtype": "float64", "lr": 0.3},
    })

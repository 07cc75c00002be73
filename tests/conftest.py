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
        "data": {"n_samples_per_client": 20, "n_test": 40, "gaussian_logistic": {"n_features": 4, "n_classes": 3}},
        "train": {"dtype": "float64", "lr": 0.3},
    })


@pytest.fixture
def trained_digits():
    """Build and train a small digits MLP experiment (40 samples per client, hidden 16):
    ``trained_digits(kind, n_clients, seed=..., rounds=..., local_steps=...)`` -> trained Engine."""
    from p2pforget.engine import Engine

    def build(kind: str, n_clients: int, *, seed: int, rounds: int, local_steps: int) -> Engine:
        cfg = config.from_dict({"run": {"seed": seed, "rounds": rounds}, "topology": {"kind": kind, "n_clients": n_clients},
                                "data": {"kind": "digits", "n_samples_per_client": 40, "n_test": 60},
                                "model": {"kind": "mlp", "mlp": {"hidden": 16}},
                                "train": {"lr": 0.3, "local_steps": local_steps, "batch_size": 16},
                                "audit": {"after_forget": False}})
        engine = Engine(config=cfg)
        engine.train(rounds, progress=False)
        return engine

    return build


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first: on two workers a minute-long test that starts last keeps
    the run waiting for it alone; started first, the short tests fill the other worker meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

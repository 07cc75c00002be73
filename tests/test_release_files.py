"""What a run publishes: release/ holds the noised models of the nodes still in the graph and the
certificate's public fields; nothing in it lets the noise draw (hence the noiseless models) be
recovered, and the private record can be dropped."""
import json

import numpy as np
import pytest

from p2pforget import config, experiment, history, release
from p2pforget.__main__ import main


def _cfg(tmp_path, **run):
    return config.from_dict({
        "run": {"seed": 3, "rounds": 15, "out": str(tmp_path)} | run,
        "topology": {"kind": "ring", "n_clients": 6},
        "data": {"n_samples_per_client": 15, "n_test": 40, "gaussian_logistic": {"n_features": 4}},
        "train": {"dtype": "float32", "weight_decay": 1e-3},
        "unlearn": {"clients": [2], "mode": "remove"},
        "audit": {"after_forget": False},
    })


def _published(folder):
    """Every number in every file under ``folder``: (name, array) pairs."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".h5":
            out += [(f"{path.name}:{k}", np.asarray(v, dtype=np.float64)) for k, v in history.read_h5(path).arrays.items()
                    if np.issubdtype(np.asarray(v).dtype, np.number)]
        elif path.suffix == ".json":
            def numbers(obj, name):
                if isinstance(obj, dict):
                    for k, v in obj.items():
                        yield from numbers(v, f"{name}.{k}")
                elif isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj):
                    yield name, np.asarray(obj, dtype=np.float64)
                elif isinstance(obj, list):
                    for i, v in enumerate(obj):
                        yield from numbers(v, f"{name}[{i}]")
                elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
                    yield name, np.asarray([obj], dtype=np.float64)
            out += list(numbers(json.loads(path.read_text()), path.name))
    return out


def test_release_holds_noised_member_rows_and_no_way_back_to_the_noise(tmp_path):
    experiment.run(_cfg(tmp_path), progress=False)
    private = history.read_h5(tmp_path / "history.h5")
    noiseless = private.arrays["params/unlearned_noiseless"].astype(np.float64)
    group = private.group_attrs["unlearn"]
    assert group["certified"], group["not_certified_because"]
    sigma, d = group["sigma"], noiseless.shape[1]
    nodes = np.array([0, 1, 3, 4, 5])

    requests, arrays = release.read(tmp_path)
    assert len(requests) == 1 and requests[0]["nodes"] == nodes.tolist()
    models = arrays[0]["models"]
    assert models.shape == (5, d) and arrays[0]["nodes"].tolist() == nodes.tolist()  # the departed node is absent
    assert np.isnan(private.arrays["params/unlearned"][2]).all()  # and not released in the private record either
    # The release is the noiseless model plus a noise vector of norm ~ sigma sqrt(d) ...
    noise = np.linalg.norm(models - noiseless[nodes], axis=1)
    assert np.all((noise > 0.5 * sigma * np.sqrt(d)) & (noise < 2.0 * sigma * np.sqrt(d)))
    # ... and no published number lies near any private model (nor any row, nor a difference):
    # the noise cannot be taken out again.
    secrets = np.concatenate([noiseless[nodes]] + [private.arrays[f"params/{k}"].astype(np.float64)
                                                   for k in ("before_request", "retrained")])
    for name, values in _published(tmp_path / "release"):
        rows = values.reshape(-1, d) if values.size % d == 0 and values.size >= d else None
        if rows is not None:
            gap = np.linalg.norm(rows[:, None, :] - secrets[None], axis=2).min()
            assert gap > 0.25 * sigma * np.sqrt(d), name
    cert = requests[0]["certificate"]
    assert cert["certified"] and cert["sigma"] == sigma and cert["epsilon"] == group["epsilon"]
    for key in ("residual_norm", "residual_bound", "gradient_residual_bound", "taylor_bound", "hessian_lipschitz",
                "newton_steps_taken", "network_gradient_bound", "fallback"):
        assert key in group and key not in cert, key  # data-dependent: in the private record only
    text = (tmp_path / "release" / "release.json").read_text()
    assert "distance" not in text and "residual_norm" not in text and "FA" not in text
    assert requests[0]["test_accuracy"]["mean"] > 0.4  # the released models still classify


def test_keep_private_false_leaves_only_the_release(tmp_path, capsys):
    experiment.run(_cfg(tmp_path, keep_private=False), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["release"]
    requests, arrays = release.read(tmp_path)
    assert len(requests) == 1 and arrays[0]["models"].shape[0] == 5
    assert main(["forget", str(tmp_path), "--clients", "3"]) == 2
    assert "run.keep_private = false" in capsys.readouterr().err


def test_a_second_request_adds_to_the_release(tmp_path):
    experiment.run(_cfg(tmp_path), progress=False)
    experiment.forget_run(tmp_path, clients=[3], reference=False, progress=False)
    requests, arrays = release.read(tmp_path)
    assert [r["nodes"] for r in requests] == [[0, 1, 3, 4, 5], [0, 1, 4, 5]]
    assert [r["forgotten"] for r in requests] == [{"2": list(range(15))}, {"3": list(range(15))}]
    assert arrays[1]["models"].shape == (4, arrays[0]["models"].shape[1])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["requests"][1]["unlearn"]["cumulative_epsilon"] == pytest.approx(2.0)


def test_cumulative_epsilon_stays_unbounded_after_an_uncertified_release(tmp_path):
    # Noise is added, but the bound cannot meet a budget of 1e-30: the release is not certified.
    cfg = config.replace(_cfg(tmp_path), unlearn={"certified": {"budget": 1e-30, "fallback": "none"}})
    experiment.run(cfg, progress=False)
    experiment.forget_run(tmp_path, clients=[3], reference=False, progress=False,
                          overrides=["unlearn.certified.budget=1e-6"])
    first, second = json.loads((tmp_path / "report.json").read_text())["requests"]
    assert not first["unlearn"]["certified"] and first["unlearn"]["cumulative_epsilon"] is None
    assert second["unlearn"]["certified"] and second["unlearn"]["epsilon"] == 1.0
    assert second["unlearn"]["cumulative_epsilon"] is None  # the first release had no finite epsilon

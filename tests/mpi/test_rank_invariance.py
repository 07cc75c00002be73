"""Run under any number of ranks: `mpirun -n K python -m pytest tests/mpi` (also plain pytest, K = 1).

Every rank runs the experiment through the MPI transport; rank 0 also runs it in-process and
compares the run files bit for bit.
"""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from p2pforget import config, experiment, history
from p2pforget.transport import block
from p2pforget.transport.mpi import MPITransport

MPI = pytest.importorskip("mpi4py.MPI")
COMM = MPI.COMM_WORLD

BASE = {
    "run": {"seed": 5, "rounds": 6},
    "data": {"n_samples_per_client": 16, "n_test": 30, "partition": "dirichlet", "gaussian_logistic": {"n_features": 4}},
    "model": {"kind": "mlp", "mlp": {"hidden": 6}},
    "train": {"batch_size": 4, "local_steps": 2, "lr": 0.2},
}
UNLEARN_CASES = {
    "ring7_certified_gossip": {"topology": {"kind": "ring", "n_clients": 7}, "model": {"kind": "logistic"},
                               "train": {"algorithm": "gradient_tracking", "local_steps": 1, "dtype": "float64", "weight_decay": 0.1},
                               "unlearn": {"clients": [2], "certified": {"newton_steps": 2, "noise_seed": 3, "averaging": "gossip"}}},
    "star5_samples_keep_relay": {"topology": {"kind": "star", "n_clients": 5}, "model": {"kind": "logistic"},
                                 "train": {"dtype": "float64", "weight_decay": 0.05},
                                 "unlearn": {"samples": {"1": [0, 3, 4]}, "clients": [4], "mode": "keep_relay",
                                             "certified": {"noise_seed": 4, "noise_scope": "per_node"}}},
    "erdos_renyi10_mlp_ggn_tree": {"topology": {"kind": "erdos_renyi", "n_clients": 10, "erdos_renyi": {"p": 0.5}, "dropout": 0.2},
                                   "unlearn": {"clients": [6], "certified": {"curvature": "ggn", "averaging": "tree", "damping": 0.1,
                                               "finetune_rounds": 2, "noise_seed": 5}}},
    "star6_foul_pacs_like": {"topology": {"kind": "star", "n_clients": 6},
                             "data": {"kind": "pacs_like", "n_samples_per_client": 14, "n_test": 28,
                                      "partition": "by_domain", "pacs_like": {"image_size": 16}},
                             "model": {"kind": "l2u", "l2u": {"hidden": 8}}, "train": {"batch_size": 7, "lr": 0.1},
                             "unlearn": {"method": "foul", "clients": [4, 5], "foul": {"rounds": 2}}},
    "ring7_foul_digits": {"topology": {"kind": "ring", "n_clients": 7}, "data": {"kind": "digits", "n_test": 40},
                          "model": {"kind": "l2u", "l2u": {"hidden": 8}}, "train": {"lr": 0.1},
                          "unlearn": {"method": "foul", "clients": [3], "mode": "keep_relay", "foul": {"rounds": 2}}},
    "torus9_not_digits": {"topology": {"kind": "torus", "n_clients": 9}, "data": {"kind": "digits", "n_test": 40},
                          "model": {"kind": "l2u", "l2u": {"hidden": 8}}, "train": {"lr": 0.1},
                          "unlearn": {"method": "not", "clients": [2], "not": {"rounds": 2}}},
    "torus9_salun": {"topology": {"kind": "torus", "n_clients": 9},
                     "unlearn": {"method": "salun", "clients": [4], "samples": {"7": [0, 2]}, "salun": {"rounds": 2}}},
    "ring6_poisoned_client_finetune": {"topology": {"kind": "ring", "n_clients": 6},
                                       "data": {"poison": {"kind": "feature", "clients": [2], "fraction": 0.5}},
                                       "unlearn": {"method": "finetune", "clients": [2], "finetune": {"rounds": 2}}},
    "star5_random_label": {"topology": {"kind": "star", "n_clients": 5},
                           "unlearn": {"method": "random_label", "clients": [1], "random_label": {"rounds": 2}}},
    # samples of one node only: the holders placement, where most ranks host no holder and still
    # take part in every look of the stopping rule and the guard
    "ring6_sfron_holders": {"topology": {"kind": "ring", "n_clients": 6},
                            "unlearn": {"method": "sfron", "samples": {"2": [0, 1, 3]},
                                        "sfron": {"steps": 20, "check_every": 5}}},
    "ring7_sfron_every_node": {"topology": {"kind": "ring", "n_clients": 7},
                               "unlearn": {"method": "sfron", "clients": [3],
                                           "sfron": {"steps": 3, "forget_every": 1, "placement": "every_node"}}},
    # CLIP cases train 3 rounds: bit-identity does not need more, and each round is costly
    "star6_ease_clip": {"topology": {"kind": "star", "n_clients": 6}, "run": {"rounds": 3},
                        "data": {"kind": "captions_synth", "n_samples_per_client": 6, "n_test": 10, "partition": "by_class"},
                        "model": {"kind": "clip"}, "train": {"batch_size": 4, "lr": 0.1},
                        "unlearn": {"method": "ease", "clients": [2],
                                    "ease": {"rounds": 2, "rank": 2, "excision": "entangled"}}},
    "ring5_ease_clip_one_branch": {"topology": {"kind": "ring", "n_clients": 5}, "run": {"rounds": 3},
                                   "data": {"kind": "captions_synth", "n_samples_per_client": 6, "n_test": 10},
                                   "model": {"kind": "clip"}, "train": {"batch_size": 4, "lr": 0.1},
                                   "unlearn": {"method": "ease", "clients": [1], "samples": {"3": [0, 2]},
                                               "ease": {"rounds": 2, "rank": 2,
                                                        "displacement": "image"}}},
}
CASES = {
    "ring7": {"topology": {"kind": "ring", "n_clients": 7}},
    "torus9": {"topology": {"kind": "torus", "n_clients": 9}},
    "star5": {"topology": {"kind": "star", "n_clients": 5}},
    "erdos_renyi10_dropout": {"topology": {"kind": "erdos_renyi", "n_clients": 10, "erdos_renyi": {"p": 0.4}, "dropout": 0.3}},
    "small_world8_tracking_f64": {"topology": {"kind": "small_world", "n_clients": 8},
                                  "train": {"algorithm": "gradient_tracking", "local_steps": 1, "dtype": "float64"}},
    "complete6_uniform": {"topology": {"kind": "complete", "n_clients": 6, "mixing": "uniform_neighbors"}},
    "torus9_sparse_ledger_eval3": {"topology": {"kind": "torus", "n_clients": 9, "dropout": 0.2},
                                   "run": {"eval_every": 3, "rounds": 7, "vmap_width": 3}, "ledger": {"kind": "sparse", "keep": 3}},
    "star7_sparse_ledger_eval0": {"topology": {"kind": "star", "n_clients": 7}, "run": {"eval_every": 0},
                                  "ledger": {"kind": "sparse", "keep": 2}},
    "ring8_ledger_off": {"topology": {"kind": "ring", "n_clients": 8}, "ledger": {"kind": "off"}},
    "ring7_nesterov_cosine": {"topology": {"kind": "ring", "n_clients": 7},
                              "train": {"momentum": 0.9, "nesterov": True, "schedule": "cosine", "warmup_rounds": 2}},
    "torus9_choco_qsgd": {"topology": {"kind": "torus", "n_clients": 9},
                          "train": {"algorithm": "choco", "choco": {"compression": "qsgd", "quantization_levels": 8}}},
    "erdos_renyi9_push_sum_dropout": {"topology": {"kind": "erdos_renyi", "n_clients": 9, "erdos_renyi": {"p": 0.6}, "dropout": 0.2},
                                      "train": {"algorithm": "push_sum", "same_init": False}},
    "star5_adamw_step": {"topology": {"kind": "star", "n_clients": 5},
                         "train": {"optimizer": "adamw", "lr": 0.01, "schedule": "step", "step_every": 2}},
    "file_barbell6": {"topology": {"kind": "file", "n_clients": 6,
                                   "path": str(Path(__file__).resolve().parents[2] / "topologies" / "barbell6.edgelist")}},
    "random_regular8_cnn": {"topology": {"kind": "random_regular", "n_clients": 8}, "data": {"gaussian_logistic": {"n_features": 16}},
                            "model": {"kind": "cnn", "cnn": {"hidden": 6}}},
    # running statistics: per client, mixed on the graph / FedAvg-averaged at the hub, checkpointed
    "ring6_cnn_batchnorm": {"topology": {"kind": "ring", "n_clients": 6}, "data": {"gaussian_logistic": {"n_features": 16}},
                            "model": {"kind": "cnn", "cnn": {"hidden": 6, "norm": "batch"}}},
    "star5_cnn_batchnorm": {"topology": {"kind": "star", "n_clients": 5}, "data": {"gaussian_logistic": {"n_features": 16}},
                            "model": {"kind": "cnn", "cnn": {"hidden": 6, "norm": "batch"}}},
}


def _cfg(case: str, transport: str) -> config.Config:
    data = {k: dict(v) for k, v in BASE.items()}
    for section, values in (CASES | UNLEARN_CASES)[case].items():
        data.setdefault(section, {}).update(values)
    data["run"]["transport"] = transport
    return config.from_dict(data)


def _shared(tmp_path: Path) -> Path:
    return Path(COMM.bcast(str(tmp_path), root=0))


def _differences(a_dir: Path, b_dir: Path) -> list[str]:
    a, b = history.read_h5(a_dir / "history.h5"), history.read_h5(b_dir / "history.h5")
    diffs = [f"datasets differ: {sorted(set(a.arrays) ^ set(b.arrays))}"] if set(a.arrays) != set(b.arrays) else []
    diffs += [key for key in a.arrays if key in b.arrays
              and not np.array_equal(a.arrays[key], b.arrays[key], equal_nan=a.arrays[key].dtype.kind == "f")]
    if b.attrs["world_size"] != COMM.Get_size():
        diffs.append(f"world_size {b.attrs['world_size']}")
    cert_a, cert_b = a.group_attrs.get("unlearn", {}), b.group_attrs.get("unlearn", {})
    timing = {"seconds", "flops"}  # wall time differs; FLOPs include each rank's vmap padding
    diffs += [f"unlearn.{k}" for k in cert_a if k not in timing
              and not np.array_equal(cert_a[k], cert_b.get(k), equal_nan=isinstance(cert_a[k], float))]
    return diffs


def _reference(cfg_local: config.Config, out: Path) -> Path:
    """The in-process run of ``cfg_local``: computed here, or, when ``P2PFORGET_MPI_REFERENCES``
    names a folder, taken from there if an earlier session (another rank count) computed the same
    config, and left there for the next."""
    store = os.environ.get("P2PFORGET_MPI_REFERENCES")
    if not store:
        experiment.run(cfg_local, out=out / "local", progress=False)
        return out / "local"
    text = config.dumps(cfg_local)
    home = Path(store) / hashlib.sha256(text.encode()).hexdigest()[:20]
    if not (home / "history.h5").is_file():
        scratch = Path(tempfile.mkdtemp(dir=store))
        experiment.run(cfg_local, out=scratch / "run", progress=False)
        try:
            os.rename(scratch / "run", home)  # atomic: a reader sees a whole run or none
        except OSError:  # another session stored the same run first
            shutil.rmtree(scratch / "run")
        shutil.rmtree(scratch, ignore_errors=True)
    return home


def _assert_same_run_at_root(cfg_local: config.Config, out: Path) -> None:
    """Rank 0 runs in-process (or takes the stored reference) and compares; every rank learns the
    verdict (no rank is left waiting)."""
    diffs = None
    if COMM.Get_rank() == 0:
        diffs = _differences(_reference(cfg_local, out), out / "mpi")
    diffs = COMM.bcast(diffs, root=0)
    assert diffs == [], f"not bit-identical at {COMM.Get_size()} ranks: {diffs}"


@pytest.mark.parametrize("case", list(CASES))
def test_mpi_run_is_bit_identical_to_in_process(case, tmp_path):
    out = _shared(tmp_path)
    experiment.run(_cfg(case, "mpi"), out=out / "mpi", progress=False)
    _assert_same_run_at_root(_cfg(case, "local"), out)


@pytest.mark.parametrize("case", list(UNLEARN_CASES))
def test_mpi_unlearning_is_bit_identical_to_in_process(case, tmp_path):
    out = _shared(tmp_path)
    experiment.run(_cfg(case, "mpi"), out=out / "mpi", progress=False)
    _assert_same_run_at_root(_cfg(case, "local"), out)


@pytest.mark.parametrize("case", ["erdos_renyi10_dropout", "star5_adamw_step", "ring6_cnn_batchnorm"])
def test_resume_under_mpi_matches_uninterrupted_in_process_run(case, tmp_path):
    out = _shared(tmp_path)
    cfg = _cfg(case, "mpi")

    class Stop(Exception):
        pass

    def stop(engine):
        if engine.round == 3:
            raise Stop

    with pytest.raises(Stop):
        experiment.run(cfg, out=out / "mpi", progress=False, callback=stop)
    COMM.Barrier()
    experiment.run(cfg, out=out / "mpi", resume=True, progress=False)
    _assert_same_run_at_root(_cfg(case, "local"), out)


def test_halo_delivers_exactly_the_neighbour_rows():
    import torch

    n = 11
    t = MPITransport(n_clients=n)
    neighbours = {i: sorted({(i - 1) % n, (i + 1) % n, (i + 4) % n, (i - 4) % n}) for i in range(n)}
    halo = t.neighbourhood(neighbours)
    halo_ids = halo.ids
    lo, hi = t.block
    rows = torch.arange(lo, hi, dtype=torch.float64)[:, None] * torch.ones(1, 3, dtype=torch.float64)
    got = halo.exchange(rows)
    assert got[:, 0].tolist() == [float(j) for j in halo_ids]
    wanted = {j for i in range(lo, hi) for j in neighbours[i]} - set(range(lo, hi))
    assert sorted(halo_ids) == sorted(wanted)
    full = t.gather(rows)
    order = COMM.bcast(full[:, 0].tolist() if t.is_root else None, root=0)
    assert order == [float(i) for i in range(n)]


def test_more_ranks_than_clients_is_a_clear_error():
    with pytest.raises(ValueError, match="ranks but only 2 clients"):
        block(2, 3, 0)
    if COMM.Get_size() > 2:
        with pytest.raises(ValueError, match=f"{COMM.Get_size()} ranks but only 2 clients"):
            MPITransport(n_clients=2)


def test_compare_grid_csv_is_the_same_under_mpi(tmp_path):
    from p2pforget import compare

    out = _shared(tmp_path)
    base = {"run": {"seed": 0, "rounds": 4, "eval_every": 2}, "topology": {"n_clients": 6},
            "data": {"n_samples_per_client": 10, "n_test": 20, "gaussian_logistic": {"n_features": 4}}, "model": {"kind": "logistic"},
            "train": {"dtype": "float64", "weight_decay": 0.05}, "unlearn": {"clients": [1], "finetune": {"rounds": 2}}}
    spec = compare.Grid(topologies=("ring", "star"), methods=("retrain", "finetune"), seeds=(0,))
    compare.grid(config.from_dict(base | {"run": base["run"] | {"transport": "mpi"}}), spec, out=out / "mpi")
    same = None
    if COMM.Get_rank() == 0:
        compare.grid(config.from_dict(base | {"run": base["run"] | {"transport": "local"}}), spec, out=out / "local")
        same = (out / "mpi" / "compare.csv").read_bytes() == (out / "local" / "compare.csv").read_bytes()
    assert COMM.bcast(same, root=0), f"compare.csv differs at {COMM.Get_size()} ranks"


def test_each_rank_builds_only_its_own_clients_samples(monkeypatch):
    from p2pforget import Engine, data
    from p2pforget.data import synthetic

    taken = []
    original = synthetic.GaussianPool.take

    def counting(self, idx):
        taken.append(len(idx))
        return original(self, idx)

    monkeypatch.setattr(synthetic.GaussianPool, "take", counting)
    cfg = config.from_dict(BASE | {"topology": {"kind": "ring", "n_clients": 7}, "run": BASE["run"] | {"transport": "mpi"}})
    engine = Engine(config=cfg)
    d, lo, hi = engine.data, engine.lo, engine.hi
    assert sum(taken) == int(d.counts[lo:hi].sum() + d.holdout_counts[lo:hi].sum())  # its own samples, nobody else's
    assert (d.first, d.x.shape[0], d.x_holdout.shape[0]) == (lo, hi - lo, hi - lo) and d.y.shape[0] == 7
    whole = data.build(cfg.data, n_clients=7, seed=cfg.run.seed)
    assert np.array_equal(d.x, whole.x[lo:hi]) and np.array_equal(d.x_holdout, whole.x_holdout[lo:hi])

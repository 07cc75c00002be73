"""Bad input through the real command line: every case exits with status 2, prints exactly one
error line that names the problem, and no traceback.

Each case is ``(argv, expected words)``; ``argv`` may use ``{cfg}`` (a valid small config),
``{run}`` (a fresh copy of a finished run), ``{tmp}`` (the test's folder) and the files that
:func:`files` writes there.
"""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from p2pforget import config, experiment
from p2pforget.__main__ import main

BASE = {"run": {"rounds": 2, "seed": 3}, "topology": {"n_clients": 5},
        "data": {"n_samples_per_client": 8, "n_test": 10, "gaussian_logistic": {"n_features": 3}}, "model": {"kind": "logistic"}}


def _write_config(path, data=None):
    path.write_text(config.dumps(config.from_dict(data or BASE)))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    experiment.run(config.from_dict(BASE), out=d / "run", progress=False)
    return d / "run"


def files(tmp):
    """Graph, mixing, config and damaged run files for the cases."""
    (tmp / "bad.graphml").write_text("<graphml><graph><node id='0'/><edge source='0'")
    (tmp / "mixed.edgelist").write_text("0 1\n1 a\na 3\n3 4\n")
    (tmp / "loop.edgelist").write_text("0 1\n1 2\n2 3\n3 4\n4 0\n2 2\n")
    (tmp / "four.edgelist").write_text("0 1\n1 2\n2 3\n")
    (tmp / "split.edgelist").write_text("0 1\n1 2\n3 4\n")
    (tmp / "same.edgelist").write_text("0 1\n1 1.0\n")
    (tmp / "ring5.edgelist").write_text("0 1\n1 2\n2 3\n3 4\n4 0\n")
    ring = np.eye(5) / 3 + (np.roll(np.eye(5), 1, axis=1) + np.roll(np.eye(5), -1, axis=1)) / 3
    for name, W in {"nan": np.where(np.eye(5) == 1, np.nan, ring), "inf": np.where(np.eye(5) == 1, np.inf, ring),
                    "rows": ring * 1.1, "neg": ring + np.diag([-0.5] * 5) + 0.1 * np.eye(5)[[1, 0, 2, 3, 4]],
                    "small": np.full((3, 3), 1 / 3), "offedge": np.full((5, 5), 0.2)}.items():
        np.savetxt(tmp / f"{name}.txt", W)
    (tmp / "garbage.txt").write_text("0.5 0.5 x\n")
    (tmp / "notoml.toml").write_text("[run\nrounds = 2\n")
    (tmp / "section.toml").write_text("[trian]\nlr = 0.1\n")
    (tmp / "afile").write_text("not a directory\n")
    for name in ("empty", "truncated", "garbage", "nockpt", "noconfig", "extlink", "extstore", "gt"):
        (tmp / name).mkdir()
    (tmp / "empty" / "history.h5").write_bytes(b"")
    (tmp / "garbage" / "history.h5").write_bytes(b"this is not hdf5 at all" * 40)
    _write_config(tmp / "gt.toml", BASE | {"train": {"algorithm": "gradient_tracking", "local_steps": 2}})


def _without_config(f):
    """A run file without its config, checksummed anew (written so by another tool, not damaged)."""
    from p2pforget import history

    f.attrs.__delitem__("config_toml")
    f.attrs[history.CHECKSUM] = history.attrs_checksum(dict(f.attrs))


def _damage(finished, tmp):
    """Damaged copies of a finished run's history.h5."""
    src = finished / "history.h5"
    data = src.read_bytes()
    (tmp / "truncated" / "history.h5").write_bytes(data[: len(data) // 3])
    for name, edit in {"nockpt": lambda f: f.__delitem__("checkpoint"),
                       "noconfig": _without_config,
                       "extlink": lambda f: f.__setitem__("params/other", h5py.ExternalLink(str(src), "/params/init")),
                       "extstore": lambda f: f.create_dataset("params/leak", shape=(4,), dtype="u1",
                                                              external=[(str(tmp / "afile"), 0, 4)])}.items():
        shutil.copy(src, tmp / name / "history.h5")
        with h5py.File(tmp / name / "history.h5", "a") as f:
            edit(f)


S = "--set"
RUN = ["run", "{cfg}", "--out", "{tmp}/o"]
DAMAGED = {"empty": "is empty", "truncated": "not a readable HDF5", "garbage": "not a readable HDF5",
           "nockpt": "has no checkpoint", "noconfig": "no 'config_toml' attribute",
           "extlink": "links to data outside", "extstore": "stores its data in another file"}

CASES = [
    # config keys and values
    (RUN + [S, "topology.kindd=ring"], "unknown key topology.kindd; valid keys in [topology]: kind, n_clients"),
    (RUN + [S, "trian.lr=1"], "unknown section [trian]"),
    (RUN + [S, "train.lr=fast"], "train.lr must be of type float"),
    (RUN + [S, "train.lr=-1"], "train.lr = -1.0 is out of range"),
    (RUN + [S, "topology.kind=hexagon"], "topology.kind = 'hexagon' is not valid; choose one of: ring"),
    (RUN + [S, "topology.n_clients=1"], "topology.n_clients = 1 is out of range"),
    (RUN + [S, "run.rounds=-3"], "run.rounds = -3 is out of range"),
    (RUN + [S, "data.kind=mnistt"], "data.kind = 'mnistt' is not valid"),
    (RUN + [S, "model.kind=transformer"], "model.kind = 'transformer' is not valid"),
    (RUN + [S, "train.dtype=float16"], "train.dtype = 'float16' is not valid"),
    (RUN + [S, "unlearn.method=magic"], "unlearn.method = 'magic' is not valid"),
    (RUN + [S, "topology.kind"], "must look like section.key=value"),
    (RUN + [S, "rounds=5"], "must look like section.key=value"),
    (RUN + [S, "unlearn.epsilon=0.5"], "has moved to the method's own table: use unlearn.certified.epsilon"),
    (RUN + [S, "unlearn.certified.epsilonn=0.5"], "unknown key unlearn.certified.epsilonn"),
    (RUN + [S, "unlearn.clients=[9]"], "client 9 does not exist; client ids are 0..4"),
    (RUN + [S, "unlearn.clients=[-1]"], "unlearn.clients must be a list of non-negative integers"),
    (RUN + [S, "unlearn.samples={{1=[999]}}"], "sample indices of client 1 must lie in 0..7"),
    (RUN + [S, "unlearn.clients=[1]", S, "unlearn.certified.delta=1"], "unlearn.certified.delta = 1 must lie in (0, 1/n)"),
    (RUN + [S, "unlearn.clients=[1]", S, "unlearn.certified.delta=0.5"], "must lie in (0, 1/n) with n = 40"),
    (RUN + [S, "unlearn.mode=vanish"], "unlearn.mode = 'vanish' is not valid"),
    (RUN + [S, "topology.kind=torus", S, "topology.n_clients=8"], "torus needs n_clients = r*c with r, c >= 3"),
    (RUN + [S, "topology.kind=erdos_renyi", S, "topology.erdos_renyi.p=0.01", S, "topology.n_clients=30"], "the graph is disconnected"),
    (RUN + [S, "topology.kind=random_regular", S, "topology.random_regular.degree=3"], "random_regular needs degree < n_clients"),
    (RUN + [S, "topology.kind=small_world", S, "topology.small_world.k=6"], "small_world needs 2 <= k < n_clients"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/nope.edgelist'"], "does not exist; set topology.path"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/bad.graphml'"], "bad.graphml cannot be read"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/mixed.edgelist'"], "mixes numeric and text node ids"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/loop.edgelist'"], "has a self-loop on node"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/four.edgelist'"], "has 4 nodes but topology.n_clients = 5"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/split.edgelist'"], "the graph is disconnected"),
    (RUN + [S, "topology.kind=file", S, "topology.path='{tmp}/same.edgelist'"], "names the same node number twice"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/nan.txt'"], "non-finite entry W[0,0] = nan"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/inf.txt'"], "non-finite entry W[0,0] = inf"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/rows.txt'"], "is not doubly stochastic"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/neg.txt'"], "has a negative entry"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/small.txt'"], "mixing matrix is 3x3 but the graph has 5"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/offedge.txt'"], "is not an edge of the graph"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/garbage.txt'"], "cannot be read as a matrix"),
    (RUN + [S, "topology.mixing=file", S, "topology.mixing_path='{tmp}/nope.txt'"], "mixing file"),
    (RUN + [S, "train.algorithm=star"], "needs a hub: use topology.kind"),
    (["run", "{tmp}/gt.toml", "--out", "{tmp}/o"], "set train.local_steps = 1"),
    (RUN + [S, "run.plugins=['no_such_module_xyz']"], "cannot import 'no_such_module_xyz'"),
    (RUN + [S, "run.plugins=['missing_plugin.py']"], "file 'missing_plugin.py' does not exist"),
    (RUN + [S, "data.kind=image_folder"], "needs data.path"),
    (RUN + [S, "data.kind=image_folder", S, "data.path='{tmp}/no_images'"], "is not a directory"),
    (RUN + [S, "train.lr=1e6", S, "model.kind=mlp", S, "run.rounds=30"], "training diverged by round"),
    (["run", "{tmp}/missing.toml"], "config file"),
    (["run", "{tmp}/notoml.toml"], "not valid TOML"),
    (["run", "{tmp}/section.toml"], "unknown section [trian]"),
    # command-line arguments
    (["run", "{cfg}", "--out", "{tmp}/afile"], "is a file, not a run directory"),
    (["run", "{cfg}", "--resume", "{run}", "--out", "{tmp}/elsewhere"], "drop --out"),
    (["run", "{cfg}", "--resume", "{run}", "--overwrite"], "give one of them"),
    (["run", "{cfg}", "--resume", "{tmp}/empty_dir"], "no run file"),
    (["run", "{cfg}", "--resume", "{run}", S, "train.lr=0.5"], "the config differs from the stored run in train.lr"),
    (["run", "{cfg}", "--resume", "{run}", S, "run.rounds=1"], "raise run.rounds to train more"),
    (["run", "{cfg}", "--out", "{run}"], "already holds a run"),
    (["run"], "the following arguments are required: config"),
    (["fly"], "invalid choice: 'fly'"),
    (["topologies", "show", "ring", "--n", "1"], "needs at least 2 clients"),
    (["topologies", "show", "ring", "--n", "-1"], "needs at least 2 clients"),
    (["topologies", "show", "erdos_renyi", "--p", "2"], "edge probability p in (0, 1]"),
    (["topologies", "show"], "needs a kind"),
    (["topologies", "show", "file", "--n", "5", "--path", "{tmp}/nope.edgelist"], "does not exist"),
    (["forget", "{run}"], "nothing to forget"),
    (["forget", "{run}", "--clients", "99"], "client 99 does not exist"),
    (["forget", "{run}", "--samples", "1:x"], "must look like CLIENT:I,J,K"),
    (["forget", "{run}", "--samples", "1:0", "2"], "must look like CLIENT:I,J,K"),
    (["forget", "{run}", "--clients", "1", S, "train.lr=0.5"], "only [unlearn] keys"),
    (["forget", "{run}", "--clients", "1", S, "unlearn.method=nope"], "unlearn.method = 'nope' is not valid"),
    (["forget", "{tmp}/empty_dir", "--clients", "1"], "no run file"),
    (["report", "{tmp}/empty_dir"], "no run file"),
    (["compare", "{cfg}", "--topologies", "ring,hexagon", "--out", "{tmp}/cmp"], "topology.kind = 'hexagon' is not valid"),
    (["compare", "{cfg}", "--topologies", "ring,torus", "--out", "{tmp}/cmp"], "torus needs n_clients"),
] + [(["run", "{cfg}", "--resume", f"{{tmp}}/{name}"], msg) for name, msg in DAMAGED.items()] \
  + [(["forget", f"{{tmp}}/{name}", "--clients", "1"], msg) for name, msg in DAMAGED.items()] \
  + [(["report", f"{{tmp}}/{name}"], msg) for name, msg in DAMAGED.items() if name not in ("nockpt", "noconfig")]


def _contents(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


def _fill(argv, **paths):
    return [a.format(**paths) for a in argv]


def test_there_are_enough_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_clear_line(argv, expected, tmp_path, finished_run, capsys):
    files(tmp_path)
    _damage(finished_run, tmp_path)
    (tmp_path / "empty_dir").mkdir()
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = _write_config(tmp_path / "exp.toml")
    before = _contents(run)
    try:
        code = main(_fill(argv, cfg=cfg, run=run, tmp=tmp_path))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    # a refused command changes nothing in an existing run
    assert _contents(run) == before
    assert not (tmp_path / "o" / "history.h5").exists() or "diverged" in expected


def test_validation_happens_before_any_work(tmp_path, capsys):
    """A bad forget request or topology list is refused before training, not after it."""
    cfg = _write_config(tmp_path / "exp.toml")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), S, "unlearn.clients=[9]"]) == 2
    assert not (tmp_path / "o").exists()
    assert main(["compare", str(cfg), "--topologies", "ring,complete,hexagon", "--out", str(tmp_path / "cmp")]) == 2
    assert not (tmp_path / "cmp").exists()
    assert "hexagon" in capsys.readouterr().err


def test_cli_process_exit_status_and_single_line(tmp_path, finished_run):
    """The same contract for a real process (the exit status the shell sees)."""
    files(tmp_path)
    _damage(finished_run, tmp_path)
    cfg = _write_config(tmp_path / "exp.toml")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    # one config error and one file error (every message is checked in-process above)
    for argv, expected in [(["run", str(cfg), "--set", "train.lr=fast"], "train.lr must be of type float"),
                           (["run", str(cfg), "--out", str(tmp_path / "afile")], "is a file")]:
        res = subprocess.run([sys.executable, "-m", "p2pforget"] + argv, env=env, capture_output=True, text=True)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], res.stderr

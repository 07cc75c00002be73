"""Hostile inputs and untrusted run directories through the real command line: every case exits
with status 2 and one error line naming the key or file and a fix (no traceback), or gives the
correct result. A run directory is data: nothing in it is imported or unpickled as code."""
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from p2pforget import config, experiment, history
from p2pforget.__main__ import main
from p2pforget.data.files import write_idx

BASE = {"run": {"rounds": 3, "seed": 4}, "topology": {"n_clients": 5},
        "data": {"n_samples_per_client": 8, "n_test": 10, "gaussian_logistic": {"n_features": 3}}, "model": {"kind": "logistic"},
        "audit": {"after_forget": False}}
RING5 = "0 1\n1 2\n2 3\n3 4\n4 0\n"
OTHER_RING5 = "0 2\n2 1\n1 3\n3 4\n4 0\n"
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _cfg(**sections):
    data = json.loads(json.dumps(BASE))
    for name, values in sections.items():
        data[name] = data.get(name, {}) | values
    return config.from_dict(data)


def _ring_matrix(lazy=0.0):
    W = np.eye(5) / 3 + (np.roll(np.eye(5), 1, axis=1) + np.roll(np.eye(5), -1, axis=1)) / 3
    return (1 - lazy) * W + lazy * np.eye(5)


def _idx_set(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    for stem, n in (("train", 80), ("t10k", 20)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", r.integers(0, 256, (n, 4, 4), dtype=np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte", r.integers(0, 3, n).astype(np.uint8))
    return folder


def _rewrite(path: Path, edit) -> None:
    """Rewrite a run file through the library (valid checksums) after ``edit(arrays, attrs)``."""
    rf = history.read_h5(path)
    arrays, attrs = dict(rf.arrays), dict(rf.attrs)
    edit(arrays, attrs)
    history.write_h5(path, attrs=attrs, arrays=arrays, group_attrs=rf.group_attrs)


def _flip_bit(path: Path, dataset: str) -> None:
    """Flip one bit inside ``dataset``'s stored bytes, in place."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))


FLIPPED = ["params/init", "params/trained", "checkpoint/params", "checkpoint/round", "ledger/influence",
           "topology/edges", "topology/mixing/weight", "metrics/loss_mean", "metrics/per_node/test_acc"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished, unfinished, plug-in, file-graph, file-mixing and MNIST runs, built once."""
    top = tmp_path_factory.mktemp("hostile")
    (top / "ring5.edgelist").write_text(RING5)
    np.savetxt(top / "ring5.txt", _ring_matrix())
    out = {"top": top}
    experiment.run(_cfg(), out=top / "finished", progress=False)
    out["finished"] = top / "finished"

    class Stop(Exception):
        pass

    def stop(e):
        if e.round == 2:
            raise Stop
    with pytest.raises(Stop):
        experiment.run(_cfg(run={"rounds": 6, "checkpoint_every": 1}), out=top / "unfinished", progress=False,
                       callback=stop)
    out["unfinished"] = top / "unfinished"
    (top / "marker_plugin.py").write_text("import os\nfrom pathlib import Path\n"
                                          "Path(os.environ.get('P2PF_MARKER', os.devnull)).write_text('imported')\n")
    experiment.run(_cfg(run={"plugins": [str(top / "marker_plugin.py")]}, unlearn={"clients": [1]}), out=top / "plugin",
                   progress=False)
    out["plugin"] = top / "plugin"
    experiment.run(_cfg(topology={"kind": "file", "path": str(top / "ring5.edgelist")}), out=top / "filegraph",
                   progress=False)
    out["filegraph"] = top / "filegraph"
    experiment.run(_cfg(topology={"mixing": "file", "mixing_path": str(top / "ring5.txt")}), out=top / "filemix",
                   progress=False)
    out["filemix"] = top / "filemix"
    mnist = _idx_set(top / "mnist_a", 0)
    experiment.run(_cfg(data={"kind": "mnist", "path": str(mnist)}), out=top / "mnist", progress=False)
    out["mnist"] = top / "mnist"
    experiment.run(_cfg(unlearn={"clients": [1]}), out=top / "forgotten", progress=False)
    out["forgotten"] = top / "forgotten"
    return out


def files(tmp: Path, runs: dict) -> None:
    """Everything the cases name under ``{tmp}``."""
    (tmp / "other_ring5.edgelist").write_text(OTHER_RING5)
    np.savetxt(tmp / "lazy_ring5.txt", _ring_matrix(lazy=0.5))
    _idx_set(tmp / "mnist_b", 1)
    (tmp / "raises.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp / "syntax.py").write_text("def broken(:\n    pass\n")
    for name in ("evil_cifar", "list_cifar", "cut_cifar"):
        (tmp / name).mkdir()
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    for folder, payload in (("evil_cifar", pickle.dumps({b"data": Evil(), b"labels": [0]})),
                            ("list_cifar", pickle.dumps([1, 2, 3])),
                            ("cut_cifar", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:40])):
        for batch in ("data_batch_1", "test_batch"):
            (tmp / folder / batch).write_bytes(payload)
    for name, source in (("shape", "finished"), ("nan", "finished"), ("negative", "finished"), ("fraction", "finished"),
                         ("huge", "finished"), ("badtoml", "finished"), ("badkey", "finished"), ("attrs", "finished"),
                         ("cutreport", "finished"), ("cutreport_forgotten", "forgotten"), ("releaseonly", "forgotten")):
        shutil.copytree(runs[source], tmp / name)
    h5 = {name: tmp / name / "history.h5" for name in ("shape", "nan", "negative", "fraction", "huge", "badtoml", "badkey",
                                                       "attrs")}
    _rewrite(h5["shape"], lambda a, _: a.__setitem__("checkpoint/params", a["checkpoint/params"][:, :-1]))
    _rewrite(h5["nan"], lambda a, _: a.__setitem__("checkpoint/params", np.full_like(a["checkpoint/params"], np.nan)))
    _rewrite(h5["negative"], lambda a, _: a.__setitem__("checkpoint/round", np.array(-5)))
    _rewrite(h5["fraction"], lambda a, _: a.__setitem__("checkpoint/round", np.array(2.5)))
    _rewrite(h5["badtoml"], lambda _, at: at.__setitem__("config_toml", "[run\nrounds = 3\n"))
    _rewrite(h5["badkey"], lambda _, at: at.__setitem__("config_toml", "[train]\nlrr = 0.1\n"))
    with h5py.File(h5["huge"], "a") as f:
        f.create_dataset("params/huge", shape=(10**11,), dtype="f8")  # declared, never written: no storage
    with h5py.File(h5["attrs"], "a") as f:
        f.attrs["config_toml"] = f.attrs["config_toml"].replace("seed = 4", "seed = 5")
    for name in ("cutreport", "cutreport_forgotten"):
        text = (tmp / name / "report.json").read_text()
        (tmp / name / "report.json").write_text(text[: len(text) // 2])
    for name in ("history.h5", "report.json"):
        (tmp / "releaseonly" / name).unlink()
    for dataset in FLIPPED:
        folder = tmp / f"flip_{dataset.replace('/', '_')}"
        shutil.copytree(runs["finished"], folder)
        _flip_bit(folder / "history.h5", dataset)


S = "--set"
RUN = ["run", "{cfg}", "--out", "{tmp}/o"]
FORGET = ["forget", "{run}", "--clients", "1"]
NOT_FINITE = "is not a finite number"

CASES = [
    # numbers that are not numbers, and ends of ranges that do not work
    (RUN + [S, "train.lr=nan"], "train.lr = nan " + NOT_FINITE),
    (RUN + [S, "train.lr=inf"], "train.lr = inf " + NOT_FINITE),
    (RUN + [S, "train.lr=-inf"], "train.lr = -inf " + NOT_FINITE),
    (RUN + [S, "train.momentum=nan"], "train.momentum = nan " + NOT_FINITE),
    (RUN + [S, "train.momentum=1.0"], "train.momentum = 1.0 is out of range; allowed [0.0, 1.0)"),
    (RUN + [S, "data.gaussian_logistic.separation=nan"], "data.gaussian_logistic.separation = nan " + NOT_FINITE),
    (RUN + [S, "data.gaussian_logistic.separation=inf"], "data.gaussian_logistic.separation = inf " + NOT_FINITE),
    (RUN + [S, "train.weight_decay=nan"], "train.weight_decay = nan " + NOT_FINITE),
    (RUN + [S, "train.weight_decay=inf"], "train.weight_decay = inf " + NOT_FINITE),
    (RUN + [S, "train.beta1=1.0"], "train.beta1 = 1.0 is out of range; allowed [0.0, 1.0)"),
    (RUN + [S, "train.beta2=1.0"], "train.beta2 = 1.0 is out of range; allowed [0.0, 1.0)"),
    (RUN + [S, "train.eps=0"], "train.eps = 0.0 is out of range; allowed (0.0, inf)"),
    (RUN + [S, "train.eps=nan"], "train.eps = nan " + NOT_FINITE),
    (RUN + [S, "data.alpha=inf"], "data.alpha = inf " + NOT_FINITE),
    (RUN + [S, "data.alpha=nan"], "data.alpha = nan " + NOT_FINITE),
    (RUN + [S, "unlearn.certified.epsilon=nan"], "unlearn.certified.epsilon = nan " + NOT_FINITE),
    (RUN + [S, "unlearn.certified.epsilon=inf"], "unlearn.certified.epsilon = inf " + NOT_FINITE),
    (RUN + [S, "unlearn.certified.delta=nan"], "unlearn.certified.delta = nan " + NOT_FINITE),
    (RUN + [S, "unlearn.certified.budget=inf"], "unlearn.certified.budget = inf " + NOT_FINITE),
    (RUN + [S, "unlearn.certified.damping=nan"], "unlearn.certified.damping = nan " + NOT_FINITE),
    (RUN + [S, "train.choco.compression_ratio=0"], "train.choco.compression_ratio = 0.0 is out of range; allowed (0.0, 1.0]"),
    (RUN + [S, "train.choco.consensus_step=0"], "train.choco.consensus_step = 0.0 is out of range"),
    (RUN + [S, "topology.erdos_renyi.p=nan"], "topology.erdos_renyi.p = nan " + NOT_FINITE),
    (RUN + [S, "topology.dropout=inf"], "topology.dropout = inf " + NOT_FINITE),
    (RUN + [S, "data.holdout_fraction=nan"], "data.holdout_fraction = nan " + NOT_FINITE),
    (RUN + [S, "train.step_gamma=inf"], "train.step_gamma = inf " + NOT_FINITE),
    (RUN + [S, "data.quantity_skew=nan"], "data.quantity_skew = nan " + NOT_FINITE),
    (RUN + [S, "model.clip.lora_alpha=inf"], "model.clip.lora_alpha = inf " + NOT_FINITE),
    (RUN + [S, "unlearn.foul.solver_lr=nan"], "unlearn.foul.solver_lr = nan " + NOT_FINITE),
    (FORGET + [S, "unlearn.certified.epsilon=nan"], "unlearn.certified.epsilon = nan " + NOT_FINITE),
    # values the data rule out
    (RUN + [S, "data.partition=shards", S, "data.shards_per_client=1000"], "data.shards_per_client = 1000 is more than"),
    (RUN + [S, "unlearn.samples={{\"\u00b2\"=[0]}}"], "unlearn.samples must map client ids to sample indices"),
    (RUN + [S, "unlearn.clients=[0,1,2,3,4]", S, "unlearn.mode=keep_relay"], "would forget every sample"),
    (["forget", "{run}", "--clients", "0", "1", "2", "3", "4", S, "unlearn.mode=keep_relay"], "would forget every sample"),
    (["forget", "{run}", "--samples", "\u00b2:0"], "must look like CLIENT:I,J,K"),
    (RUN + [S, "topology.n_clients=10000000000"], "needs about"),
    # plug-ins: their own errors are one line; a run directory's are never imported
    (RUN + [S, "run.plugins=['{tmp}/raises.py']"], "RuntimeError: boom at import; fix the module"),
    (RUN + [S, "run.plugins=['{tmp}/syntax.py']"], "SyntaxError at line 1"),
    (["forget", "{plugin}", "--clients", "2"], "names plug-in modules in run.plugins"),
    (["audit", "{plugin}"], "names plug-in modules in run.plugins"),
    (["run", "{cfg}", "--resume", "{plugin}"], "names plug-in modules in run.plugins"),
    # data files that are code
    (RUN + [S, "data.kind=cifar10", S, "data.path='{tmp}/evil_cifar'"], "names posix.system"),
    (RUN + [S, "data.kind=cifar10", S, "data.path='{tmp}/list_cifar'"], "no b'data' and b'labels' entries"),
    (RUN + [S, "data.kind=cifar10", S, "data.path='{tmp}/cut_cifar'"], "is not a CIFAR-10 python batch"),
    # damaged run files: refused, naming the array or file
    (["forget", "{tmp}/shape", "--clients", "1"], "checkpoint/params has shape"),
    (["forget", "{tmp}/nan", "--clients", "1"], "checkpoint/params holds NaN or inf"),
    (["forget", "{tmp}/negative", "--clients", "1"], "checkpoint/round must be one integer >= 0, got -5"),
    (["forget", "{tmp}/fraction", "--clients", "1"], "checkpoint/round must be one integer >= 0, got 2.5"),
    (["run", "{cfg}", "--resume", "{tmp}/shape"], "checkpoint/params has shape"),
    (["run", "{cfg}", "--resume", "{tmp}/negative"], "checkpoint/round must be one integer >= 0"),
    (["forget", "{tmp}/huge", "--clients", "1"], "dataset 'params/huge' declares (100000000000,)"),
    (["forget", "{tmp}/badtoml", "--clients", "1"], "the stored config is not valid TOML"),
    (["forget", "{tmp}/badkey", "--clients", "1"], "history.h5: unknown key train.lrr"),
    (["forget", "{tmp}/attrs", "--clients", "1"], "the root attributes fail their checksum"),
    (["report", "{tmp}/cutreport"], "report.json is not valid JSON"),
    (["audit", "{tmp}/cutreport_forgotten"], "report.json is not valid JSON"),
    (["forget", "{tmp}/releaseonly", "--clients", "2"], "holds only a run's published release/"),
    # a run that did not finish, and overrides that contradict the stored run
    (["forget", "{unfinished}", "--clients", "1"], "is not finished (it stopped at round 2)"),
    (["forget", "{filegraph}", "--clients", "1", S, "topology.path='{tmp}/other_ring5.edgelist'"],
     "the graph or mixing matrix built now differs from the run's"),
    (["forget", "{filemix}", "--clients", "1", S, "topology.mixing_path='{tmp}/lazy_ring5.txt'"],
     "the graph or mixing matrix built now differs from the run's"),
    (FORGET + [S, "topology.mixing_path='{tmp}/lazy_ring5.txt'"], "the run does not read topology.mixing_path"),
    (FORGET + [S, "topology.path='{tmp}/other_ring5.edgelist'"], "the run does not read topology.path"),
    (FORGET + [S, "data.path='{tmp}/mnist_b'"], "the run does not read data.path"),
    (["forget", "{mnist}", "--clients", "1", S, "data.path='{tmp}/mnist_b'"],
     "the data built now differ from the data the run was trained on"),
] + [(["forget", f"{{tmp}}/flip_{d.replace('/', '_')}", "--clients", "1"], f"dataset {d!r} fails its checksum")
     for d in FLIPPED]


def test_there_are_enough_cases():
    assert len(CASES) >= 60


def _contents(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_hostile_input_is_one_clear_line(argv, expected, tmp_path, runs, capsys, monkeypatch):
    files(tmp_path, runs)
    run = tmp_path / "run"
    shutil.copytree(runs["finished"], run)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(config.dumps(_cfg()))
    marker = tmp_path / "plugin_marker"
    monkeypatch.setenv("P2PF_MARKER", str(marker))
    named = {k: str(v) for k, v in runs.items() if k != "top"}
    touched = {k: _contents(Path(v)) for k, v in named.items()}
    code = main([a.format(cfg=cfg, run=run, tmp=tmp_path, **named) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    assert not (tmp_path / "pwned").exists() and not marker.exists()  # nothing from the data ran
    assert {k: _contents(Path(v)) for k, v in named.items()} == touched  # no run was changed


def test_a_stored_plugin_is_imported_only_when_the_user_names_it(runs, tmp_path):
    """In fresh processes (so nothing is imported already): forget, audit and resume on a run whose
    config names a plug-in do not import it; forget with --plugins does, and the request goes
    through."""
    run = tmp_path / "run"
    shutil.copytree(runs["plugin"], run)
    marker = tmp_path / "marker"
    env = ENV | {"P2PF_MARKER": str(marker)}
    cfg = tmp_path / "exp.toml"
    cfg.write_text(config.dumps(_cfg()))
    cli = [sys.executable, "-m", "p2pforget", "forget", str(run), "--clients", "2", "--no-retrain"]
    # the three refusals in one fresh process (each a CLI call; the marker says whether any imported it)
    calls = [["forget", str(run), "--clients", "2", "--no-retrain"], ["audit", str(run)], ["run", str(cfg), "--resume", str(run)]]
    script = ("import sys; from p2pforget.__main__ import main; "
              f"codes = [main(argv) for argv in {calls!r}]; print(codes)")
    refused = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert refused.stdout.strip() == "[2, 2, 2]", refused.stderr
    assert refused.stderr.count("names plug-in modules") == 3, refused.stderr
    assert not marker.exists()
    plugin = str(runs["top"] / "marker_plugin.py")
    done = subprocess.run(cli + ["--plugins", plugin], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "imported"


def test_the_current_directory_is_not_searched_for_plugins(tmp_path, monkeypatch):
    (tmp_path / "local_shadow_mod.py").write_text("raise SystemExit('imported from the current directory')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(config.ConfigError, match="cannot import 'local_shadow_mod'"):
        config.load_plugins(["local_shadow_mod"])


def _disk_full(monkeypatch, after: int):
    """Every write to a run file's temporary file fails with ENOSPC after ``after`` bytes."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(".tmp"):
            real(self, data[:after])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_disk_full_keeps_the_finished_run_and_leaves_no_temporary_file(runs, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["finished"], run)
    before = _contents(run)
    _disk_full(monkeypatch, after=100)
    assert main(["forget", str(run), "--clients", "1"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "is unchanged" in err and "Traceback" not in err
    monkeypatch.undo()
    assert _contents(run) == before
    assert not list(run.glob(".*.tmp")) and not list((run / "release").glob(".*.tmp") if (run / "release").exists() else [])
    assert history.read_run(run / "history.h5").attrs["complete"]  # still readable, still finished
    assert main(["forget", str(run), "--clients", "1"]) == 0  # and the request works once there is space


def test_disk_full_during_training_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "exp.toml"
    cfg.write_text(config.dumps(_cfg(run={"rounds": 6, "checkpoint_every": 2})))
    writes = {"n": 0}
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(".tmp") and self.name.startswith(".history.h5"):
            writes["n"] += 1
            if writes["n"] > 1:  # the first checkpoint lands, the second finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    assert int(history.read_run(out / "history.h5").attrs["rounds_done"]) == 2
    assert not list(out.glob(".*.tmp"))
    assert main(["run", str(cfg), "--resume", str(out)]) == 0


def test_checkpoints_come_at_least_every_thousand_rounds():
    assert experiment.checkpoint_interval(config.from_dict({"run": {"rounds": 10**15}})) == experiment.MAX_CHECKPOINT_GAP
    assert experiment.checkpoint_interval(config.from_dict({"run": {"rounds": 10**15, "checkpoint_every": 7}})) == 7
    assert experiment.CHECKPOINT_SECONDS <= 600


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def test_a_real_full_disk_keeps_the_finished_run(runs, tmp_path):
    """On a small tmpfs filled up after the run finished: `forget` (a fresh process, so a crash
    would show as a signal) exits 2 with one line, the run stays readable and unchanged, and no
    temporary file is left."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC tests cover the same path")
    try:
        run = disk / "run"
        shutil.copytree(runs["finished"], run)
        before = _contents(run)
        with open(disk / "filler", "wb", buffering=0) as f:  # take every byte that is left
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        done = subprocess.run([sys.executable, "-m", "p2pforget", "forget", str(run), "--clients", "1"], env=ENV,
                              capture_output=True, text=True)
        assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in done.stderr
        assert _contents(run) == before and not list(run.glob(".*.tmp"))
        assert history.read_run(run / "history.h5").attrs["complete"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)

"""Faults: a process killed mid-run (the one subprocess test), forget requests stopped part-way, two
writers on one run directory, forget-then-resume, divergence, disk errors. Nothing may be lost,
half-applied or re-learned."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pforget import config, experiment, history
from p2pforget.__main__ import main
from p2pforget.engine import Engine
from p2pforget.unlearn.retrain import retrain

ENV = os.environ | {"OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "p2pforget"]


def _small(rounds=150, **unlearn):
    return config.from_dict({
        "run": {"seed": 11, "rounds": rounds},
        "topology": {"kind": "erdos_renyi", "n_clients": 7, "erdos_renyi": {"p": 0.5}, "dropout": 0.3},
        "data": {"n_samples_per_client": 30, "n_test": 50, "gaussian_logistic": {"n_features": 4}},
        "model": {"kind": "mlp", "mlp": {"hidden": 8}},
        "train": {"batch_size": 8, "local_steps": 2},
        "unlearn": {"certified": {"noise": False}} | unlearn,
    })


def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _rounds_done(h5: Path) -> int:
    try:
        return int(history.read_h5(h5).attrs["rounds_done"])
    except ValueError:
        return 0


def _files(run_dir: Path) -> dict[str, bytes]:
    """The run's files, without the lock and without temporaries a killed writer left."""
    return {p.name: p.read_bytes() for p in run_dir.iterdir()
            if p.is_file() and p.name != ".lock" and not p.name.endswith(".tmp")}


@pytest.mark.slow
def test_kill_at_a_random_round_then_resume_is_bit_identical(tmp_path):
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config.dumps(_small()))
    subprocess.run(CLI + ["run", str(cfg_path), "--out", str(tmp_path / "full")], check=True, env=ENV, capture_output=True)
    kill_at = random.randint(5, 120)
    # a requeued batch job: the same command each time, starting or resuming by itself
    requeue = CLI + ["run", str(cfg_path), "--out", str(tmp_path / "cut"), "--resume-or-start"]
    proc = subprocess.Popen(requeue, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    h5 = tmp_path / "cut" / "history.h5"
    assert _wait_for(lambda: h5.exists() and _rounds_done(h5) >= kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _rounds_done(h5)
    assert kill_at <= done < 150, f"killed at round {done}"
    res = subprocess.run(requeue, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = (history.read_h5(tmp_path / d / "history.h5").arrays for d in ("full", "cut"))
    assert np.array_equal(a["params/trained"], b["params/trained"])
    assert np.array_equal(a["metrics/consensus_distance"], b["metrics/consensus_distance"])
    assert not list((tmp_path / "cut").glob("*.tmp")) and not list((tmp_path / "cut").glob(".*.tmp"))


def test_a_batch_systems_signal_checkpoints_then_the_same_command_finishes_bit_identical(tmp_path, monkeypatch, capsys):
    """SIGTERM (or SIGUSR1) during a --resume-or-start run: a checkpoint after the current round,
    exit status 75; the same command again finishes with the uninterrupted run's numbers, and once
    more finds it complete."""
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config.dumps(_small(rounds=30)))
    experiment.run(_small(rounds=30), out=tmp_path / "full", progress=False)
    real_step = Engine.step

    def step(self):
        real_step(self)
        if self.round == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Engine, "step", step)
    command = ["run", str(cfg_path), "--out", str(tmp_path / "cut"), "--resume-or-start"]
    assert main(command) == 75
    assert "stopped by signal" in capsys.readouterr().err
    assert _rounds_done(tmp_path / "cut" / "history.h5") == 7
    monkeypatch.setattr(Engine, "step", real_step)
    assert main(command) == 0
    a, b = (history.read_h5(tmp_path / d / "history.h5").arrays for d in ("full", "cut"))
    assert np.array_equal(a["params/trained"], b["params/trained"])
    assert main(command) == 0 and _rounds_done(tmp_path / "cut" / "history.h5") == 30


class _Crash(Exception):
    """Stands for the process dying at that moment (the one subprocess SIGKILL test is the training one)."""


def test_a_forget_request_stopped_at_a_random_round_is_all_or_nothing(tmp_path, monkeypatch):
    """A forget request interrupted at a random one of its rounds (the method's or Retrain's): the
    run is untouched, and a retry gives exactly the uninterrupted result."""
    import shutil

    experiment.run(_small(rounds=40), out=tmp_path / "base", progress=False)
    for d in ("full", "cut"):
        shutil.copytree(tmp_path / "base", tmp_path / d)
    forget = ["forget", "--clients", "2", "--set", "unlearn.method=finetune"]
    calls = {"n": 0, "crash_at": None}
    real_step = Engine.step

    def step(self):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise _Crash(f"stopped at round call {calls['n']}")
        return real_step(self)

    monkeypatch.setattr(Engine, "step", step)
    assert main([forget[0], str(tmp_path / "full")] + forget[1:]) == 0
    total, calls["n"] = calls["n"], 0
    calls["crash_at"] = random.randint(1, total)
    before = _files(tmp_path / "cut")
    with pytest.raises(_Crash):
        main([forget[0], str(tmp_path / "cut")] + forget[1:])
    assert _files(tmp_path / "cut") == before
    calls["crash_at"] = None
    assert main([forget[0], str(tmp_path / "cut")] + forget[1:]) == 0
    a, b = (history.read_h5(tmp_path / d / "history.h5").arrays for d in ("full", "cut"))
    for key in ("params/unlearned", "params/retrained", "unlearn/retained", "checkpoint/params"):
        assert np.array_equal(a[key], b[key], equal_nan=key == "params/unlearned"), key  # NaN: the departed row
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def test_second_writer_is_refused_while_a_run_writes(tmp_path, capsys):
    """While a writer holds a run directory (its lock: an exclusive flock, which a second open file
    of the same process cannot take either), `run --overwrite` is refused naming the holder, and
    nothing of it lands."""
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config.dumps(_small(rounds=3)))
    out = tmp_path / "out"
    assert main(["run", str(cfg_path), "--out", str(out)]) == 0
    before = _files(out)
    capsys.readouterr()
    with history.run_lock(out, command="p2pforget run"):
        assert main(["run", str(cfg_path), "--out", str(out), "--overwrite", "--set", "train.lr=0.2"]) == 2
    err = capsys.readouterr().err
    assert f"is being written by pid {os.getpid()}" in err and "p2pforget run" in err
    assert _files(out) == before
    assert config.loads(history.read_h5(out / "history.h5").attrs["config_toml"]).train.lr == 0.1


def test_two_forget_requests_at_once_lose_nothing(tmp_path, capsys):
    experiment.run(_small(rounds=20), out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    with history.run_lock(run, command="p2pforget forget"):  # a first request is writing
        assert main(["forget", str(run), "--clients", "4"]) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "p2pforget forget" in err
    assert main(["forget", str(run), "--clients", "1"]) == 0
    assert main(["forget", str(run), "--clients", "4"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert [r["unlearn"]["forgotten"] for r in report["requests"]] == [{"1": list(range(30))}, {"4": list(range(30))}]
    members = history.read_h5(run / "history.h5").arrays["unlearn/members"]
    assert members.tolist() == [True, False, True, True, False, True, True]


def _digits(rounds):
    """Client 3 holds most of class 3: forgetting it drops the models' accuracy on its samples."""
    return config.from_dict({
        "run": {"rounds": rounds, "seed": 1}, "topology": {"kind": "star", "n_clients": 10},
        "data": {"kind": "digits", "partition": "by_class", "n_samples_per_client": 128, "n_test": 50},
        "model": {"kind": "logistic"}, "train": {"lr": 0.5, "local_steps": 5, "batch_size": 32},
        "unlearn": {"method": "retrain"}})


def _accuracy_on_client(engine, params, client):
    logits = engine.task.logits(params[0], torch.as_tensor(engine.data.x[client], dtype=engine.dtype))
    return float((logits.argmax(-1).numpy() == engine.data.y[client]).mean())


def test_forget_then_resume_never_relearns(tmp_path, capsys):
    cfg_path = tmp_path / "digits.toml"
    cfg_path.write_text(config.dumps(_digits(8)))
    run = tmp_path / "run"
    assert main(["run", str(cfg_path), "--out", str(run)]) == 0
    assert main(["forget", str(run), "--clients", "3"]) == 0
    record = json.loads((run / "report.json").read_text())["metrics"]
    assert record["trained"]["FA"]["mean"] > 80 and record["unlearned"]["FA"]["mean"] < 30

    assert main(["run", str(cfg_path), "--resume", str(run), "--set", "run.rounds=16"]) == 0
    capsys.readouterr()
    stored = history.read_h5(run / "history.h5")
    report = json.loads((run / "report.json").read_text())
    assert stored.attrs["rounds_done"] == 16 and stored.attrs["unlearned"]
    assert report["unlearn"]["forgotten"] == {"3": list(range(128))} and len(report["requests"]) == 1
    assert "params/unlearned" in stored.arrays and not stored.arrays["unlearn/members"][3]
    engine, _ = experiment.load_run(run)
    resumed = engine.params

    # Training 16 rounds from scratch without client 3 gives the very same models: nothing re-learned.
    reference, _ = retrain(engine, rounds=16, progress=False)
    assert torch.equal(resumed, reference.params)
    # What re-learning would have given: the same 8 more rounds with client 3's data.
    relearn = Engine(config=_digits(16))
    released = stored.arrays["params/unlearned"]  # client 3 left: its row was not released, it keeps its own
    start = np.where(np.isnan(released), stored.arrays["params/unlearned_noiseless"], released)
    relearn.load_state({"round": np.array(8), "params": start, "ledger": np.zeros((10, 10))})
    relearn.train(8, progress=False)
    fa_resumed, fa_relearned = _accuracy_on_client(engine, resumed, 3), _accuracy_on_client(relearn, relearn.params, 3)
    assert fa_resumed < 0.7 and fa_relearned > 0.85, (fa_resumed, fa_relearned)


def test_disk_error_while_recording_a_forget_leaves_the_run_untouched(tmp_path, monkeypatch, capsys):
    experiment.run(_small(rounds=4), out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    before = _files(run)
    real = history.write_h5

    def full_disk(path, **kwargs):
        real(Path(path).with_name("scratch.h5"), **kwargs)  # the bytes are built, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(history, "write_h5", full_disk)
    assert main(["forget", str(run), "--clients", "2"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    (run / "scratch.h5").unlink()
    assert _files(run) == before
    monkeypatch.setattr(history, "write_h5", real)
    (run / "report.json").unlink()  # a lost report.json is rebuilt, not an error
    assert main(["forget", str(run), "--clients", "2"]) == 0
    assert json.loads((run / "report.json").read_text())["unlearn"]["forgotten"] == {"2": list(range(30))}


def test_run_refuses_to_overwrite_a_finished_run(tmp_path, capsys):
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config.dumps(_small(rounds=3)))
    out = tmp_path / "out"
    assert main(["run", str(cfg_path), "--out", str(out)]) == 0
    before = _files(out)
    assert main(["run", str(cfg_path), "--out", str(out), "--set", "train.lr=0.3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _files(out) == before
    assert main(["run", str(cfg_path), "--out", str(out), "--set", "train.lr=0.3", "--overwrite"]) == 0
    assert config.loads(history.read_h5(out / "history.h5").attrs["config_toml"]).train.lr == 0.3


def test_divergence_stops_with_the_round_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    cfg_path = tmp_path / "exp.toml"
    cfg_path.write_text(config.dumps(config.replace(_small(rounds=40), train={"lr": 1e6}, run={"checkpoint_every": 1})))
    out = tmp_path / "out"
    assert main(["run", str(cfg_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    bad_round = int(err.split("diverged by round ")[1].split(":")[0])
    assert "lower train.lr (now 1e+06, e.g. to 100000)" in err and f"last good checkpoint (round {bad_round - 1})" in err
    stored = history.read_h5(out / "history.h5")
    assert stored.attrs["rounds_done"] == bad_round - 1 and not stored.attrs["complete"]
    assert np.isfinite(stored.arrays["checkpoint/params"]).all()

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    json.loads((out / "report.json").read_text(), parse_constant=refuse)


def test_report_json_is_strict():
    assert history.json_text({"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32(-np.inf)}) == \
        json.dumps({"a": None, "b": [None, 1.5], "c": None}, indent=2)


def test_writes_clean_stale_temporaries_respect_umask_and_sync_the_folder(tmp_path, monkeypatch):
    stale = tmp_path / ".history.h5.abc123.tmp"
    stale.write_bytes(b"left by a killed writer")
    synced = []
    real = history._fsync_dir
    monkeypatch.setattr(history, "_fsync_dir", lambda folder: (synced.append(Path(folder)), real(folder)))
    old = os.umask(0o027)
    try:
        history.write_h5(tmp_path / "history.h5", attrs={}, arrays={"a": np.zeros(2)})
        history.write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert not stale.exists()
    assert (tmp_path / "history.h5").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o640
    assert synced == [tmp_path, tmp_path]


def test_graph_file_ids_are_relabelled_numerically(tmp_path):
    from p2pforget import topology
    path = tmp_path / "g.edgelist"
    path.write_text("1.0 2.0\n2.0 10.0\n10.0 3.0\n3.0 1.0\n")
    g = topology.read_graph_file(path)
    # node ids 1, 2, 3, 10 become clients 0, 1, 2, 3 in numeric order (a text sort would put 10 second)
    assert sorted(tuple(sorted(e)) for e in g.edges) == [(0, 1), (0, 2), (1, 3), (2, 3)]


def test_relative_paths_are_stored_resolved_and_can_be_moved(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "ring5.edgelist").write_text("0 1\n1 2\n2 3\n3 4\n4 0\n")
    data = {"run": {"rounds": 3}, "topology": {"kind": "file", "n_clients": 5, "path": "ring5.edgelist"},
            "data": {"n_samples_per_client": 8, "n_test": 10}}
    (work / "exp.toml").write_text(config.dumps(config.from_dict(data)))
    monkeypatch.chdir(tmp_path)  # the path is relative to the config file, not to here
    assert main(["run", "work/exp.toml", "--out", "work/run"]) == 0
    stored = config.loads(history.read_h5(work / "run" / "history.h5").attrs["config_toml"])
    assert stored.topology.path == str((work / "ring5.edgelist").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["forget", str(work / "run"), "--clients", "1", "--no-retrain"]) == 0
    (work / "ring5.edgelist").rename(elsewhere / "moved.edgelist")
    assert main(["forget", str(work / "run"), "--clients", "2", "--no-retrain"]) == 2
    assert "does not exist; set topology.path" in capsys.readouterr().err
    assert main(["forget", str(work / "run"), "--clients", "2", "--no-retrain", "--set",
                 f"topology.path={str(elsewhere / 'moved.edgelist')!r}"]) == 0


def test_progress_false_prints_nothing(capfd):
    from p2pforget.unlearn import forget
    cfg = config.from_dict({"topology": {"kind": "ring", "n_clients": 16}, "data": {"n_samples_per_client": 6},
                            "train": {"dtype": "float64"}, "unlearn": {"certified": {"averaging": "gossip", "curvature_tol": 1e-10}}})
    engine = Engine(config=cfg)
    engine.train(2, progress=False)
    capfd.readouterr()
    result = forget(engine, clients=[3], progress=False)
    assert result.cost["unlearn"].comm_bytes > 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""

import csv
import json
import subprocess
import sys

import pytest

from p2pforget import config, experiment
from p2pforget.unlearn import forget
from p2pforget.__main__ import main


def _write(tmp_path, **overrides):
    cfg = config.from_dict({"run": {"rounds": 3}, "topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10, "n_test": 20}})
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(cfg))
    return path


def test_run_with_overrides_writes_run_dir(tmp_path, capsys):
    path = _write(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--set", "topology.kind=complete", "--set", "run.rounds=2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["topology"]["kind"] == "complete" and report["rounds_done"] == 2
    assert "test acc" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert (out / "metrics.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv,message", [
    (["--set", "topology.kindd=ring"], "unknown key topology.kindd; valid keys in [topology]: kind, n_clients"),
    (["--set", "topology.kind=ring", "--set", "train.lr=fast"], "train.lr must be of type float"),
    (["--set", "topology.kind=erdos_renyi", "--set", "topology.erdos_renyi.p=0.01", "--set", "topology.n_clients=30"], "disconnected"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    assert main(["run", str(_write(tmp_path)), "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_files_are_clear(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no run file" in capsys.readouterr().err
    assert main(["run", str(_write(tmp_path)), "--resume", str(tmp_path / "empty")]) == 2
    assert "no run file" in capsys.readouterr().err


def test_topologies_list_and_show(tmp_path, capsys):
    assert main(["topologies"]) == 0
    assert "small_world" in capsys.readouterr().out
    png = tmp_path / "t.png"
    assert main(["topologies", "show", "torus", "--n", "9", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "diameter        2" in out and "spectral_gap" in out
    assert png.stat().st_size > 5_000


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    res = subprocess.run([sys.executable, "-m", "p2pforget", "demo", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for text in ["test acc (mean)", "Retrain", "Certified", "dist. to Retrain", "certificate: epsilon=1.0"]:
        assert text in res.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    m = report["metrics"]
    assert m["unlearned"]["relative_distance_to_retrain"] < 0.5
    for key in ("FA", "RA", "TA"):
        assert abs(m["unlearned"][key]["mean"] - m["retrained"][key]["mean"]) <= 2.0
    ratio = report["cost"]["ratio_to_retrain"]  # evaluation is left out of both sides
    # Retrain's FLOPs: its first gradient-tracking round (which also sets up the tracker) once, then
    # the later rounds', for the 15 clients that hold data (the relay, client 3, computes nothing);
    # the exact Newton steps cost most of that (0.92 measured)
    assert ratio["comm_bytes"] < 0.6 and ratio["flops"] < 0.95
    assert report["unlearn"]["certified"] and report["unlearn"]["residual_norm"] <= report["unlearn"]["residual_bound"]
    for png in ["metrics", "topology", "ledger", "influence_share", "unlearning"]:
        assert (tmp_path / "demo" / f"{png}.png").stat().st_size > 10_000


def test_compare_topologies_with_unlearning(tmp_path, capsys):
    cfg = config.from_dict({
        "run": {"rounds": 40}, "topology": {"n_clients": 9, "erdos_renyi": {"p": 0.5}},
        "data": {"n_samples_per_client": 10, "n_test": 20},
        "train": {"algorithm": "gradient_tracking", "lr": 0.07, "dtype": "float64", "weight_decay": 0.1},
        "unlearn": {"clients": [4], "mode": "keep_relay", "certified": {"newton_steps": 3, "averaging": "tree"}},
    })
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(cfg))
    assert main(["compare", str(path), "--topologies", "ring,torus,star", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "spectral gap" in out and "time / Retrain" in out and "dist. to Retrain (rel.)" in out
    with open(tmp_path / "cmp" / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    certified = [r for r in rows if r["method"] == "certified"]
    assert [r["topology"] for r in certified] == ["ring", "torus", "star"]
    assert float(certified[2]["spectral_gap"]) == pytest.approx(1.0)  # FedAvg averages exactly
    assert float(certified[0]["spectral_gap"]) < float(certified[1]["spectral_gap"])  # the ring mixes slowest
    # the grid's distance to Retrain (from the cells' stored models) is forget()'s own, reference included
    engine, _ = experiment.load_run(tmp_path / "cmp" / "runs" / "ring-s0")
    own = forget(engine, clients=[4], method="certified", progress=False).metrics["unlearned"]
    assert float(certified[0]["relative_distance_to_retrain"]) == pytest.approx(own["relative_distance_to_retrain"], rel=1e-9)
    assert all(float(r["relative_distance_to_retrain"]) == 0.0 for r in rows if r["method"] == "retrain")
    with open(tmp_path / "cmp" / "timing.csv", newline="") as f:
        assert all(float(r["seconds"]) > 0 for r in csv.DictReader(f))
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 10_000
    # the same directory with another experiment is refused, naming the difference and the fix
    assert main(["compare", str(path), "--topologies", "ring", "--set", "train.lr=0.05", "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "--overwrite" in err
    assert main(["compare", str(path), "--topologies", "ring,tree", "--out", str(tmp_path / "bad")]) == 2
    assert "choose one of" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_quiet_runs_draw_no_progress_bar(tmp_path, capsys, monkeypatch, how):
    """``--quiet`` or ``TQDM_DISABLE=1``: no progress bar (no carriage returns in a batch log);
    the flag leaves the environment as it was for what runs next in the process."""
    path = _write(tmp_path)
    if how == "env":
        monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main((["--quiet"] if how == "flag" else []) + ["run", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "\r" not in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "next")]) == 0
    assert ("\r" in capsys.readouterr().err) == (how == "flag")


def test_library_calls_draw_no_progress_bar_unless_asked(tmp_path, capsys, monkeypatch):
    """In Python, training, a run and a forget request are silent by default; ``progress=True`` asks."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    from p2pforget import Engine, experiment, forget

    cfg = config.from_dict({"run": {"rounds": 3}, "topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10, "n_test": 20},
                            "audit": {"after_forget": False}})
    engine = Engine(config=cfg)
    engine.train(3)
    experiment.run(cfg, out=tmp_path / "run")
    forget(engine, clients=[1], method="finetune", rounds=2)
    assert "\r" not in capsys.readouterr().err
    engine.train(2, progress=True)
    assert "\r" in capsys.readouterr().err


def test_the_training_table_counts_training_rounds_only(tmp_path, capsys):
    """A run with a forget request: the method's rounds are not reported as training rounds."""
    cfg = config.from_dict({"run": {"rounds": 4}, "topology": {"n_clients": 4}, "data": {"n_samples_per_client": 10, "n_test": 20},
                            "unlearn": {"clients": [1], "method": "finetune", "finetune": {"rounds": 3}}})
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    first_row = capsys.readouterr().out.splitlines()[2]
    assert first_row.split("|")[0].strip() == "4"
    assert json.loads((tmp_path / "run" / "report.json").read_text())["rounds_done"] > 4  # the engine did go on


def test_an_uncertified_release_prints_no_certificate_line(tmp_path, capsys):
    """The default method on a non-convex model: the reason it is not certified, never a
    certificate line with a sigma that certifies nothing."""
    cfg = config.from_dict({"run": {"rounds": 3}, "topology": {"n_clients": 4},
                            "data": {"kind": "digits", "n_samples_per_client": 8, "n_test": 16},
                            "model": {"kind": "mlp"}, "unlearn": {"clients": [1]}, "audit": {"after_forget": False}})
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "certificate: epsilon" not in out
    assert "no certificate: the objective is not known to be strongly convex" in out

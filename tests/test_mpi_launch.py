"""Whole jobs under mpirun: the launch script, and one failing rank ending the job."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from p2pforget import config, experiment, history

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
ENV = os.environ | {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(not MPIRUN.exists(), reason="needs mpirun from the [mpi] extra")


def _config(tmp_path, rounds=6):
    cfg = config.from_dict({
        "run": {"seed": 9, "rounds": rounds},
        "topology": {"kind": "torus", "n_clients": 9, "dropout": 0.2},
        "data": {"n_samples_per_client": 12, "n_test": 20},
        "train": {"batch_size": 4, "dtype": "float64"},
    })
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(cfg))
    return cfg, path


def test_local_sh_reproduces_in_process_run(tmp_path):
    cfg, path = _config(tmp_path)
    experiment.run(cfg, out=tmp_path / "local", progress=False)
    res = subprocess.run(["bash", str(ROOT / "launch/local.sh"), str(path), "2", "--out", str(tmp_path / "mpi")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a = history.read_h5(tmp_path / "local" / "history.h5")
    b = history.read_h5(tmp_path / "mpi" / "history.h5")
    assert b.attrs["world_size"] == 2
    assert np.array_equal(a.arrays["params/trained"], b.arrays["params/trained"])
    assert np.array_equal(a.arrays["metrics/test_acc_mean"], b.arrays["metrics/test_acc_mean"])


def test_one_failing_rank_ends_the_whole_job(tmp_path):
    """Rank 1 cannot read its config; rank 0 has started a long run and would wait forever
    for rank 1 in the first collective call unless the job is aborted."""
    _, good = _config(tmp_path, rounds=100_000)
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "from p2pforget.__main__ import main\n"
        f"cfg = {str(good)!r} if MPI.COMM_WORLD.Get_rank() == 0 else {str(tmp_path / 'missing.toml')!r}\n"
        f"sys.exit(main(['run', cfg, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    start = time.perf_counter()
    res = subprocess.run([str(MPIRUN), "-n", "2", "--oversubscribe", sys.executable, str(script)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert res.returncode != 0
    assert "missing.toml' does not exist" in res.stderr
    assert elapsed < 30, elapsed


def test_exception_inside_the_round_loop_aborts(tmp_path):
    """An unexpected error on one rank in the middle of training (not a config error)."""
    _, good = _config(tmp_path, rounds=100_000)
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "from p2pforget import engine\n"
        "from p2pforget.__main__ import main\n"
        "step = engine.Engine.step\n"
        "def failing_step(self):\n"
        "    if MPI.COMM_WORLD.Get_rank() == 1 and self.round == 3:\n"
        "        raise RuntimeError('simulated node failure')\n"
        "    step(self)\n"
        "engine.Engine.step = failing_step\n"
        f"sys.exit(main(['run', {str(good)!r}, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    start = time.perf_counter()
    res = subprocess.run([str(MPIRUN), "-n", "2", "--oversubscribe", sys.executable, str(script)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "RuntimeError: simulated node failure" in res.stderr
    assert time.perf_counter() - start < 30


def test_transport_mpi_without_mpi4py_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from p2pforget import transport\n"
            "try:\n    transport.make('mpi', n_clients=4)\nexcept ValueError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "run.transport = 'mpi' but the MPI transport needs mpi4py" in res.stdout


def test_launcher_and_mpi_library_mismatch_is_clear(tmp_path):
    """A launcher from another MPI installation starts N separate singletons; each would silently
    run the whole experiment alone."""
    _, path = _config(tmp_path)
    res = subprocess.run([sys.executable, "-m", "p2pforget", "run", str(path), "--out", str(tmp_path / "o")],
                         env=ENV | {"OMPI_COMM_WORLD_SIZE": "3"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "the launcher started 3 processes but MPI sees 1" in res.stderr


@pytest.mark.parametrize("command", ["forget", "resume"])
def test_damaged_run_file_under_mpirun_is_one_clear_line(tmp_path, command):
    """A truncated history.h5 read by `forget` or `run --resume` at 2 ranks: exit status 2, the
    error printed once, no traceback, no rank left waiting."""
    cfg, path = _config(tmp_path)
    experiment.run(cfg, out=tmp_path / "run", progress=False)
    h5 = tmp_path / "run" / "history.h5"
    h5.write_bytes(h5.read_bytes()[:2000])
    argv = (["forget", str(tmp_path / "run"), "--clients", "1"] if command == "forget"
            else ["run", str(path), "--resume", str(tmp_path / "run")])
    res = subprocess.run([str(MPIRUN), "-n", "2", "--oversubscribe", sys.executable, "-m", "p2pforget"] + argv,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    # mpirun forwards each rank's stderr next to its own banners, and a banner's last bytes can
    # land on the same line as the message: look for the message anywhere on a line.
    errors = [line for line in res.stderr.splitlines() if "p2pforget: error:" in line]
    assert len(errors) == 1 and "history.h5 is not a readable HDF5 run file" in errors[0], res.stderr


def test_more_ranks_than_clients_is_printed_once(tmp_path):
    """Every rank finds "3 ranks but only 2 clients"; the job prints it once and exits 2."""
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(config.from_dict({"run": {"rounds": 1}, "topology": {"n_clients": 2},
                                                   "data": {"n_samples_per_client": 4, "n_test": 5}})))
    res = subprocess.run([str(MPIRUN), "-n", "3", "--oversubscribe", sys.executable, "-m", "p2pforget", "run", str(path),
                          "--out", str(tmp_path / "out")], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if "p2pforget: error:" in line]
    assert len(errors) == 1 and "3 ranks but only 2 clients" in errors[0], res.stderr
    assert "Traceback" not in res.stderr


def test_every_key_the_launch_scripts_name_exists():
    """The usage lines and examples of launch/ name real config keys (``--set K=V``)."""
    import re

    from p2pforget import config

    root = Path(__file__).resolve().parents[1]
    named = {m for path in (root / "launch").iterdir() if path.is_file()
             for m in re.findall(r"--set[ =]([a-z_]+(?:\.[a-z_0-9]+)+=[^\s\]'\"]+)", path.read_text())}
    assert named, "the launch scripts name no key: the pattern is stale"
    for override in sorted(named):
        config.with_overrides(config.from_dict({}), [override])


def test_warnings_and_errors_are_printed_once_per_job(tmp_path):
    """Every rank meets the same warning and the same config error: the job prints each once (the
    root's), not once per rank."""
    path = tmp_path / "exp.toml"
    path.write_text(config.dumps(config.from_dict({
        "run": {"rounds": 2}, "topology": {"kind": "torus", "n_clients": 16},
        "data": {"n_samples_per_client": 4, "n_test": 5}, "train": {"algorithm": "gradient_tracking"}})))
    run = [str(MPIRUN), "-n", "2", sys.executable, "-m", "p2pforget", "--quiet", "run", str(path)]
    res = subprocess.run(run + ["--out", str(tmp_path / "out")], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sum("gradient tracking may stall" in line for line in res.stderr.splitlines()) == 1, res.stderr
    res = subprocess.run(run + ["--set", "train.lrr=0.1", "--out", str(tmp_path / "bad")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if "p2pforget: error:" in line]
    assert len(errors) == 1 and "train.lrr" in errors[0] and "rank" not in errors[0], res.stderr

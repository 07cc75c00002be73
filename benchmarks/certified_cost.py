"""What certified unlearning costs next to Retrain, from d = 10^2 to 10^5 parameters: FLOPs, bytes
and seconds, against Retrain at equal rounds and at equal distance to the remaining optimum.

    .venv/bin/python benchmarks/certified_cost.py            # every cell, writes docs/results/certified_cost.md
    .venv/bin/python benchmarks/certified_cost.py 999         # one synthetic cell (n_features), printed
    .venv/bin/python benchmarks/certified_cost.py --page      # the page again from docs/results/certified_cost.json

Setup (fixed before any cell ran): a ring of 8, 20 samples per client, 10 classes, L2-logistic
(weight decay 1e-3), inputs scaled to unit norm, the defaults of training (DSGD, full batch,
lr 0.1, float32) for 30 rounds, client 3 forgotten (it leaves the graph); certified unlearning
with its defaults (budget 1e-6, epsilon 1, delta 1e-5, solver "auto": dense below
CG_ABOVE_DIM parameters, matrix-free CG above). Features: Gaussian class clusters with 9, 99,
999 and 9,999 features (d = 100 ... 100,000), and sklearn's digits written as MNIST IDX files
(28 x 28, d = 7,850).

Costs are counted alike on both sides: FLOPs are p2pforget.flops's count of the work (matrix
products: gradients, Hessian-vector products, dense solves; and the communication arithmetic:
gossip mixing, 2 FLOPs per number a node receives, and the spanning tree's sums, 1), for the
certified sums and Retrain's mixing alike; the simulator's own checks (the certificate's evaluation, the distance traces) are left
out of both. The remaining optimum theta'* is solved independently (scipy trust-krylov + Newton-CG
polish) on the inputs as trained on. "Equal distance": Retrain (the run's own DSGD, and gradient
tracking, which converges to theta'* at a linear rate) trained from scratch until its largest
distance to theta'* over the nodes is at most that of the certified *release* (noise included);
at most MAX_ROUNDS rounds, after which the cell says "not reached" and its ratio is a bound.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FEATURES = (9, 99, 999, 9999)
ROUNDS = 30
MAX_ROUNDS = 3000
FORGOTTEN = 3


def _config(data: dict):
    from p2pforget import config

    return config.from_dict({
        "run": {"seed": 0, "rounds": ROUNDS, "eval_every": 0},
        "topology": {"kind": "ring", "n_clients": 8},
        "data": {"n_samples_per_client": 20, "n_test": 200, "holdout_fraction": 0.0, "normalize": "unit_norm", **data,
                 "gaussian_logistic": {"n_classes": 10} | data.get("gaussian_logistic", {})},
        "model": {"kind": "logistic"},
        "audit": {"after_forget": False},
    })


def _digits_as_mnist(folder: Path) -> None:
    """sklearn's 8x8 digits, upsampled to 28 x 28 and written as MNIST IDX files."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    from p2pforget.data.files import write_idx

    d = load_digits()
    images = np.clip(zoom(d.images, (1, 3.5, 3.5), order=1) / 16.0 * 255.0, 0, 255).astype(np.uint8)
    labels = d.target.astype(np.uint8)
    cut = 1400
    write_idx(folder / "train-images-idx3-ubyte", images[:cut])
    write_idx(folder / "train-labels-idx1-ubyte", labels[:cut])
    write_idx(folder / "t10k-images-idx3-ubyte", images[cut:])
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[cut:])


def _optimum(engine) -> np.ndarray:
    from reference import sum_objective_optimum_cg

    d = engine.data
    x = d.x.astype(np.float32).astype(np.float64)  # the inputs as trained on (float32)
    keep = [k for k in range(engine.n_clients) if k != FORGOTTEN]
    xs = [x[k, :d.counts[k]].reshape(int(d.counts[k]), -1) for k in keep]
    ys = [d.y[k, :d.counts[k]] for k in keep]
    return sum_objective_optimum_cg(xs, ys, d.n_classes, engine.config.train.weight_decay, np.zeros(engine.dim),
                                    gtol=1e-12)


def _retrain_until(engine, algorithm: str, optimum: np.ndarray, nodes: np.ndarray, target: float) -> dict:
    """Retrain with ``algorithm`` from scratch on what remains, until its largest distance to the
    optimum is at most ``target`` (or MAX_ROUNDS); costs of the rounds it needed."""
    from p2pforget import Engine, config
    from p2pforget.unlearn.retrain import retrain

    twin = Engine(config=config.replace(engine.config, train={"algorithm": algorithm}))
    twin.exclude(samples={j: np.flatnonzero(~engine.retained[j]) for j in range(engine.n_clients)},
                 removed=np.flatnonzero(~engine.members).tolist())
    distances: list[float] = []
    spent = {"seconds": 0.0}

    def observe(params):
        start = time.perf_counter()
        distances.append(float(np.linalg.norm(params.double().numpy()[nodes] - optimum, axis=1).max()))
        spent["seconds"] += time.perf_counter() - start

    _, cost = retrain(twin, rounds=MAX_ROUNDS, progress=False, observe=observe)
    hit = next((k + 1 for k, v in enumerate(distances) if v <= target), None)
    rounds = hit or MAX_ROUNDS
    # Not reached: the rounds it would need at the linear rate of its last third (an estimate).
    window = MAX_ROUNDS // 3
    rate = (np.log(distances[-1]) - np.log(distances[-1 - window])) / window
    estimate = None if hit or rate >= 0 else int(MAX_ROUNDS + np.log(target / distances[-1]) / rate)
    share = rounds / MAX_ROUNDS
    flops = cost.flops * share
    return {"algorithm": algorithm, "rounds": rounds, "reached": hit is not None, "final_distance": distances[rounds - 1],
            "estimated_rounds": estimate,
            "flops": flops, "bytes": cost.comm_bytes * share, "seconds": (cost.seconds - spent["seconds"]) * share}


def cell(data: dict, name: str) -> dict:
    from p2pforget import Engine, forget

    engine = Engine(config=_config(data))
    engine.train(ROUNDS, progress=False)
    r = forget(engine, clients=[FORGOTTEN], progress=False)
    c = r.certificate
    nodes = np.flatnonzero(engine.members)
    optimum = _optimum(engine)
    noiseless = float(np.linalg.norm(r.params["unlearned_noiseless"][nodes].astype(np.float64) - optimum, axis=1).max())
    released = float(np.linalg.norm(r.params["unlearned"][nodes].astype(np.float64) - optimum, axis=1).max())
    u, ret = r.cost["unlearn"], r.cost["retrain"]
    certified = {"flops": u.flops, "bytes": u.comm_bytes, "seconds": u.seconds}
    equal_rounds = {"flops": ret.flops, "bytes": ret.comm_bytes,
                    "seconds": ret.seconds, "distance": float(np.linalg.norm(r.params["retrained"][nodes] - optimum,
                                                                             axis=1).max())}
    equal_distance = [_retrain_until(engine, a, optimum, nodes, released) for a in ("dsgd", "gradient_tracking")]
    return {"data": name, "d": engine.dim, "certified_ok": bool(c["certified"]), "reason": c["not_certified_because"],
            "solver": c["solver"], "steps": c["newton_steps_taken"], "cg_iterations": c["cg_iterations"],
            "sigma": c["sigma"], "noiseless_distance": noiseless, "release_distance": released,
            "certified": certified, "retrain_equal_rounds": equal_rounds, "retrain_equal_distance": equal_distance}


def _ratio(a: float, b: float, bound: bool) -> str:
    return ("≤ " if bound else "") + f"{a / b:.3g}×"


def table(cells: list[dict]) -> str:
    rows = []
    for c in cells:
        cert, same = c["certified"], c["retrain_equal_rounds"]
        gt = next(e for e in c["retrain_equal_distance"] if e["algorithm"] == "gradient_tracking")
        ds = next(e for e in c["retrain_equal_distance"] if e["algorithm"] == "dsgd")

        def rounds(e):
            if e["reached"]:
                return f"{e['rounds']}"
            est = f"; est. {e['estimated_rounds']:.2g}" if e["estimated_rounds"] else "; no progress"
            return f"> {MAX_ROUNDS:,} (at {e['final_distance']:.2g}{est})"
        rows.append(
            f"| {c['data']} | {c['d']:,} | {c['solver']} | {'yes' if c['certified_ok'] else 'NO'} | "
            f"{c['release_distance']:.2g} / {same['distance']:.2g} | "
            f"{_ratio(cert['flops'], same['flops'], False)} | {_ratio(cert['bytes'], same['bytes'], False)} | "
            f"{_ratio(cert['seconds'], same['seconds'], False)} | "
            f"{rounds(ds)} | {_ratio(cert['flops'], ds['flops'], not ds['reached'])} | "
            f"{rounds(gt)} | {_ratio(cert['flops'], gt['flops'], not gt['reached'])} | "
            f"{cert['bytes'] / 1e6:.3g} / {gt['bytes'] / 1e6:.3g} |")
    head = ("| data | d | solver | certified | distance to θ'*: release / Retrain@30 | FLOPs vs Retrain@30 | "
            "bytes vs Retrain@30 | seconds vs Retrain@30 | DSGD Retrain rounds to equal distance | "
            "FLOPs vs it | GT Retrain rounds to equal distance | FLOPs vs it | MB: certified / GT Retrain at equal distance |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(rows)


def verdicts(cells: list[dict]) -> str:
    """What the table says, one line per cell, from its numbers: where certified wins and where it loses."""
    lines = []
    for c in cells:
        cert, same = c["certified"], c["retrain_equal_rounds"]
        # The cheapest Retrain to equal distance costs at least the least any of them spent (an
        # unreached one spent a lower bound of what it needs): compare with that, conservatively.
        best = min(c["retrain_equal_distance"], key=lambda e: e["flops"])
        vs_rounds = cert["flops"] / same["flops"]
        vs_dist = cert["flops"] / best["flops"]
        at = ("reached" if best["reached"] else
              f"not reached in {MAX_ROUNDS:,} rounds, so the true ratio is smaller than this")
        lines.append(
            f"- {c['data']}, d = {c['d']:,}: at equal rounds certified spends {vs_rounds:.3g}× Retrain's FLOPs and "
            f"{cert['bytes'] / same['bytes']:.3g}× its bytes ({'loses' if vs_rounds > 1 else 'wins'}), but that Retrain is "
            f"{same['distance']:.2g} from θ'* where the release is {c['release_distance']:.2g}; against Retrain trained "
            f"to the release's distance ({best['algorithm']}, {at}) certified spends {vs_dist:.3g}× its FLOPs "
            f"({'meets' if vs_dist <= 0.25 else 'misses'} the 0.25× target).")
    return "\n".join(lines)


READING = """
How to read it. *Retrain@30* is the reference `forget()` trains next to every method: the run's own
30 DSGD rounds from scratch. At equal rounds certified unlearning always costs more (10-30× the
FLOPs, 10-34× the bytes), but that Retrain is 15-31 away from θ'* (its models are far from
converged at weight decay 1e-3), where the certified release is within 1e-3: the two are not of
equal quality. Retrain trained towards θ'* for 3,000 rounds is still 2.6-14 away (DSGD's constant
step keeps it off θ'*; gradient tracking converges, at the rate of the weakly regularized
objective), so "equal distance" is never reached here: the FLOPs ratio against it is an upper
bound (the true one is smaller), and the "est." column extrapolates the rounds it would need from
the linear rate of its last 1,000 rounds (≈ 3-5 × 10⁴, about ten times the bound's rounds).
The acceptance target (certified ≤ 0.25× the FLOPs of equal-distance Retrain at d ≥ 10⁴) holds
at 10⁴ and 10⁵ on the bound alone; the MNIST-format cell (d = 7,850) misses 0.25× on the bound
(0.28×) while its extrapolated ratio is ≈ 0.02×.

`solver = "auto"` switched the dense solver off above 200 parameters after the first run of this
table (then at 1,000): the d = 1,000 cell with the dense solver spent 762× Retrain@30's FLOPs and
481 MB, 33× what CG spends there. The cells at d ≥ 10⁴ use CG either way.
"""


def page(cells: list[dict], commit: str) -> str:
    return (f"# Certified unlearning's cost next to Retrain\n\nGenerated by `benchmarks/certified_cost.py` at commit "
            f"{commit}; the setup and the counting rules are in the script's docstring.\n\n" + table(cells) + "\n\n"
            + verdicts(cells) + "\n" + READING)


def main() -> int:
    import subprocess

    results = ROOT / "docs" / "results"
    if sys.argv[1:] == ["--page"]:
        stored = json.loads((results / "certified_cost.json").read_text())
        (results / "certified_cost.md").write_text(page(stored["cells"], stored["commit"]))
        return 0
    if len(sys.argv) == 2:
        print(json.dumps(cell({"gaussian_logistic": {"n_features": int(sys.argv[1])}}, f"gaussian, {sys.argv[1]} features")))
        return 0
    cells = []
    for f in FEATURES:
        out = subprocess.run([sys.executable, __file__, str(f)], capture_output=True, text=True, check=True)
        cells.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(cells[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _digits_as_mnist(Path(tmp))
        cells.append(cell({"kind": "mnist", "path": tmp}, "digits as MNIST IDX (28×28)"))
        print(json.dumps(cells[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    (results / "certified_cost.json").write_text(json.dumps({"commit": commit, "cells": cells}, indent=1) + "\n")
    text = page(cells, commit)
    (results / "certified_cost.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

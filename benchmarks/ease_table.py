"""EASE vs Retrain, the baselines and its ablations on synthetic captions with a tiny CLIP.

    .venv/bin/python benchmarks/ease_table.py [--seeds 0,1,2] [--topologies star,ring] [--jobs 2]
        [--acceptance-seeds 0,1,2] [--also-check "0-2;6-11"] [--out PAGE.md] [--from-json A.json,B.json]

docs/results/ease_class.md pools two runs (``--seeds 0-5`` and ``--seeds 6-11 --out runs/…/ease_class.md``)
with ``--from-json`` their two ``*_cells.json`` ``--acceptance-seeds 0-11 --also-check "0-2;6-11"``:
the FA item is judged on the 12-seed mean (docs/methods/ease.md says why).

Setup: a tiny open_clip CLIP (``clip_config = "tiny"``) whose backbone is first pretrained
centrally (AdamW, on a disjoint pool of synthetic captions drawn with another seed) and saved as a
local checkpoint, as a pretrained CLIP would be, without a single purple pair; then LoRA adapters
are trained federatedly on ``captions_synth`` (10 clients, pairs spread iid, so every client holds
some purple ones) for ``ROUNDS`` rounds on the star (FedAvg) or the ring (DSGD), and every purple
pair (a class-level request: each client's purple pairs) is forgotten by every method from the
same trained state. Only the forgotten pairs teach purple, so Retrain cannot learn it from anyone.

Every method is judged on the same nodes and data: FA / RA / TA = R@1 (mean of image->text and
text->image, percent) on the forgotten pairs, the retained pairs and the test pairs, every pair
retrieved among its own image or captions and the test pairs'; MIA = AUC x 100 of the similarity
score of forgotten pairs against the same clients' held-out purple pairs (50 = membership not
detectable); cost = seconds and FLOPs of the method's work,
evaluation left out of every method alike, and bytes moved. The drift experiment continues
federated training for ``DRIFT`` rounds after EASE, with and without the Forget Lock, and traces
the forget R@1. Writes docs/results/ease_class.md (mean +- std over seeds) and docs/results/ease_class_drift.png
(the client-level table, the paper's own scenario, is benchmarks/ease_clients.py's docs/results/ease.md).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

from p2pforget.report import mean_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
import calibration  # noqa: E402  (the benchmarks' shared sweep, verdicts and plots)

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, DRIFT = 30, 20
FORGET_COLOUR = 4  # purple
# row name -> (registered method, its [unlearn.<method>] options)
EASE_ROUNDS = 3
EASE_LR = 0.2  # the displacement step, from benchmarks/ease_calibrate.py on seeds 100-102 (not the table's)
METHODS = {
    "ease": ("ease", {"rounds": EASE_ROUNDS, "lr": EASE_LR}),
    "ease_one_branch": ("ease", {"rounds": EASE_ROUNDS, "lr": EASE_LR, "displacement": "image"}),
    "ease_entangled": ("ease", {"rounds": EASE_ROUNDS, "lr": EASE_LR, "excision": "entangled"}),
    "ease_no_excision": ("ease", {"rounds": EASE_ROUNDS, "lr": EASE_LR, "excision": "none"}),
    "finetune": ("finetune", {"rounds": EASE_ROUNDS}),
    "gradient_ascent": ("gradient_ascent", {"rounds": EASE_ROUNDS}),
}
# EASE without the lock is EASE's own result (the lock acts only after the request) continued without it
ORDER = ("trained", "retrain", "ease", "ease_one_branch", "ease_entangled", "ease_no_excision", "ease_no_lock", "finetune",
         "gradient_ascent")
LABELS = {"trained": "Trained (before)", "retrain": f"Retrain ({ROUNDS} rounds)", "ease": f"EASE (a + b + c, {EASE_ROUNDS} rounds)",
          "ease_one_branch": "EASE, one-branch displacement (image only)", "ease_entangled": "EASE, (b) removing the entangled directions instead",
          "ease_no_excision": "EASE without excision (b)",
          "ease_no_lock": "EASE without Forget Lock (c)", "finetune": f"Fine-tune ({EASE_ROUNDS} rounds)",
          "gradient_ascent": f"Gradient ascent ({EASE_ROUNDS} rounds)"}


def experiment_config(seed: int, kind: str, checkpoint: str):
    from p2pforget import config

    return config.from_dict({
        "run": {"seed": seed, "rounds": ROUNDS, "eval_every": 0},
        "topology": {"kind": kind, "n_clients": 10},
        "data": {"kind": "captions_synth", "n_samples_per_client": 60, "n_test": 100, "partition": "iid",
                 "captions_synth": {"concept": "colour"}},
        "model": {"kind": "clip", "clip": {"pretrained": checkpoint}},
        "train": {"lr": 0.5, "local_steps": 2, "batch_size": 32, "weight_decay": 0.0},
        "audit": {"after_forget": False},
    })


def pretrain(path: Path, *, steps: int, seed: int = 1000) -> None:
    """Pretrain the tiny CLIP's backbone centrally (every parameter, AdamW) on synthetic captions
    drawn with ``seed`` (none of them in any experiment) and save its state dict to ``path``."""
    import torch

    from p2pforget.config import DataConfig, ModelConfig
    from p2pforget.data import captions
    from p2pforget.models import build, clip

    model = build(ModelConfig(kind="clip", tables={"clip": clip.CLIPOptions(finetune="full")}), input_shape=(3, 32, 32),
                  n_classes=0)
    pool = captions.captions_synth(DataConfig(kind="captions_synth", n_samples_per_client=3000, n_test=1,
                                              tables={"captions_synth": captions.SynthCaptionOptions(concept="colour")}),
                                   1, seed)
    keep = pool.y[0] != FORGET_COLOUR  # the backbone never sees the colour that will be forgotten
    x = torch.as_tensor(pool.x[0][keep], dtype=torch.float32)
    tokens = torch.as_tensor(pool.extras["tokens"][0][keep])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        batch = {"x": x[idx], "tokens": tokens[idx], "u": torch.rand(64, generator=gen), "mask": torch.ones(64)}
        loss = model.loss_terms(batch)["infonce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.clip.state_dict(), path)


def forget_request(engine) -> dict[str, np.ndarray]:
    """The request: every pair of the forgotten colour, on every client that holds some."""
    from p2pforget.unlearn import class_samples

    return class_samples(engine, [FORGET_COLOUR])


def request(engine) -> dict:
    """The request as keyword arguments of :func:`p2pforget.forget`."""
    return {"samples": forget_request(engine)}


def _row(result, key: str, cost_key: str | None) -> dict:
    m = result.metrics[key]
    c = result.cost.get(cost_key) if cost_key else None
    return {"FA": m["FA"]["mean"], "RA": m["RA"]["mean"], "TA": m["TA"]["mean"], "MIA": m["MIA"],
            "seconds": c.seconds if c else None, "GFLOPs": c.flops / 1e9 if c else None,
            "comm_MB": c.comm_bytes / 1e6 if c else None}


def one_cell(args: tuple[str, int, str]) -> dict:
    """Train once, then every method (and Retrain) from the same state; the drift runs after EASE."""
    kind, seed, checkpoint = args
    cfg = experiment_config(seed, kind, checkpoint)
    start = time.perf_counter()
    engine = calibration.trained_engine(cfg)
    from p2pforget import Engine, forget, metrics

    state = engine.state()
    samples = forget_request(engine)
    rows, drift = {}, {}
    forgotten = np.zeros_like(engine.retained)
    for j, idx in samples.items():
        forgotten[j, idx] = True

    def continued(e) -> list[float]:
        """Continued federated training after the request: does forget R@1 drift back?"""
        sets = metrics.EvalSets.from_masks(e, forgotten, e.retained & e.members[:, None])
        nodes = np.flatnonzero(e.members)
        trace = [metrics.forget_accuracy(e, e.params, sets, nodes=nodes)]
        for _ in range(DRIFT):
            e.train(1, progress=False)
            trace.append(metrics.forget_accuracy(e, e.params, sets, nodes=nodes))
        return trace

    for row, (method, options) in ({"retrain": ("retrain", {})} | METHODS).items():
        e = Engine(config=cfg)
        e.load_state(state)
        result = forget(e, samples=samples, method=method, reference=False, progress=False, **options)
        rows[row] = _row(result, "unlearned", "unlearn")
        if row == "retrain":
            rows["trained"] = _row(result, "trained", None)
        if row == "ease":
            after_ease = e.state()
        if row in ("ease", "retrain"):
            drift[row] = continued(e)
    e = Engine(config=cfg)
    e.exclude(samples=samples)
    e.load_state(after_ease)
    e.lock = None
    rows["ease_no_lock"], drift["ease_no_lock"] = rows["ease"], continued(e)
    return {"topology": kind, "seed": seed, "forgotten": {int(j): len(idx) for j, idx in samples.items()}, "rows": rows, "drift": drift, "seconds": time.perf_counter() - start}


def table(cells: list[dict], kind: str) -> str:
    mine = [c for c in cells if c["topology"] == kind]
    lines = ["| method | forget R@1 (FA) | retain R@1 (RA) | test R@1 (TA) | MIA | seconds | GFLOPs | Comm MB | "
             "FLOPs / Retrain's |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        col = lambda k: [c["rows"][name].get(k) for c in mine]  # noqa: E731
        ratio = [c["rows"][name]["GFLOPs"] / c["rows"]["retrain"]["GFLOPs"] if c["rows"][name]["GFLOPs"] else None
                 for c in mine]
        lines.append(f"| {LABELS[name]} | " + " | ".join(mean_std(col(k), 2 if k == "GFLOPs" else 1)
                                                         for k in ("FA", "RA", "TA", "MIA", "seconds", "GFLOPs", "comm_MB"))
                     + f" | {mean_std(ratio, 3)} |")
    return "\n".join(lines)


def drift_table(cells: list[dict]) -> str:
    lines = ["| topology | forget R@1 after EASE (with lock) -> after 20 rounds | without lock | Retrain |", "|---|---|---|---|"]
    for kind in sorted({c["topology"] for c in cells}):
        mine = [c for c in cells if c["topology"] == kind]
        part = []
        for name in ("ease", "ease_no_lock", "retrain"):
            first, last = [c["drift"][name][0] for c in mine], [c["drift"][name][-1] for c in mine]
            part.append(f"{mean_std(first)} -> {mean_std(last)}")
        lines.append(f"| {kind} | " + " | ".join(part) + " |")
    return "\n".join(lines)


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of per-seed differences (each seed's method minus its Retrain),
    as :func:`p2pforget.stats.mean_ci`.

    >>> [round(x, 2) for x in paired_interval([1.0, 2.0, 3.0])]
    [-0.48, 4.48]
    """
    from p2pforget.stats import mean_ci

    _, lo, hi = mean_ci(diffs, level=level)
    return lo, hi


def checks(cells: list[dict], kind: str, seeds: list[int]) -> list[str]:
    """The acceptance checks on the seed means of ``seeds``. Compute is Retrain's FLOPs share (a
    count, the same on every run); the seconds share is printed beside it: it moves by several
    hundredths between runs of the very same cells on a shared 2-core machine."""
    mine = [c for c in cells if c["topology"] == kind and c["seed"] in seeds]
    diffs = [c["rows"]["ease"]["FA"] - c["rows"]["retrain"]["FA"] for c in mine]
    low, high = paired_interval(diffs)
    mean = lambda name, k: float(np.mean([c["rows"][name][k] for c in mine]))  # noqa: E731
    flops = float(np.mean([c["rows"]["ease"]["GFLOPs"] / c["rows"]["retrain"]["GFLOPs"] for c in mine]))
    seconds = float(np.mean([c["rows"]["ease"]["seconds"] / c["rows"]["retrain"]["seconds"] for c in mine]))
    drift_lock = float(np.mean([c["drift"]["ease"][-1] - c["drift"]["retrain"][-1] for c in mine]))
    drift_free = float(np.mean([c["drift"]["ease_no_lock"][-1] - c["drift"]["retrain"][-1] for c in mine]))
    out = [
        (f"|FA - FA_Retrain| = {abs(np.mean(diffs)):.2f} <= 3 (per seed {', '.join(f'{d:+.1f}' for d in diffs)}; "
         f"95% interval of the mean difference [{low:+.1f}, {high:+.1f}])", abs(np.mean(diffs)) <= 3),
        (f"RA_Retrain - RA = {mean('retrain', 'RA') - mean('ease', 'RA'):+.2f} <= 6", mean("retrain", "RA") - mean("ease", "RA") <= 6),
        (f"FLOPs / Retrain's = {flops:.3f} <= 0.2 (seconds / Retrain's {seconds:.3f})", flops <= 0.2),
        (f"after {DRIFT} more rounds, forget R@1 - Retrain's: {drift_lock:+.2f} with the lock, {drift_free:+.2f} without",
         abs(drift_lock) <= abs(drift_free)),
    ]
    return calibration.verdicts(out)


def plot(cells: list[dict], path: Path) -> None:
    def draw(ax, mine: list[dict]) -> None:
        for name, label in (("ease", "EASE with Forget Lock"), ("ease_no_lock", "EASE without lock"), ("retrain", "Retrain")):
            calibration.band(ax, [c["drift"][name] for c in mine], label=label)

    calibration.plot_per_topology(cells, path, draw, title="forget R@1 during continued training",
                                  xlabel="federated rounds after the request", ylabel="forget R@1 (%)")


def seed_list(text: str) -> list[int]:
    """Seeds from ``"0-5,8"``-style text.

    >>> seed_list("0-2,6")
    [0, 1, 2, 6]
    """
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def seed_label(seeds: list[int]) -> str:
    """``[0, 1, 2, 6]`` -> ``"0–2, 6"``.

    >>> seed_label([0, 1, 2, 6, 8, 9])
    '0–2, 6, 8, 9'
    """
    runs: list[list[int]] = []
    for s in sorted(seeds):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="e.g. 0,1,2 or 0-5")
    p.add_argument("--acceptance-seeds", default="0,1,2",
                   help="the seeds the acceptance checks are judged on (e.g. 0-11)")
    p.add_argument("--also-check", default="",
                   help="further seed groups to print the checks for, separated by ';' (e.g. '0-2;6-11')")
    p.add_argument("--topologies", default="star,ring")
    p.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    p.add_argument("--pretrain-steps", type=int, default=800)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "ease_class.md"))
    p.add_argument("--from-json", help="rewrite the page from the ease_cells.json of earlier runs, comma-separated "
                                       "(no training; their cells are pooled)")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        cells, runs = [], []
        for path in args.from_json.split(","):
            saved = json.loads(Path(path).read_text())
            cells += saved["cells"]
            runs += ([(r["seeds"], r["wall_seconds"], r["pretrain_seconds"]) for r in saved["runs"]] if "runs" in saved
                     else [(sorted({c["seed"] for c in saved["cells"]}), saved["wall_seconds"], saved["pretrain_seconds"])])
        pooled = out.with_name(f"{out.stem}_cells.json")
        if len(runs) > 1:
            pooled.write_text(json.dumps({"cells": cells, "runs": [{"seeds": s, "wall_seconds": w, "pretrain_seconds": b}
                                                                   for s, w, b in runs]}, indent=1))
    else:
        start = time.perf_counter()
        checkpoint = out.with_name(f"{out.stem}_tiny_backbone.pt")
        import torch

        # One thread whatever --jobs says: a CPU matmul's summation order depends on the thread
        # count, so the backbone (and every number after it) would depend on how the table was run.
        torch.set_num_threads(1)
        pretrain(checkpoint, steps=args.pretrain_steps)
        pretrain_seconds = time.perf_counter() - start
        jobs = [(k, s, str(checkpoint)) for k in args.topologies.split(",") for s in seed_list(args.seeds)]
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            cells = pool.map(one_cell, jobs, chunksize=1)
        checkpoint.unlink()
        wall = time.perf_counter() - start
        runs = [(seed_list(args.seeds), wall, pretrain_seconds)]
        out.with_name(f"{out.stem}_cells.json").write_text(json.dumps({"cells": cells, "wall_seconds": wall,
                                                               "pretrain_seconds": pretrain_seconds}, indent=1))
    plot(cells, out.with_name(f"{out.stem}_drift.png"))
    seeds = sorted({c["seed"] for c in cells})
    judged = [s for s in seed_list(args.acceptance_seeds) if s in seeds]
    groups = [(f"judged: seeds {seed_label(judged)}", judged)] if judged else []
    for text in filter(None, args.also_check.split(";")):
        group = [s for s in seed_list(text) if s in seeds]
        groups += [(f"seeds {seed_label(group)}", group)] if group else []
    if all(set(g) != set(seeds) for _, g in groups):
        groups.append((f"all {len(seeds)} seeds", seeds))
    made = "; ".join(f"seeds {seed_label(s)} in {w / 60:.1f} min (backbone pretraining {b:.0f} s)" for s, w, b in runs)
    text = [
        "# EASE on synthetic captions with a tiny CLIP",
        "",
        f"Produced by `python benchmarks/ease_table.py --seeds SEEDS --topologies {args.topologies} --jobs {args.jobs}` "
        f"on 2 CPU cores ({args.jobs} processes, one thread each), {len(runs)} run{'s' if len(runs) > 1 else ''}: {made}.",
        "",
        f"Setup: tiny open_clip CLIP (`p2pforget/configs/clip/tiny.json`), backbone pretrained centrally for {args.pretrain_steps} "
        "AdamW steps on the non-purple pairs among 3,000 synthetic pairs of another seed and loaded from a local checkpoint; LoRA adapters (rank 4) and the "
        f"temperature trained federatedly on `captions_synth` (10 clients, 60 pairs each, spread iid; 2 local SGD steps, lr 0.5) "
        f"for {ROUNDS} rounds; every purple pair (a colour the backbone never saw; about 12 per client) is forgotten by every method "
        "from the same trained state (a class-level request), so only the forgotten pairs ever taught purple. R@1 = mean of image->text "
        "and text->image R@1 in percent, each pair retrieved among its own image or captions and the 100 test pairs' (5 captions "
        "each; a caption with the same words as one of the image's own counts as a hit); mean ± std over seeds "
        f"{seed_label(seeds)}; cost excludes evaluation for every method alike.",
        "",
    ]
    for kind in args.topologies.split(","):
        text += [f"## {kind}", "", table(cells, kind), ""]
        for label, group in groups:
            text += [f"Acceptance checks ({label}; means):", "", *checks(cells, kind, group), ""]
    text += ["## Drift: continued federated training after the request", "", drift_table(cells), "",
             f"![forget R@1 during continued training]({out.stem}_drift.png)", ""]
    out.write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

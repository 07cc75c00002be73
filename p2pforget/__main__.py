"""Command line: ``p2pforget {run,demo,topologies,report}`` (also ``python -m p2pforget``)."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from importlib import resources
from pathlib import Path

from . import config as config_mod
from .registry import TOPOLOGIES


PLUGINS_HELP = ("plug-in modules to import for a run that names them in run.plugins (comma-separated; a run directory "
                "is data, so its own list is never imported)")


def demo_config() -> config_mod.Config:
    return config_mod.loads(resources.files("p2pforget").joinpath("configs/demo.toml").read_text())


def _load(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    cfg = config_mod.with_overrides(cfg, args.set or [])
    if getattr(args, "out", None):
        cfg = config_mod.replace(cfg, run={"out": args.out})
    return config_mod.resolve_paths(cfg, base=Path(args.config).parent)


def cmd_run(args: argparse.Namespace) -> int:
    from . import experiment

    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ValueError(f"--resume {args.resume} continues the run in that directory; drop --out {args.out} "
                         "(a resumed run cannot move)")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it; give one of them")
    if args.resume_or_start and (args.resume or args.overwrite):
        raise ValueError("--resume-or-start decides by itself whether to resume; drop --resume / --overwrite")
    cfg = _load(args)
    out = args.resume or cfg.run.out
    resume = bool(args.resume)
    if args.resume_or_start:
        from .transport import at_launch_root

        resume = at_launch_root(lambda: experiment.run_state(out)) != "missing"
    if resume:
        cfg = config_mod.replace(cfg, run={"out": str(out)})
    try:
        result = experiment.run(cfg, out=out, resume=resume, overwrite=args.overwrite,
                                stop_on_signal=args.resume_or_start, progress=True)
    except experiment.Preempted as e:
        print(f"p2pforget: {e}", file=sys.stderr)
        return experiment.PREEMPTED_EXIT
    if result.report:
        _print_final(result.report, result.out)
        if "unlearn" in result.report:
            print(forget_table(result.report))
    return 0


def _print_final(report: dict, out: Path) -> None:
    from .report import table

    f = report["final"]
    # the training's rounds: a forget request's own rounds (a method's, Retrain's) are not training
    trained = min(report["rounds_done"], report["config"]["run"]["rounds"])
    print(table(["rounds", "loss", "test acc (mean of nodes)", "test acc (min)", "test acc of mean model", "consensus",
                 "comm MB", "seconds"],
                [[trained, f["loss_mean"], f["test_acc_mean"], f["test_acc_min"], f.get("test_acc_of_mean"),
                  f["consensus_distance"], report["bytes_total"] / 1e6, report["seconds"]]]))
    print(_files(out))


def _files(out: Path, verb: str = "run files") -> str:
    """Where the run's files are: the private record and, once a request released models, the
    published release/ folder."""
    out = Path(out)
    parts = [f"{out}/{name}" for name in ("history.h5", "report.json") if (out / name).exists()]
    text = f"{verb}: " + (", ".join(parts) + " (private record)" if parts else "no private record (run.keep_private = false)")
    if (out / "release" / "release.json").exists():
        text += f"; published: {out}/release/ (models.h5, release.json)"
    return text


def status_line(status: dict) -> str:
    """How the method ended (docs/methods/stopping.md), in one line."""
    ok = "stopped by the FA-plateau rule" if status.get("checks") else "one release"
    what = {"ok": ok, "budget_exhausted": "ran its whole round budget",
            "rolled_back": "FLAGGED: the collapse guard tripped and the models were rolled back",
            "collapsed": "FLAGGED: the released models fail the collapse guard"}.get(status["status"], status["status"])
    text = f"status: {status['status']} ({what})"
    if status.get("checks"):
        text += f"; {status['checks']} checks"
    if status.get("validation_start") is not None and status.get("validation_final") is not None:
        text += f"; validation accuracy {status['validation_start']:.1f} -> {status['validation_final']:.1f}"
    if status.get("retained_start") is not None and status.get("retained_final") is not None:
        text += f"; retained accuracy {status['retained_start']:.1f} -> {status['retained_final']:.1f}"
    return text


def forget_table(report: dict) -> str:
    """One row per model: method | FA | RA | TA | MIA | distance to Retrain | seconds | comm MB | GFLOPs | T2F;
    the certificate below it when the method issued one."""
    from .report import table

    m, cost, info = report["metrics"], report["cost"], report["unlearn"]
    status = report.get("status", {"status": "ok", "flagged": False})
    # A rolled-back or collapsed result is never printed as a normal row.
    method_name = info["method"].capitalize() + (f" [FLAGGED: {status['status']}]" if status.get("flagged") else "")
    rows = []
    asr = any("ASR" in m[k] for k in m)  # a poisoned client: its attack success rate too
    for key, name, c in [("trained", "Trained (before)", None), ("retrained", "Retrain", cost.get("retrain")),
                         ("unlearned", method_name, cost["unlearn"])]:
        if key not in m:
            continue
        r = m[key]
        fa = r["FA"]["mean"] if r.get("FA") else float("nan")
        t2f = r.get("T2F_rounds")
        rows.append([name, fa, r["RA"]["mean"], r["TA"]["mean"], r.get("MIA", float("nan"))]
                    + ([r["ASR"]["mean"] if r.get("ASR") else float("nan")] if asr else [])
                    + [r.get("distance_to_retrain", float("nan")),
                       c["seconds"] if c else "", c["comm_bytes"] / 1e6 if c else "", c["flops"] / 1e9 if c else "",
                       "" if c is None else ("-" if t2f is None else t2f)])
    text = table(["method", "FA", "RA", "TA", "MIA"] + (["ASR"] if asr else [])
                 + ["dist. to Retrain", "seconds", "comm MB", "GFLOPs", "T2F rounds"], rows)
    text += "\n" + status_line(status)
    if "sigma" in info and not info["certified"]:
        # no certificate line for a release that is not certified (e.g. a non-convex model)
        text += f"\nno certificate: {info.get('not_certified_because') or 'the bound does not hold'}"
        if info["sigma"]:
            text += f"\n(the release still carries the configured noise, sigma={info['sigma']:.3g}; it certifies nothing here)"
    elif "sigma" in info:
        text += (f"\ncertificate: epsilon={info['epsilon']}, delta={info['delta']}, sigma={info['sigma']:.3g} "
                 f"(budget {info['budget']:.3g}), residual bound={info['residual_bound']:.3g}, "
                 f"Newton steps={info.get('newton_steps_taken')}, certified={info['certified']}")
        if info.get("fallback") == "exact":
            text += ("\nthe bound stayed above the budget: exact Newton steps followed until it held "
                     "(fallback, charged to unlearning)")
        if info.get("cumulative_epsilon") is not None and len(report.get("requests", [])) > 1:
            text += f"\nall certified releases of this run: epsilon={info['cumulative_epsilon']:.3g}, delta={info['cumulative_delta']:.3g}"
    else:
        text += f"\n{info['method']} issues no certificate"
    if "distance_to_remaining_optimum" in m.get("unlearned", {}):
        d = {k: m[k].get("distance_to_remaining_optimum") for k in ("trained", "retrained", "unlearned")}
        text += (f"\ndistance to the remaining optimum (max over nodes): trained {d['trained']:.3g}, Retrain "
                 f"{d['retrained']:.3g}, unlearned {m['unlearned']['distance_to_remaining_optimum_noiseless']:.3g} "
                 f"(released: {d['unlearned']:.3g})")
        rounds, seconds = m["retrained"].get("equal_quality_rounds"), m["retrained"].get("equal_quality_seconds")
        text += ("\nRetrain at equal quality: " + (f"{rounds} rounds, {seconds:.3g} s" if rounds is not None else
                                                    "not reached within the training rounds"))
    if report.get("audit"):
        text += "\n" + audit_table(report["audit"])
    return text


def _parse_samples(items: list[str]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for item in items:
        client, sep, idx = item.partition(":")
        try:
            out[int(client)] = [int(i) for i in idx.split(",") if i.strip()]
        except ValueError:
            raise ValueError(f"--samples {item!r} must look like CLIENT:I,J,K, e.g. 3:0,5,7") from None
        if not sep:
            raise ValueError(f"--samples {item!r} must look like CLIENT:I,J,K, e.g. 3:0,5,7")
    return out


def _plugins(args: argparse.Namespace) -> tuple[str, ...]:
    """The plug-in modules the user trusts for a stored run (``--plugins a.py,pkg.mod``)."""
    return tuple(p.strip() for p in (args.plugins or "").split(",") if p.strip())


def cmd_forget(args: argparse.Namespace) -> int:
    from . import experiment

    report = experiment.forget_run(args.run_dir, clients=args.clients or (), samples=_parse_samples(args.samples or []),
                                   overrides=args.set or [], reference=not args.no_retrain, plugins=_plugins(args),
                                   progress=True)
    if report:
        print(forget_table(report))
        print(_files(args.run_dir, "updated"))
    return 0


def audit_table(result: dict) -> str:
    """The audit as a small text table: MIA with its CI and gap to Retrain, LiRA, relearning."""
    lines = [f"audit: {result['n_forgotten']} forgotten vs {result['n_heldout']} held-out samples "
             f"(bootstrap {result['bootstrap']}, {result['shadow_models']} shadow models)",
             f"{'model':<11}{'MIA AUC [95% CI]':>24}{'gap to Retrain [95% CI]':>30}{'LiRA AUC':>10}{'TPR@1%FPR':>11}"
             f"{'relearn steps':>15}"]
    for name, mia in result["mia"].items():
        gap = mia.get("gap")
        gap_text = f"{gap['mean']:+.1f} [{gap['ci'][0]:+.1f}, {gap['ci'][1]:+.1f}]" if gap else "-"
        lira = result.get("lira", {}).get(name)
        relearn = result.get("relearn", {}).get(name)
        if relearn is None:
            steps = "-"
        else:  # never recovered within the budget of steps: "> budget"
            steps = relearn["steps_to_recover"] if relearn["steps_to_recover"] is not None else f">{result['relearn']['steps']}"
        mia_text = f"{mia['mean']:.1f} [{mia['ci'][0]:.1f}, {mia['ci'][1]:.1f}]"
        lira_text = f"{lira['auc']:>10.1f}{lira['tpr_at_1pct_fpr']:>11.3f}" if lira else f"{'-':>10}{'-':>11}"
        lines.append(f"{name:<11}{mia_text:>24}{gap_text:>30}{lira_text}{steps:>15}")
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    from . import experiment

    result = experiment.audit_run(args.run_dir, overrides=args.set or [], plugins=_plugins(args))
    print(audit_table(result))
    print(_files(args.run_dir, "updated"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """One node's model of a run as a ``state_dict`` file (its parameters and running
    statistics), loadable into the run's ``nn.Module`` (``p2pforget.models.build``)."""
    import torch

    from . import experiment

    engine, _ = experiment.load_run(args.run_dir, plugins=_plugins(args))
    state = {k: v.detach().contiguous().clone() for k, v in engine.node_module(args.node).state_dict().items()}
    out = Path(args.out or Path(args.run_dir) / f"node{args.node}.{'safetensors' if args.format == 'safetensors' else 'pt'}")
    if args.format == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ValueError("--format safetensors needs the safetensors package: pip install safetensors "
                             "(or use --format pt)") from None
        save_file(state, str(out), metadata={"p2pforget_run": str(args.run_dir), "node": str(args.node)})
    else:
        torch.save(state, out)
    print(f"node {args.node} of {args.run_dir} (round {engine.round}): {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import experiment, report

    cfg = demo_config()
    cfg = config_mod.with_overrides(cfg, args.set or [])
    out = Path(args.out or cfg.run.out)
    t, u = cfg.topology, cfg.unlearn
    o = u.options()
    print(f"p2pforget demo: {t.n_clients} clients on a {t.kind}, {cfg.data.kind} data ({cfg.data.partition} split), "
          f"{cfg.model.kind} model, {cfg.train.algorithm}, {cfg.run.rounds} rounds; then forget client(s) "
          f"{list(u.clients)} with {u.method} unlearning (epsilon={o.epsilon}, delta={o.delta}) next to Retrain")
    result = experiment.run(cfg, out=out, overwrite=args.overwrite, progress=True)
    m = result.engine.metrics
    at = {r: k for k, r in enumerate(m["round"])}
    step = max(1, cfg.run.rounds // 6)
    rows = [[r, m["loss_mean"][at[r]], m["test_acc_mean"][at[r]], m["test_acc_min"][at[r]], m["consensus_distance"][at[r]],
             sum(m["bytes_sent"][:r]) / 1e6]
            for r in sorted({1, *range(step, cfg.run.rounds + 1, step), cfg.run.rounds}) if r in at]
    print(report.table(["round", "loss", "test acc (mean)", "test acc (min)", "consensus", "comm MB"], rows))
    if "unlearn" in result.report:
        print()
        print(forget_table(result.report))
    pngs = report.report_run(out) + [report.plot_graph(result.engine.graph, out / "topology.png", title=f"{t.kind}, n={t.n_clients}")]
    print(f"{_files(out)}; plots: {', '.join(str(p) for p in pngs)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import default_grid, grid

    cfg = _load(args)
    out = Path(args.out or f"{cfg.run.out}-compare")
    split = (lambda text: [v.strip() for v in text.split(",") if v.strip()])  # noqa: E731
    spec = default_grid(cfg, split(args.topologies), methods=split(args.methods) if args.methods else None,
                        seeds=[int(s) for s in split(args.seeds)] if args.seeds else None)
    if args.count_tasks:
        print(len(spec.groups))  # the array size: one task per topology x seed
        return 0
    rows = grid(cfg, spec, out=out, task=args.task, merge_only=args.merge, progress=True, overwrite=args.overwrite)
    if rows is not None:
        print((out / "compare.md").read_text())
        print(f"results: {out}/compare.csv, {out}/compare.md" + (f", {out}/timing.csv" if spec.methods else "")
              + f"; runs in {out}/runs/; figures in {out}/")
    elif args.task is not None:
        print(f"group {args.task} of {len(spec.groups)} done; merge with --merge once every group is")
    return 0


def cmd_topologies(args: argparse.Namespace) -> int:
    from . import topology

    if args.action is None:
        for kind in TOPOLOGIES.names():
            print(f"{kind:15s} {TOPOLOGIES.entry(kind).help}")
        print("\n`p2pforget topologies show KIND --n N` prints statistics and draws the graph.")
        return 0
    if args.kind is None:
        raise ValueError(f"`topologies show` needs a kind; choose one of: {', '.join(TOPOLOGIES.names())}")
    g = topology.build_graph(args.kind, args.n, seed=args.seed, p=args.p, k=args.k, beta=args.beta,
                             degree=args.degree, path=args.path)
    W = topology.mixing_matrix(g)
    s = topology.stats(g, W)
    for k, v in vars(s).items():
        print(f"{k:15s} {v:.4g}" if isinstance(v, float) else f"{k:15s} {v}")
    from .report import plot_graph

    png = plot_graph(g, args.png or f"topology_{args.kind}_{args.n}.png", title=f"{args.kind}, n={args.n}")
    print(f"drawing: {png}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report_run

    formats = tuple(f.strip().lower() for f in args.format.split(",") if f.strip())
    unknown = [f for f in formats if f not in ("png", "pdf", "svg")]
    if unknown or not formats:
        print(f"p2pforget report: --format {args.format!r}: choose among png, pdf, svg (comma-separated)", file=sys.stderr)
        return 2
    for p in report_run(args.run_dir, formats=formats):
        for fmt in formats:
            print(p.with_suffix(f".{fmt}"))
    return 0


def registry_help() -> str:
    """What each registry holds (built-ins and loaded plug-ins), for the CLI's help text."""
    from .registry import ALL

    return "\n".join(f"{reg.key} choices:\n{reg.help()}" for reg in ALL.values()) + \
        "\n\nregister more from a module listed in run.plugins (see the README)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2pforget", description="Decentralized federated learning and unlearning simulator")
    p.add_argument("--quiet", action="store_true", help="no progress bars (as TQDM_DISABLE=1 does), e.g. for batch-job logs")
    sub = p.add_subparsers(dest="command", required=True)
    listing = {"epilog": registry_help(), "formatter_class": argparse.RawDescriptionHelpFormatter}

    r = sub.add_parser("run", help="run one experiment from a TOML config", **listing)
    r.add_argument("config", help="experiment .toml file")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    r.add_argument("--out", help="run directory (default: run.out)")
    r.add_argument("--resume", metavar="DIR", help="continue the run in DIR (interrupted, or to train more rounds)")
    r.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    r.add_argument("--resume-or-start", action="store_true",
                   help="continue the run in the output directory if there is one, else start it (idempotent: a "
                        "requeued batch job runs the same command); SIGTERM/SIGUSR1 checkpoint and exit with "
                        "status 75")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("compare", help="the same experiment (and forget request) on several topologies, methods and "
                                       "seeds: tables and plots", **listing)
    c.add_argument("config", help="experiment .toml file")
    c.add_argument("--topologies", default="ring,torus,star,erdos_renyi,small_world",
                   help="comma-separated topology kinds (default: %(default)s)")
    c.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    c.add_argument("--out", help="directory for the runs (default: run.out + '-compare')")
    c.add_argument("--overwrite", action="store_true", help="replace a grid already in the output directory "
                                                             "(by default its finished parts are kept)")
    c.add_argument("--methods", help="comma-separated unlearning methods (e.g. retrain,certified,finetune,sfron; "
                                     "default: unlearn.method and retrain, with a forget request)")
    c.add_argument("--seeds", help="comma-separated seeds of the grid (default: run.seed)")
    c.add_argument("--task", type=int, help="run only group TASK (topology x seed, numbered topology-major): one "
                                            "array task, e.g. --task $SLURM_ARRAY_TASK_ID")
    c.add_argument("--count-tasks", action="store_true", help="print how many array tasks (--task) the grid has, and exit")
    c.add_argument("--merge", action="store_true", help="only merge the finished cells into compare.csv, the table and figures")
    c.set_defaults(fn=cmd_compare)

    d = sub.add_parser("demo", help="a small complete experiment (under a minute on a laptop)")
    d.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a demo config key")
    d.add_argument("--out", help="run directory (default: runs/demo)")
    d.add_argument("--overwrite", action="store_true", help="replace a run already in the output directory")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("topologies", help="list topologies, or show one's statistics and drawing")
    t.add_argument("action", nargs="?", choices=["show"])
    t.add_argument("kind", nargs="?", choices=list(TOPOLOGIES.names()))
    t.add_argument("--n", type=int, default=16, help="number of clients")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--p", type=float, default=0.3)
    t.add_argument("--k", type=int, default=4)
    t.add_argument("--beta", type=float, default=0.2)
    t.add_argument("--degree", type=int, default=3)
    t.add_argument("--path", default="")
    t.add_argument("--png", help="where to write the drawing")
    t.set_defaults(fn=cmd_topologies)

    f = sub.add_parser("forget", help="forget clients or samples in a finished run, next to Retrain", **listing)
    f.add_argument("run_dir")
    f.add_argument("--clients", type=int, nargs="+", metavar="ID", help="clients to forget entirely")
    f.add_argument("--samples", nargs="+", metavar="CLIENT:I,J", help="samples to forget, e.g. 3:0,5,7")
    f.add_argument("--set", action="append", metavar="unlearn.KEY=VALUE",
                   help="override an [unlearn] key, e.g. unlearn.method=foul or unlearn.certified.epsilon=0.5, "
                        "or a moved file: data.path, topology.path, topology.mixing_path")
    f.add_argument("--no-retrain", action="store_true", help="skip the Retrain reference")
    f.add_argument("--plugins", metavar="A,B", help=PLUGINS_HELP)
    f.set_defaults(fn=cmd_forget)

    a = sub.add_parser("audit", help="membership and relearning attacks on a run's latest forget request")
    a.add_argument("run_dir")
    a.add_argument("--set", action="append", metavar="audit.KEY=VALUE", help="override an [audit] key, e.g. audit.shadow_models=8")
    a.add_argument("--plugins", metavar="A,B", help=PLUGINS_HELP)
    a.set_defaults(fn=cmd_audit)

    x = sub.add_parser("export", help="one node's model of a run as a state_dict file (pt or safetensors)")
    x.add_argument("run_dir")
    x.add_argument("--node", type=int, required=True, help="the client id whose model to export")
    x.add_argument("--format", choices=["pt", "safetensors"], default="pt", help="file format (default pt)")
    x.add_argument("--out", help="output file (default RUN_DIR/node<I>.<format>)")
    x.add_argument("--plugins", metavar="A,B", help=PLUGINS_HELP)
    x.set_defaults(fn=cmd_export)

    rep = sub.add_parser("report", help="plots of a run directory (PNG, or --format png,pdf,svg)")
    rep.add_argument("run_dir")
    rep.add_argument("--format", default="png", help="comma-separated figure formats, e.g. png,pdf,svg (default png)")
    rep.set_defaults(fn=cmd_report)
    return p


def _mpi_running() -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def _abort_other_ranks(code: int) -> None:
    """Under MPI, one rank's failure must end the whole job: the other ranks would otherwise
    wait forever in the next collective call."""
    if _mpi_running() and sys.modules["mpi4py.MPI"].COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)


def _close_progress_bars() -> None:
    """End any progress bar's line, so that an error starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        bar.close()


OFF_ROOT_ERROR_DELAY = 3.0
"""Seconds a rank other than 0 waits, once MPI runs, before printing its error: every rank usually
meets the same error (a file, a collective check), and the root's report aborts the job first; an
error of that rank alone is still printed, named by its rank. Before MPI starts (the command line,
the config) every rank reads the same input, so only the root prints."""


def main(argv: list[str] | None = None) -> int:
    from .transport import launched_rank

    args = parser().parse_args(argv)
    before = os.environ.get("TQDM_DISABLE")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    rank = launched_rank()
    try:
        with warnings.catch_warnings():
            if rank != 0:  # every rank would warn alike: the root speaks for the job
                warnings.simplefilter("ignore")
            return args.fn(args)
    except (ValueError, OSError) as e:
        message = str(e) if not isinstance(e, OSError) or not e.strerror else f"{e.strerror}: {e.filename or ''}".rstrip(": ")
        if not getattr(e, "reported_by_root", False):
            _close_progress_bars()
            if rank != 0 and _mpi_running():
                time.sleep(OFF_ROOT_ERROR_DELAY)
            if rank == 0 or _mpi_running():
                where = f"rank {rank}: " if rank != 0 else ""
                text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
                print(f"p2pforget: error: {where}{text}", file=sys.stderr)
        _abort_other_ranks(2)
        return 2
    except KeyboardInterrupt:
        print("p2pforget: interrupted", file=sys.stderr)
        _abort_other_ranks(130)
        return 130
    except BaseException:
        traceback.print_exc()
        _abort_other_ranks(1)
        raise
    finally:
        if args.quiet:  # the caller's environment as it was (main may be called in-process)
            if before is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = before


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``p2pforget {run,demo,topologies,report}`` (also ``python -m p2pforget``)."""
from __future__ import annotations

import argparse
import sys
import traceback
from importlib import resources
from pathlib import Path

from . import config as config_mod

TOPOLOGY_HELP = {
    "ring": "cycle: each client talks to two neighbours",
    "torus": "2-D periodic grid (n_clients = r*c, r, c >= 3)",
    "star": "centralized FL: n_clients plus a server hub (FedAvg rounds)",
    "complete": "every pair of clients connected",
    "erdos_renyi": "G(n, p) random graph (seeded; must be connected)",
    "small_world": "Watts-Strogatz ring lattice with k neighbours, rewired with prob. beta",
    "random_regular": "random graph where every client has `degree` neighbours",
    "file": "edge list or GraphML file at topology.path (see topologies/)",
}


def demo_config() -> config_mod.Config:
    return config_mod.loads(resources.files("p2pforget").joinpath("configs/demo.toml").read_text())


def _load(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    cfg = config_mod.with_overrides(cfg, args.set or [])
    if getattr(args, "out", None):
        cfg = config_mod.replace(cfg, run={"out": args.out})
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from . import experiment

    cfg = _load(args)
    out = args.resume or cfg.run.out
    result = experiment.run(cfg, out=out, resume=bool(args.resume))
    if result.report:
        _print_final(result.report, result.out)
    return 0


def _print_final(report: dict, out: Path) -> None:
    from .report import table

    f = report["final"]
    print(table(["rounds", "loss", "test acc (mean)", "test acc (min)", "consensus", "comm MB", "seconds"],
                [[report["rounds_done"], f["loss_mean"], f["test_acc_mean"], f["test_acc_min"],
                  f["consensus_distance"], report["bytes_total"] / 1e6, report["seconds"]]]))
    print(f"run files: {out}/history.h5, {out}/report.json")


def cmd_demo(args: argparse.Namespace) -> int:
    from . import experiment, report

    cfg = demo_config()
    cfg = config_mod.with_overrides(cfg, args.set or [])
    out = Path(args.out or cfg.run.out)
    t = cfg.topology
    print(f"p2pforget demo: {t.n_clients} clients on a {t.kind}, {cfg.data.kind} data ({cfg.data.partition} split), "
          f"{cfg.model.kind} model, {cfg.train.algorithm}, {cfg.run.rounds} rounds")
    result = experiment.run(cfg, out=out)
    m = result.engine.metrics
    rows = [[r, m["loss_mean"][r - 1], m["test_acc_mean"][r - 1], m["test_acc_min"][r - 1], m["consensus_distance"][r - 1],
             sum(m["bytes_sent"][:r]) / 1e6]
            for r in sorted({1, *range(10, cfg.run.rounds + 1, 10), cfg.run.rounds}) if r <= len(m["loss_mean"])]
    print(report.table(["round", "loss", "test acc (mean)", "test acc (min)", "consensus", "comm MB"], rows))
    pngs = report.report_run(out) + [report.plot_graph(result.engine.graph, out / "topology.png", title=f"{t.kind}, n={t.n_clients}")]
    print(f"run files: {out}/history.h5, {out}/report.json; plots: {', '.join(str(p) for p in pngs)}")
    return 0


def cmd_topologies(args: argparse.Namespace) -> int:
    from . import topology

    if args.action is None:
        for kind, text in TOPOLOGY_HELP.items():
            print(f"{kind:15s} {text}")
        print("\n`p2pforget topologies show KIND --n N` prints statistics and draws the graph.")
        return 0
    if args.kind is None:
        raise ValueError(f"`topologies show` needs a kind; choose one of: {', '.join(TOPOLOGY_HELP)}")
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

    for p in report_run(args.run_dir):
        print(p)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2pforget", description="Decentralized federated learning and unlearning simulator")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run one experiment from a TOML config")
    r.add_argument("config", help="experiment .toml file")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    r.add_argument("--out", help="run directory (default: run.out)")
    r.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="a small complete experiment (under a minute on a laptop)")
    d.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a demo config key")
    d.add_argument("--out", help="run directory (default: runs/demo)")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("topologies", help="list topologies, or show one's statistics and drawing")
    t.add_argument("action", nargs="?", choices=["show"])
    t.add_argument("kind", nargs="?", choices=list(TOPOLOGY_HELP))
    t.add_argument("--n", type=int, default=16, help="number of clients")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--p", type=float, default=0.3)
    t.add_argument("--k", type=int, default=4)
    t.add_argument("--beta", type=float, default=0.2)
    t.add_argument("--degree", type=int, default=3)
    t.add_argument("--path", default="")
    t.add_argument("--png", help="where to write the drawing")
    t.set_defaults(fn=cmd_topologies)

    rep = sub.add_parser("report", help="PNG plots of a run directory")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=cmd_report)
    return p


def _abort_other_ranks(code: int) -> None:
    """Under MPI, one rank's failure must end the whole job: the other ranks would otherwise
    wait forever in the next collective call."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        mpi.COMM_WORLD.Abort(code)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"p2pforget: error: {e}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())

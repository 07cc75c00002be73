"""One run per topology with the same config and seed, then a comparison table and plot.

    .venv/bin/python launch/sweep_topologies.py examples/experiment.toml --topologies ring,torus,star,erdos_renyi,small_world
    mpirun -n 4 .venv/bin/python -m mpi4py launch/sweep_topologies.py examples/experiment.toml   # each run over 4 ranks

The same as `p2pforget compare`; runs go to OUT/runs/<topology>-s<seed>/ (OUT defaults to
runs/sweep), the tables to OUT/compare.md and OUT/compare.csv, the plot to OUT/comparison.png. With
an [unlearn] request every topology also runs the config's method and Retrain from its trained
state, and the tables add the unlearning columns.
"""
from __future__ import annotations

import sys

from p2pforget.__main__ import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "runs/sweep"]
    sys.exit(main(["compare", *args]))

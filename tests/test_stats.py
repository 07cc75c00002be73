"""Paired intervals and equivalence verdicts, against scipy and by hand."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from p2pforget import compare, stats


def test_mean_ci_matches_scipys_t_interval():
    x = np.array([1.2, -0.4, 2.5, 0.3, 1.9, -1.1])
    m, lo, hi = stats.mean_ci(x, level=0.90)
    want = sps.t.interval(0.90, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert m == pytest.approx(x.mean()) and (lo, hi) == pytest.approx(want, rel=1e-12)
    assert math.isnan(stats.mean_ci([3.0])[1])


@pytest.mark.parametrize("method, trained, verdict", [
    ([0.5, -1.0, 0.0, 1.0, -0.5], [10.0, 12.0, 9.0, 11.0, 10.0], "pass"),
    ([8.0, 9.0, 7.5, 8.5, 9.5], [10.0, 12.0, 9.0, 11.0, 10.0], "fail"),
    ([0.5, -15.0, 12.0, 1.0, -0.5], [10.0, 12.0, 9.0, 11.0, 10.0], "fail"),  # too uncertain to tell
    ([0.5, -1.0, 0.0, 1.0, -0.5], [0.4, 0.2, -0.3, 0.1, 0.0], "uninformative"),  # doing nothing passes too
])
def test_equivalence_verdicts(method, trained, verdict):
    v = stats.equivalence(method, trained, margin=3.0)
    assert v["verdict"] == verdict and v["seeds"] == 5
    assert str(round(v["mean"], 1)).lstrip("-") in stats.reason(v) or verdict == "uninformative"


def test_grid_verdicts_pair_each_seed_with_its_retrain_and_mark_flagged_lines():
    grid = compare.Grid(topologies=("ring",), methods=("retrain", "m"), seeds=(0, 1, 2, 3, 4))
    rows = []
    for s in grid.seeds:
        ref = 50.0 + 3 * s  # Retrain's FA_heldout moves with the seed; the method follows it
        rows.append({"topology": "ring", "method": "retrain", "seed": s, "FA_heldout": ref, "FA_heldout_trained": 70.0,
                     "flagged": False, "status": "ok", "spectral_gap": 0.1, "comm_bytes": 1.0, "seconds": 1.0})
        rows.append({"topology": "ring", "method": "m", "seed": s, "FA_heldout": ref + (0.5 if s % 2 else -0.5),
                     "FA_heldout_trained": 70.0, "flagged": s == 2, "status": "rolled_back" if s == 2 else "ok",
                     "spectral_gap": 0.1, "comm_bytes": 1.0, "seconds": 1.0})
    by = {(r["topology"], r["method"], r["seed"]): r for r in rows}
    for r in rows:
        ref = by[(r["topology"], "retrain", r["seed"])]
        r["FA_heldout_gap_to_retrain"] = r["FA_heldout"] - ref["FA_heldout"]
        r["FA_heldout_trained_gap_to_retrain"] = r["FA_heldout_trained"] - ref["FA_heldout"]
    v = compare.verdicts(rows, grid, margin=3.0)["ring/m"]
    assert v["verdict"] == "pass" and v["flagged"] == 1 and v["statuses"]["rolled_back"] == 1
    assert v["mean"] == pytest.approx(-0.1)  # paired by seed, unpaired the spread of Retrain would swamp it
    table = compare.grid_table(rows, grid, margin=3.0)
    line = next(l for l in table.splitlines() if "**m" in l)
    assert "**m (flagged)**" in line and "1/5: rolled_back" in line and "pass:" in line

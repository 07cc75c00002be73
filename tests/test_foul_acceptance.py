"""FOUL against Retrain on the PACS-like set (20 clients, star, seed 0).

The experiment is ``p2pforget/configs/foul_pacs.toml`` (FOUL as the official code: all parameters,
at most 15 rounds: the stopping rule may end it sooner). What holds on every seed of benchmarks/foul_table.py is asserted here: FOUL forgets
part of the domain (FA 7.5-21 points below the trained model's), keeps RA within 2 and TA within 3
points of Retrain's or above, and costs at most half of Retrain's traffic and less than its
FLOPs (bytes counted by hand: nothing is charged for the clients that left). The audit's membership attack (forgotten vs the same clients' held-out samples) cannot tell
even the trained model from Retrain in this setting (seed 0: 45.0 [36.0, 53.7] vs 46.1), so only
that FOUL's release is within its confidence interval of Retrain's is asserted. How close FA and MIA come to Retrain's varies from seed
to seed (docs/results/foul.md: 2.5 points below Retrain on seed 1, 16 above on seeds 0 and 2), so
no closeness is asserted as if it were general.
"""
from importlib import resources

import pytest

from p2pforget import Engine, config, forget


@pytest.mark.slow
def test_foul_on_pacs_like_star_forgets_at_lower_cost_than_retrain():
    cfg = config.loads(resources.files("p2pforget").joinpath("configs/foul_pacs.toml").read_text())
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    result = forget(engine, clients=list(cfg.unlearn.clients), progress=False)
    m, cost = result.metrics, result.cost
    foul, retrain, trained = m["unlearned"], m["retrained"], m["trained"]
    assert trained["FA"]["mean"] - retrain["FA"]["mean"] > 15  # the forgotten domain was learned
    assert trained["FA"]["mean"] - foul["FA"]["mean"] > 5, m  # and FOUL forgets part of it
    gap = result.audit["mia"]["unlearned"]["gap"]["ci"]
    assert gap[0] <= 0 <= gap[1], result.audit["mia"]
    assert foul["RA"]["mean"] >= retrain["RA"]["mean"] - 2
    assert foul["TA"]["mean"] >= retrain["TA"]["mean"] - 3
    # Bytes by hand: FOUL's rounds send every parameter up from all 20 clients and down to them;
    # Retrain's 40 rounds involve only the 15 clients left (nothing is charged for those who left).
    ran = result.status["checks"]
    assert 1 <= ran <= cfg.unlearn.options("foul").rounds and len(result.traces["unlearned"]) == ran
    size = engine.dim * 4
    assert cost["unlearn"].comm_bytes == ran * (20 + 20) * size
    assert cost["retrain"].comm_bytes == cfg.run.rounds * (15 + 15) * size
    assert cost["unlearn"].comm_bytes <= 0.5 * cost["retrain"].comm_bytes  # = 0.5 when all 15 rounds run
    assert cost["unlearn"].flops < cost["retrain"].flops
    assert len(result.traces["retrained"]) == cfg.run.rounds

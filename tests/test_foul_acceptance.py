"""FOUL against Retrain on the PACS-like set (20 clients, star, seed 0), at 16-pixel images.

The experiment is ``p2pforget/configs/foul_pacs.toml`` (FOUL as the official code: all parameters,
at most 15 rounds: the stopping rule may end it sooner) with ``data.pacs_like.image_size = 16`` instead of
32, which makes this check three times faster and leaves the rounds, clients, domains and message
sizes as they are. Asserted: FOUL forgets part of the domain (FA more than 5 points below the
trained model's), keeps RA within 2 and TA within 3 points of Retrain's or above, and costs at most
half of Retrain's traffic (bytes counted by hand: nothing is charged for the clients that left)
and less than its FLOPs. The full-size experiment over seeds, with the membership attack's
closeness to Retrain (|MIA - MIA_Retrain| <= 5) and the FA_heldout verdicts, is
``benchmarks/foul_table.py`` (docs/results/foul.md): at 16 pixels the attack separates FOUL's
release from Retrain's a little on this seed (gap 90% CI [0.6, 9.3] points), so no MIA claim is
asserted here.
"""
from importlib import resources

import pytest

from p2pforget import Engine, config, forget


@pytest.mark.slow
def test_foul_on_pacs_like_star_forgets_at_lower_cost_than_retrain():
    cfg = config.loads(resources.files("p2pforget").joinpath("configs/foul_pacs.toml").read_text())
    cfg = config.replace(cfg, data={"pacs_like": {"image_size": 16}}, audit={"after_forget": False})
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    result = forget(engine, clients=list(cfg.unlearn.clients), progress=False)
    m, cost = result.metrics, result.cost
    foul, retrain, trained = m["unlearned"], m["retrained"], m["trained"]
    assert trained["FA"]["mean"] - retrain["FA"]["mean"] > 15  # the forgotten domain was learned
    assert trained["FA"]["mean"] - foul["FA"]["mean"] > 5, m  # and FOUL forgets part of it
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

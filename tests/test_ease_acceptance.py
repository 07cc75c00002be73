"""EASE against Retrain on the table's experiment (benchmarks/ease_table.py; star, seed 0).

A tiny CLIP backbone pretrained without a single purple pair, LoRA trained federatedly on 10 iid
clients, then every purple pair forgotten. Asserted on this seed: the trained model knows purple
far better than Retrain (more than 20 points of FA; 18-35 on the table's 12 star seeds), EASE
closes at least two thirds of that gap (55-116% per table seed, at least 69% on 11 of 12), keeps
retain R@1 within 3 points of Retrain's at under 0.3 of its FLOPs (the guard's checks included), and the one-branch ablation
forgets far less. How close EASE's FA comes to Retrain's varies from seed to seed (4.5 below to
10.2 above on the table's star seeds), so the 3-point target is judged on the 12-seed mean in the
table, not asserted on one seed.
"""
import sys
from pathlib import Path

import pytest

from p2pforget import Engine, forget

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_ease_forgets_a_colour_only_the_forgotten_pairs_taught(tmp_path):
    import ease_table

    checkpoint = tmp_path / "backbone.pt"
    ease_table.pretrain(checkpoint, steps=800)
    cfg = ease_table.experiment_config(0, "star", str(checkpoint))
    engine = Engine(config=cfg)
    engine.train(cfg.run.rounds, progress=False)
    state = engine.state()
    samples = ease_table.forget_request(engine)
    assert len(samples) == 10  # a class-level request: every client holds some purple pairs
    result = forget(engine, samples=samples, method="ease", progress=False, **ease_table.METHODS["ease"][1])
    m, cost = result.metrics, result.cost
    trained, retrain, ease = (m[k]["FA"]["mean"] for k in ("trained", "retrained", "unlearned"))
    assert trained - retrain > 20, m
    assert trained - ease >= 2 / 3 * (trained - retrain), m
    assert abs(m["unlearned"]["RA"]["mean"] - m["retrained"]["RA"]["mean"]) <= 3, m
    # the stopping rule's and the guard's evaluations are EASE's work too: 0.25 of Retrain's FLOPs
    # at this seed (0.18 without them, docs/results/ease_class.md)
    assert cost["unlearn"].flops <= 0.3 * cost["retrain"].flops
    one_branch = Engine(config=cfg)
    one_branch.load_state(state)
    image_only = forget(one_branch, samples=samples, method="ease", reference=False, progress=False,
                        **ease_table.METHODS["ease_one_branch"][1])
    assert image_only.metrics["unlearned"]["FA"]["mean"] > ease + 5, image_only.metrics

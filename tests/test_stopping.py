"""The stopping rule and the collapse guard: they fire when they should, roll back what collapsed,
and their work is charged to the method (never to Retrain)."""
import numpy as np
import pytest
import torch

from p2pforget import Engine, config, forget
from p2pforget.unlearn.stopping import Monitor, collapsed, plateaued, retained_rows, validation_clients

UNMONITORED = config.StoppingConfig(rule="budget", guard=False)


def test_plateau_and_collapse_rules_by_hand():
    # 3 checks after the start: 70 -> 69.5 is a drop of 0.5 <= 1 point
    assert plateaued([90.0, 70.0, 69.8, 69.6, 69.5], rounds=3, points=1.0)
    assert not plateaued([90.0, 70.0, 69.8, 69.6, 68.0], rounds=3, points=1.0)
    assert not plateaued([90.0, 89.9, 89.8], rounds=3, points=1.0)  # too few checks to tell
    assert collapsed(64.9, 70.0, points=5.0) and not collapsed(65.0, 70.0, points=5.0)


def _engine(kind="star", **stopping):
    cfg = config.from_dict({"run": {"seed": 2, "rounds": 12}, "topology": {"kind": kind, "n_clients": 6},
                            "data": {"kind": "digits", "n_samples_per_client": 40, "n_test": 60},
                            "model": {"kind": "mlp", "mlp": {"hidden": 16}},
                            "train": {"lr": 0.3, "local_steps": 3, "batch_size": 16},
                            "audit": {"after_forget": False}, "stopping": stopping})
    engine = Engine(config=cfg)
    engine.train(12, progress=False)
    return engine


def test_validation_split_is_the_staying_untouched_clients_held_out_data():
    engine = _engine()
    nodes = np.array([0, 1, 3, 4, 5])
    assert validation_clients(engine, {2: np.arange(5)}, nodes).tolist() == [0, 1, 3, 4, 5]
    assert validation_clients(engine, {1: np.arange(5), 2: np.arange(40)}, nodes).tolist() == [0, 3, 4, 5]
    m = Monitor.build(engine, engine.config.stopping, forgotten={2: np.arange(40)}, nodes=nodes)
    d = engine.data
    want = np.concatenate([d.x_holdout[j][:d.holdout_counts[j]] for j in (0, 1, 3, 4, 5)])
    assert np.array_equal(m.validation_set["x"].numpy(), want.astype(np.float32)) and len(m.forget_set["y"]) == 40


def test_guard_rolls_back_a_collapsing_ascent_and_flags_it(trained_digits):
    engine = _engine()
    state = engine.state()
    # ascent with a huge step destroys the model; without the guard, RA falls far
    free = Engine(config=engine.config)
    free.load_state(state)
    wild = forget(free, clients=[2], method="gradient_ascent", reference=False, progress=False, rounds=6, lr=50.0,
                  clip=0.0, stopping=UNMONITORED)
    guarded = Engine(config=engine.config)
    guarded.load_state(state)
    safe = forget(guarded, clients=[2], method="gradient_ascent", reference=False, progress=False, rounds=6, lr=50.0,
                  clip=0.0)
    trained_ra = safe.metrics["trained"]["RA"]["mean"]
    assert wild.status["status"] == "budget_exhausted" and not wild.status["flagged"]
    assert wild.metrics["unlearned"]["RA"]["mean"] < trained_ra - 20
    assert safe.status["status"] == "rolled_back" and safe.status["flagged"]
    assert safe.status["checks"] == 6  # the guard stops nothing early: it rolls back at the end
    assert safe.metrics["unlearned"]["RA"]["mean"] >= trained_ra - 5
    assert safe.status["validation_final"] >= safe.status["validation_start"] - 5


def test_plateau_stops_finetuning_before_its_budget():
    engine = _engine()
    state = engine.state()
    runs = {}
    for name, stopping in (("rule", None), ("budget", UNMONITORED)):
        e = Engine(config=engine.config)
        e.load_state(state)
        runs[name] = forget(e, clients=[2], method="finetune", progress=False, rounds=40, stopping=stopping)
    rule, budget = runs["rule"], runs["budget"]
    assert rule.status["status"] == "ok" and rule.status["checks"] < 40
    fa = rule.status["fa_checks"]
    assert fa[-4] - fa[-1] <= 1.0 and len(rule.traces["unlearned"]) == rule.status["checks"]
    assert budget.status["status"] == "budget_exhausted" and len(budget.traces["unlearned"]) == 40
    # the rule's bytes are those of the rounds it ran; Retrain's cost does not depend on the monitor
    per_round = budget.cost["unlearn"].comm_bytes / 40
    assert rule.cost["unlearn"].comm_bytes == pytest.approx(per_round * rule.status["checks"])
    assert rule.cost["retrain"].flops == budget.cost["retrain"].flops
    assert rule.cost["retrain"].comm_bytes == budget.cost["retrain"].comm_bytes


def test_checks_are_charged_to_the_method():
    engine = _engine()
    state = engine.state()
    costs = {}
    for name, stopping in (("guarded", config.StoppingConfig(rule="budget", guard=True)), ("bare", UNMONITORED)):
        e = Engine(config=engine.config)
        e.load_state(state)
        r = forget(e, clients=[2], method="finetune", reference=False, progress=False, rounds=3, stopping=stopping)
        assert r.status["status"] == "budget_exhausted"
        costs[name] = r.cost["unlearn"].flops
    # the same three rounds; the guarded run also evaluated the validation set and the retained
    # samples five times each (start, three checks, the release)
    e = Engine(config=engine.config)
    e.load_state(state)
    m = Monitor.build(e, config.StoppingConfig(), forgotten={2: np.arange(40)}, nodes=np.array([0, 1, 3, 4, 5]))
    from p2pforget.unlearn import measured

    one = measured(lambda: m.mean_score(e.params, m.validation_set))[2]
    retained = measured(lambda: m.mean_score(e.params, m.retained_set))[2]
    assert one > 0 and retained > 0
    assert costs["guarded"] - costs["bare"] == pytest.approx(5 * (one + retained), rel=1e-9)


def _scripted(monitor, validation, retained=None):
    """The monitor with the validation (and retained) accuracies it will see set in advance (FA stays
    flat; the retained accuracy too unless given)."""
    values, kept = iter(validation), iter(retained or [])

    def score(params, batch):
        if batch is monitor.validation_set:
            return next(values)
        return next(kept, 50.0) if batch is monitor.retained_set else 50.0

    monitor.mean_score = score
    return monitor


def test_retained_samples_the_guard_scores_are_the_untouched_clients_kept_data_thinned_by_seed():
    engine = _engine()
    nodes = np.array([0, 1, 3, 4, 5])
    m = Monitor.build(engine, engine.config.stopping, forgotten={2: np.arange(40)}, nodes=nodes)
    d = engine.data
    want = np.concatenate([d.x[j][engine.retained[j]] for j in (0, 1, 3, 4, 5)])
    assert np.array_equal(m.retained_set["x"].numpy(), want.astype(np.float32))
    thin = retained_rows(engine, nodes, limit=50)
    assert thin.sum() == 50 and not thin[2].any() and not (thin & ~engine.retained).any()
    assert np.array_equal(thin, retained_rows(engine, nodes, limit=50))  # drawn with the run's seed
    off = Monitor.build(engine, config.StoppingConfig(guard_retained=False), forgotten={2: np.arange(40)}, nodes=nodes)
    assert off.retained_set is None and off.validation_set is not None


def test_the_guard_rolls_back_a_run_whose_retained_accuracy_stays_down():
    # the validation accuracy comes back (80 -> 78) but the retained accuracy ends 6 points down
    engine = _engine()
    m = _scripted(Monitor.build(engine, config.StoppingConfig(rule="budget"), forgotten={2: np.arange(40)},
                                nodes=np.array([0, 1, 3, 4, 5])),
                  [80.0, 5.0, 60.0, 78.0], retained=[90.0, 10.0, 80.0, 84.0])
    m.begin(engine.params)
    assert not any(m.check(engine.params + k) for k in (1, 2, 3))
    assert m.roll_back and m.good_checks == 0 and torch.equal(m.last_good, engine.params)


def test_the_plateau_rule_waits_for_the_retained_accuracy_to_come_back():
    # validation stays at its start and FA is flat, but the retained accuracy fell 6 points (check 1
    # fails the guard) and is still rising: the rule stops once it has stayed within 1 point of its
    # start (90) for three checks (89.2, 89.5, 89.6: check 6), not when FA first looks settled (check 4)
    engine = _engine()
    m = _scripted(Monitor.build(engine, engine.config.stopping, forgotten={2: np.arange(40)},
                                nodes=np.array([0, 1, 3, 4, 5])),
                  [80.0] * 11, retained=[90.0, 84.0, 86.0, 87.5, 89.2, 89.5, 89.6, 89.7, 89.8, 89.9, 90.0])
    m.begin(engine.params)
    checks = next(k for k in range(1, 10) if m.check(engine.params))
    assert checks == 6 and m.good_checks == 5


@pytest.mark.parametrize("validation, rolled_back, good", [
    ([80.0, 5.0, 5.0, 5.0, 5.2, 40.0, 78.0], False, 1),   # a repair flat for four checks, then back
    ([80.0, 5.0, 40.0, 78.0, 60.0], True, 1),             # back, then broken again at the end
    ([80.0, 5.0, 4.0, 3.0], True, 0),                     # never back: the trained models return
])
def test_the_guard_waits_for_a_repair_and_rolls_back_a_run_that_ends_broken(validation, rolled_back, good):
    engine = _engine()
    m = _scripted(Monitor.build(engine, config.StoppingConfig(rule="budget"), forgotten={2: np.arange(40)},
                                nodes=np.array([0, 1, 3, 4, 5])), validation)
    m.begin(engine.params)
    marks = [engine.params + k + 1 for k in range(len(validation) - 1)]
    assert not any(m.check(p) for p in marks)  # no check stops the method
    assert m.roll_back is rolled_back and m.good_checks == good
    last_passing = max((k for k, v in enumerate(validation[1:]) if v >= 75.0), default=None)
    want = engine.params if last_passing is None else marks[last_passing]
    assert torch.equal(m.last_good, want)


def test_the_plateau_rule_lets_a_repair_finish():
    # FA stays flat; the validation accuracy passes the guard at the third check but is still
    # rising: the method stops once it has stayed within 1 point of its start (80) for three
    # checks in a row (79.0, 79.5, 79.6: check 7), not when FA first looks settled (check 5) nor
    # at the first check back within the point (check 5, 79.0).
    engine = _engine()
    m = _scripted(Monitor.build(engine, engine.config.stopping, forgotten={2: np.arange(40)},
                                nodes=np.array([0, 1, 3, 4, 5])), [80.0, 5.0, 40.0, 76.0, 77.5, 79.0, 79.5, 79.6, 79.7, 79.8])
    m.begin(engine.params)
    checks = next(k for k in range(1, 10) if m.check(engine.params))
    assert checks == 7 and m.good_checks == 5


@pytest.mark.parametrize("repair_end, stops_at", [("settled", 6), ("back", 9)])
def test_a_repair_that_stalls_below_its_start_goes_on_only_with_repair_end_back(repair_end, stops_at):
    # FA is flat; the validation accuracy comes back to 76-76.5, stalls 3.5-4 points below its start
    # (80, inside the guard's margin), then rises back. "settled" stops once it has not risen more than
    # 1 point over three checks (check 6, at 76.4); "back" waits until it has stayed within 1 point of
    # 80 for three checks (check 9).
    engine = _engine(repair_end=repair_end)
    m = _scripted(Monitor.build(engine, engine.config.stopping, forgotten={2: np.arange(40)},
                                nodes=np.array([0, 1, 3, 4, 5])),
                  [80.0, 5.0, 40.0, 76.0, 76.5, 76.2, 76.4, 79.2, 79.4, 79.6, 79.8, 79.9])
    m.begin(engine.params)
    checks = next(k for k in range(1, 12) if m.check(engine.params))
    assert checks == stops_at and not m.roll_back


def test_a_one_shot_release_that_fails_the_guard_is_collapsed():
    engine = _engine()
    m = Monitor.build(engine, engine.config.stopping, forgotten={2: np.arange(40)}, nodes=np.array([0, 1, 3, 4, 5]))
    m.begin(engine.params)
    status = m.final(torch.zeros_like(engine.params))  # a release that predicts one class everywhere
    assert status["status"] == "collapsed" and status["flagged"] and status["checks"] == 0
    assert m.final(engine.params)["status"] == "ok"


def test_sfron_on_the_digits_star_of_the_robustness_report_is_flagged_not_a_normal_row():
    """The setting a new user tried (digits, MLP hidden 32, 12 clients, star, 30 rounds, client 3):
    unguarded, SFR-on with the official forget weight (alpha 25) destroys the model (RA far below
    Retrain's); guarded, the run is rolled back and flagged, with RA within 5 points of Retrain's.
    With the defaults (alpha 1, chosen on calibration seeds) RA ends within 5 points of Retrain's."""
    cfg = config.from_dict({"run": {"seed": 0, "rounds": 30}, "topology": {"kind": "star", "n_clients": 12},
                            "data": {"kind": "digits", "partition": "iid"}, "model": {"kind": "mlp", "mlp": {"hidden": 32}},
                            "train": {"lr": 0.1, "local_steps": 2, "batch_size": 20}, "audit": {"after_forget": False}})
    engine = Engine(config=cfg)
    engine.train(30, progress=False)
    state = engine.state()
    out = {}
    for name, stopping, options in (("guarded", None, {"alpha": 25.0}), ("unguarded", UNMONITORED, {"alpha": 25.0}),
                                    ("defaults", None, {})):
        e = Engine(config=cfg)
        e.load_state(state)
        out[name] = forget(e, clients=[3], method="sfron", progress=False, stopping=stopping, **options)
    ra = {k: r.metrics["unlearned"]["RA"]["mean"] for k, r in out.items()}
    retrain_ra = out["guarded"].metrics["retrained"]["RA"]["mean"]
    assert ra["unguarded"] < retrain_ra - 20 and not out["unguarded"].status["flagged"]
    assert out["guarded"].status["status"] == "rolled_back" and out["guarded"].status["flagged"]
    assert abs(ra["guarded"] - retrain_ra) <= 5
    assert abs(ra["defaults"] - retrain_ra) <= 5 and not out["defaults"].status["flagged"]

"""When an iterative unlearning method stops, and the collapse guard that rolls a broken run back.

Neither needs Retrain: both judge what the nodes can measure themselves (docs/methods/stopping.md
fixes the rule and its defaults).

- **Stopping** (``stopping.rule = "plateau"``, the default; ``"budget"`` always runs the whole
  budget): after each of its rounds a method asks :meth:`Monitor.check`; it stops
  once the forgotten samples' accuracy (FA, measured by the nodes that hold them) has dropped by at
  most ``stopping.plateau_points`` over the last ``stopping.plateau_rounds`` checks, unless a
  repair is in progress (:func:`recovering`: the validation accuracy fell below its start and is
  still rising, and has not yet stayed back at its start for that many checks). Otherwise it runs its round budget (its own ``rounds`` or ``steps``).
- **Collapse guard**: the validation accuracy is the staying clients' held-out split
  (``data.holdout_fraction``: never trained on, and not the test split); with
  ``stopping.guard_retained`` the guard also scores the staying clients' own training samples (at
  most :data:`RETAINED_CHECK_SAMPLES` of them). A check *fails* when the validation accuracy is more
  than ``stopping.guard_points`` below the trained models', or the retained accuracy more than
  ``stopping.retained_points`` below theirs; a repair on either keeps the plateau rule waiting. The guard never
  stops a method early: a model that fails a check may be on its way back (NoT breaks the model on
  purpose and then repairs it, and its repair can stay flat for several rounds before it rises).
  It trips when the method ends on a failed check. The models then roll back to the last check that
  passed (the trained models if none did).

Every check is charged to the method (its seconds and FLOPs are in the method's cost).
``status`` says how the run ended: ``ok`` (the plateau rule stopped it, or a one-shot method),
``budget_exhausted`` (it ran every round), ``rolled_back`` (the guard tripped), ``collapsed`` (the
released models fail the guard and there is nothing to roll back to, e.g. a one-shot method).
A rolled-back or collapsed result is *flagged*: tables never print it as a normal row.

Example
-------
>>> plateaued([80.0, 60.0, 59.5, 59.2, 59.0], rounds=3, points=1.0)
True
>>> plateaued([80.0, 60.0, 50.0, 45.0], rounds=3, points=1.0)
False
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import metrics
from ..tasks import as_inputs

if TYPE_CHECKING:
    from ..config import StoppingConfig
    from ..engine import Engine

STATUSES = ("ok", "budget_exhausted", "rolled_back", "collapsed")
FLAGGED = ("rolled_back", "collapsed")


def plateaued(fa: list[float], *, rounds: int, points: float) -> bool:
    """Whether the last ``rounds`` checks of the FA trace ``fa`` lowered it by at most ``points``."""
    return len(fa) > rounds and fa[-rounds - 1] - fa[-1] <= points


def recovering(validation: list[float], start: float, *, rounds: int, points: float, until_back: bool = False) -> bool:
    """Whether a repair is in progress (NoT's fine-tuning), which the plateau rule lets finish: the
    validation trace was more than ``points`` below ``start`` at one of its last ``rounds`` checks
    and has risen by more than ``points`` over them. A repair ends once the validation accuracy has
    stayed within ``points`` of its start for ``rounds`` checks in a row (one lucky check is not
    enough), or once it stops rising. With ``until_back`` (``stopping.repair_end = "back"``) a
    repair that stops rising below its start goes on: it is in progress while the trace is more than
    ``points`` above its lowest value and has not stayed back at its start for ``rounds`` checks. A
    trace that only falls (no repair began) never holds the rule.

    >>> recovering([20.0, 40.0, 50.0, 55.0], 60.0, rounds=3, points=1.0)
    True
    >>> recovering([54.0, 55.0, 54.5, 55.0], 60.0, rounds=3, points=1.0)   # settled below the start
    False
    >>> recovering([40.0, 50.0, 61.0], 60.0, rounds=2, points=1.0)         # one check back: not yet
    True
    >>> recovering([50.0, 59.5, 61.0, 60.5], 60.0, rounds=2, points=1.0)   # back for two checks
    False
    >>> recovering([20.0, 54.0, 55.0, 54.5, 55.0], 60.0, rounds=3, points=1.0, until_back=True)
    True
    >>> recovering([58.0, 57.0, 56.5, 56.0], 60.0, rounds=3, points=1.0, until_back=True)   # only falling
    False
    """
    if not validation:
        return False
    recent = validation[-rounds:]
    if min(recent) >= start - points:
        return False
    if until_back:
        return validation[-1] - min(validation) > points
    earlier = validation[-rounds - 1] if len(validation) > rounds else start
    return validation[-1] - earlier > points


def collapsed(validation: float, start: float, *, points: float) -> bool:
    """Whether the validation accuracy fell more than ``points`` below ``start``.

    >>> collapsed(60.0, 70.0, points=5.0), collapsed(66.0, 70.0, points=5.0)
    (True, False)
    """
    return validation < start - points


def validation_clients(engine: "Engine", forgotten: dict[int, np.ndarray], nodes: np.ndarray) -> np.ndarray:
    """The clients whose held-out splits validate the unlearned models: those that stay and whose
    data are all kept (every staying client if each has something forgotten)."""
    d = engine.data
    if d.x_holdout is None:
        return np.zeros(0, dtype=np.int64)
    staying = np.asarray([j for j in nodes if d.holdout_counts[j] > 0], dtype=np.int64)
    untouched = np.asarray([j for j in staying if int(j) not in forgotten], dtype=np.int64)
    return untouched if len(untouched) else staying


def _batch(engine: "Engine", mask: np.ndarray, *, held_out: bool = False) -> dict[str, torch.Tensor]:
    """The samples ``mask`` picks (:meth:`~p2pforget.engine.batches.Batches.samples`) as a batch."""
    picked = engine.batches.samples(mask, held_out=held_out)
    out = {"x": as_inputs(picked.pop("x"), engine.dtype)} | {k: torch.as_tensor(v) for k, v in picked.items()}
    return {k: v.to(engine.device) for k, v in out.items()}


RETAINED_CHECK_SAMPLES = 1024   # the retained samples the guard scores, at most (drawn once per request)


def retained_rows(engine: "Engine", clients: np.ndarray, *, limit: int = RETAINED_CHECK_SAMPLES) -> np.ndarray:
    """A ``[n_clients, n_max]`` mask of the training samples ``clients`` keep, thinned to at most
    ``limit`` of them, drawn with the run's seed (the same samples at any rank count)."""
    rows = np.zeros_like(engine.retained)
    rows[clients] = engine.retained[clients]
    flat = np.flatnonzero(rows)
    if len(flat) > limit:
        keep = np.random.default_rng(engine.config.run.seed).choice(flat, size=limit, replace=False)
        rows = np.zeros_like(rows)
        rows.flat[keep] = True
    return rows


@dataclass
class Monitor:
    """The stopping rule and the collapse guard of one forget request (see the module docstring).

    The guard watches two accuracies of the staying nodes' models, each against its value for the
    models the method starts from: on the validation split (``validation_set``, points
    ``guard_points``) and, with ``guard_retained``, on the staying clients' own training samples
    (``retained_set``, points ``retained_points``): a repair can bring the first back while the second
    stays down (docs/methods/stopping.md)."""

    engine: "Engine"
    options: "StoppingConfig"
    forget_set: dict[str, torch.Tensor]
    validation_set: dict[str, torch.Tensor] | None
    nodes: np.ndarray
    retained_set: dict[str, torch.Tensor] | None = None
    start: float | None = None            # validation accuracy of the models the method starts from
    retained_start: float | None = None   # their accuracy on the retained samples the guard scores
    fa: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    retained: list[float] = field(default_factory=list)
    last_good: torch.Tensor | None = None
    good_checks: int = 0
    calls: int = 0
    failing: bool = False                 # whether the latest check failed the guard
    stopped: bool = False

    @classmethod
    def build(cls, engine: "Engine", options: "StoppingConfig", *, forgotten: dict[int, np.ndarray],
              nodes: np.ndarray) -> "Monitor":
        d = engine.data
        rows = np.zeros_like(engine.retained)
        for j, idx in forgotten.items():
            rows[j, idx] = True
        forget_set = _batch(engine, rows)
        clients = validation_clients(engine, forgotten, nodes) if options.guard else np.zeros(0, dtype=np.int64)
        validation = None
        if len(clients):
            held = np.zeros(d.y_holdout.shape, dtype=bool)
            held[clients] = np.arange(d.y_holdout.shape[1])[None, :] < d.holdout_counts[clients, None]
            validation = _batch(engine, held, held_out=True)
        retained = None
        if options.guard and options.guard_retained:
            untouched = np.asarray([j for j in nodes if int(j) not in forgotten], dtype=np.int64)
            kept = retained_rows(engine, untouched)
            if kept.any():
                retained = _batch(engine, kept)
        return cls(engine=engine, options=options, forget_set=forget_set, validation_set=validation, nodes=nodes,
                   retained_set=retained)

    @property
    def guarded(self) -> bool:
        return self.validation_set is not None or self.retained_set is not None

    def mean_score(self, params: torch.Tensor, batch: dict[str, torch.Tensor]) -> float:
        """Mean over the staying nodes of the task's score (percent); the same number on every rank."""
        return self.engine.transport.bcast_object(metrics.mean_score(self.engine, params, batch, nodes=self.nodes))

    def _health(self, params: torch.Tensor) -> tuple[float | None, float | None]:
        """The validation and retained accuracies of ``params`` (``None`` for a set not watched)."""
        return tuple(None if b is None else self.mean_score(params, b) for b in (self.validation_set, self.retained_set))

    def _fails(self, validation: float | None, retained: float | None) -> bool:
        o = self.options
        return ((validation is not None and collapsed(validation, self.start, points=o.guard_points))
                or (retained is not None and collapsed(retained, self.retained_start, points=o.retained_points)))

    def begin(self, params: torch.Tensor) -> None:
        """Record the starting models' validation and retained accuracies (part of the guard's cost)."""
        self.start, self.retained_start = self._health(params)
        self.last_good = params.detach().clone()
        if self.options.rule == "plateau":
            self.fa = [self.mean_score(params, self.forget_set)]

    def repairing(self) -> bool:
        """Whether a repair is in progress on either watched accuracy (:func:`recovering`)."""
        o = self.options
        return any(start is not None and recovering(trace, start, rounds=o.plateau_rounds, points=o.plateau_points,
                                                    until_back=o.repair_end == "back")
                   for trace, start in ((self.validation, self.start), (self.retained, self.retained_start)))

    def check(self, params: torch.Tensor) -> bool:
        """After one of the method's rounds: ``True`` when it should stop (the plateau rule)."""
        self.calls += 1
        if self.guarded:
            validation, retained = self._health(params)
            if validation is not None:
                self.validation.append(validation)
            if retained is not None:
                self.retained.append(retained)
            self.failing = self._fails(validation, retained)
            if self.failing:
                return False
        self.last_good = params.detach().clone()
        self.good_checks += 1
        if self.options.rule == "budget":
            return False
        self.fa.append(self.mean_score(params, self.forget_set))
        o = self.options
        if plateaued(self.fa, rounds=o.plateau_rounds, points=o.plateau_points) and not self.repairing():
            self.stopped = True
        return self.stopped

    @property
    def roll_back(self) -> bool:
        """Whether the method's models must go back to :attr:`last_good`: it ended on a failed
        check (this trips the guard)."""
        return self.failing

    def final(self, released: torch.Tensor) -> dict[str, Any]:
        """The status of the released models (after any roll-back) and what the guard saw."""
        validation, retained = self._health(released) if self.guarded else (None, None)
        if self.failing:
            status = "rolled_back"
        elif self._fails(validation, retained):
            status = "collapsed"
        elif self.stopped or self.calls == 0:
            status = "ok"
        else:
            status = "budget_exhausted"
        return {"status": status, "flagged": status in FLAGGED, "checks": self.calls, "good_checks": self.good_checks,
                "validation_start": self.start, "validation_final": validation,
                "retained_start": self.retained_start, "retained_final": retained, "fa_checks": list(self.fa)}

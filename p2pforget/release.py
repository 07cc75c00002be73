"""The published files of a run: what the nodes release after each forget request, apart from the
simulator's private record.

``OUT/history.h5`` and ``OUT/report.json`` are the simulator's private record: the checkpoint, the
trained, noiseless and retrained models, the influence ledger and every data-dependent diagnostic
(residuals, bounds, distances, metrics on the clients' data, the audit). They are what resuming,
later requests and plots read. ``OUT/release/`` holds only what the nodes publish:

- ``release/models.h5``: for request ``k``, ``requests/<k>/models`` (M, d), the released models of
  the M nodes still in the graph (a node that left releases nothing), and ``requests/<k>/nodes``
  (M,), their ids;
- ``release/release.json``: for each request the round, method, forgotten ids, mode, the public
  part of its certificate (:data:`PUBLIC_CERTIFICATE`: the guarantee and how it was calibrated,
  nothing computed from the data) and the released models' accuracy on the shared test split
  (a public sample that holds no client's data).

Whatever an adversary can compute from these files is post-processing of the release (and of
public data), which is what a certificate covers. ``run.keep_private = false`` deletes the
private record when the run ends, leaving only ``release/``.

Example
-------
>>> public_certificate({"epsilon": 1.0, "sigma": 0.1, "residual_norm": 3e-9, "certified": True})
{'epsilon': 1.0, 'sigma': 0.1, 'certified': True}
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import history

RELEASE_DIR = "release"

PUBLIC_CERTIFICATE = ("method", "epsilon", "delta", "noise", "sigma", "sigma_single_release", "sensitivity", "budget",
                      "noise_scope", "private", "certified", "not_certified_because", "reference", "strong_convexity",
                      "curvature", "solver", "first_step", "newton_steps", "cumulative_epsilon", "cumulative_delta")
"""Certificate keys that are published: fixed by the config or by the declared budget. The rest
(``residual_norm``, the bounds, ``hessian_lipschitz``, the steps taken, the fallback) are computed
from the data and stay in the private record."""


def public_certificate(cert: dict[str, Any]) -> dict[str, Any]:
    """The published part of a certificate (keys of :data:`PUBLIC_CERTIFICATE`, in its order as given)."""
    return {k: v for k, v in cert.items() if k in PUBLIC_CERTIFICATE}


def entry(request: dict[str, Any], nodes: np.ndarray) -> dict[str, Any]:
    """One request's published entry, from its private report entry (``request``, as in
    ``report.json["requests"]``) and the ``nodes`` still in the graph after it."""
    unlearn = request["unlearn"]
    test = request.get("metrics", {}).get("unlearned", {}).get("TA")
    return {"round": unlearn.get("round"), "method": unlearn.get("method"), "forgotten": unlearn.get("forgotten"),
            "mode": unlearn.get("mode"), "nodes": [int(i) for i in nodes],
            "certificate": public_certificate(unlearn) if "epsilon" in unlearn else None, "test_accuracy": test}


def publish(out: Path, requests: list[dict[str, Any]], private: dict[str, np.ndarray], *, n_clients: int) -> None:
    """Write ``out/release/models.h5`` and ``release.json`` (each atomically) from the private
    record: its ``requests`` (as in ``report.json["requests"]``) and arrays, which hold each
    request's released models and nodes as ``unlearn/released/<k>/{models,nodes}``. Rebuilt
    whole every time, so the release always matches the record it came from."""
    folder = Path(out) / RELEASE_DIR
    arrays = {f"requests/{k}/{name}": private[f"unlearn/released/{k}/{name}"]
              for k in range(len(requests)) for name in ("models", "nodes")}
    published = [entry(r, private[f"unlearn/released/{k}/nodes"]) for k, r in enumerate(requests)]
    history.write_h5(folder / "models.h5", attrs={"version": history.FORMAT_VERSION, "n_clients": n_clients,
                                                   "requests": len(requests)}, arrays=arrays)
    history.write_json(folder / "release.json", {"version": history.FORMAT_VERSION, "n_clients": n_clients,
                                                 "requests": published})


def read(out: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, np.ndarray]]]:
    """The published requests and arrays of ``out/release/`` (empty if nothing was released)."""
    folder = Path(out) / RELEASE_DIR
    if not (folder / "release.json").exists():
        return [], {}
    requests = json.loads((folder / "release.json").read_text())["requests"]
    stored = history.read_h5(folder / "models.h5").arrays
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for key, v in stored.items():
        _, k, name = key.split("/")
        arrays.setdefault(int(k), {})[name] = v
    return requests, arrays


def drop_private(out: Path) -> None:
    """Delete the private record of the run at ``out`` (``history.h5``, ``report.json``, the CSV
    and TensorBoard logs), leaving ``release/``."""
    out = Path(out)
    for name in ("history.h5", "report.json", "metrics.csv", "metrics_per_node.csv"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)

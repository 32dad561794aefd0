#!/usr/bin/env python3
"""Independent NumPy reference for the coordinator's aggregation strategies.

Written from the papers' formulas (and the spec in strategy.h), not from the
C++ code, so that strategy_test.cc can check one against the other.

Usage: strategy_oracle.py <strategy> <dir> <json params>

Reads from <dir>:
  global.npy         (C,)   float32, the model before round 0
  deltas_<r>.npy     (S, C) float32, the sites' updates of round r
  examples_<r>.npy   (S,)   float32, their num_examples
for r = 0 .. params["rounds"] - 1. Plays every round with its own state and
its own running global model, and writes
  expected_<r>.npy   (C,)   float32, the global model after round r
  selected_<r>.npy   (m,)   float32, krum only: the selected site indices,
                            best score first
Params: server_learning_rate, momentum, beta1, beta2, tau, trim_fraction,
krum_byzantine, krum_select, rounds (the StrategyConfig field names).
"""
import json
import math
import os
import sys

import numpy as np


def weighted_mean(deltas, examples):
    """Δ̄ = Σ n_i Δ_i / Σ n_i (McMahan et al. 2017)."""
    w = examples.astype(np.float64)
    return np.einsum("s,sc->c", w, deltas) / w.sum()


class FedAvg:
    """x + Δ̄. FedProx aggregates the same way; its μ acts in the worker."""

    def step(self, x, deltas, examples):
        return x + weighted_mean(deltas, examples)


class FedAvgM:
    """Hsu et al. 2019: server momentum on the averaged update."""

    def __init__(self, p):
        self.eta, self.beta = p["server_learning_rate"], p["momentum"]
        self.velocity = None

    def step(self, x, deltas, examples):
        g = weighted_mean(deltas, examples)
        prev = 0.0 if self.velocity is None else self.velocity.astype(np.float64)
        v = self.beta * prev + g
        self.velocity = v.astype(np.float32)  # server state is kept in float32
        return x + self.eta * v


class FedOpt:
    """Reddi et al. 2021, Algorithm 2 (FedAdagrad / FedAdam / FedYogi),
    without bias correction: m_0 = 0, v_0 = τ²."""

    def __init__(self, variant, p):
        self.variant = variant
        self.eta, self.b1, self.b2, self.tau = (
            p["server_learning_rate"], p["beta1"], p["beta2"], p["tau"])
        self.m = None
        self.v = None

    def step(self, x, deltas, examples):
        d = weighted_mean(deltas, examples)
        if self.m is None:
            self.m = np.zeros(d.shape, np.float32)
            self.v = np.full(d.shape, self.tau ** 2, np.float32)
        m_prev = self.m.astype(np.float64)
        v_prev = self.v.astype(np.float64)
        m = self.b1 * m_prev + (1.0 - self.b1) * d
        sq = np.square(d)
        if self.variant == "fedadagrad":
            v = v_prev + sq
        elif self.variant == "fedadam":
            v = self.b2 * v_prev + (1.0 - self.b2) * sq
        else:  # fedyogi
            v = v_prev - (1.0 - self.b2) * sq * np.sign(v_prev - sq)
        self.m, self.v = m.astype(np.float32), v.astype(np.float32)
        return x + self.eta * m / (np.sqrt(v) + self.tau)


class Median:
    """Coordinate-wise median (Yin et al. 2018), unweighted."""

    def step(self, x, deltas, examples):
        return x + np.median(deltas.astype(np.float64), axis=0)


class TrimmedMean:
    """Coordinate-wise β-trimmed mean (Yin et al. 2018), unweighted."""

    def __init__(self, p):
        self.beta = p["trim_fraction"]

    def step(self, x, deltas, examples):
        n = deltas.shape[0]
        # Slack for binary rounding of β·n (0.29 * 100 must cut 29).
        k = int(math.floor(self.beta * n + 1e-9))
        assert n - 2 * k >= 1, "nothing left after trimming"
        ordered = np.sort(deltas.astype(np.float64), axis=0)
        return x + ordered[k:n - k].mean(axis=0)


class Krum:
    """Blanchard et al. 2017: Krum (m = 1) and Multi-Krum (m > 1)."""

    def __init__(self, p):
        self.f, self.m = p["krum_byzantine"], p["krum_select"]
        self.selected = None

    def step(self, x, deltas, examples):
        n = deltas.shape[0]
        assert n >= 2 * self.f + 3 and 1 <= self.m <= n
        d = deltas.astype(np.float64)
        # ‖Δ_i − Δ_j‖² from the differences themselves (the Gram-matrix
        # shortcut ‖a‖² + ‖b‖² − 2a·b cancels badly for close updates).
        sq_dist = np.array([[np.sum((d[i] - d[j]) ** 2) for j in range(n)]
                            for i in range(n)])
        closest = n - self.f - 2
        scores = np.empty(n)
        for i in range(n):
            others = np.delete(sq_dist[i], i)
            scores[i] = np.sort(others)[:closest].sum()
        # A stable sort keeps the lower index first among equal scores.
        self.selected = np.argsort(scores, kind="stable")[:self.m]
        return x + d[self.selected].mean(axis=0)


def make(name, p):
    if name in ("fedavg", "fedprox"):
        return FedAvg()
    if name == "fedavgm":
        return FedAvgM(p)
    if name in ("fedadagrad", "fedadam", "fedyogi"):
        return FedOpt(name, p)
    if name == "median":
        return Median()
    if name == "trimmed_mean":
        return TrimmedMean(p)
    if name == "krum":
        return Krum(p)
    raise SystemExit(f"strategy_oracle: unknown strategy {name!r}")


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    name, folder, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    strategy = make(name, params)
    x = np.load(os.path.join(folder, "global.npy")).astype(np.float32)
    for r in range(params["rounds"]):
        deltas = np.load(os.path.join(folder, f"deltas_{r}.npy"))
        examples = np.load(os.path.join(folder, f"examples_{r}.npy"))
        assert deltas.ndim == 2 and deltas.shape[1] == x.shape[0]
        assert examples.shape == (deltas.shape[0],)
        x = strategy.step(x.astype(np.float64), deltas, examples).astype(np.float32)
        np.save(os.path.join(folder, f"expected_{r}.npy"), x)
        if name == "krum":
            np.save(os.path.join(folder, f"selected_{r}.npy"),
                    strategy.selected.astype(np.float32))
    print(f"strategy_oracle: {name}: {params['rounds']} rounds, "
          f"{deltas.shape[0]} sites, {x.shape[0]} coordinates")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Independent oracle for common/privacy.h, in 60-digit arithmetic (mpmath).

Usage: privacy_oracle.py CASES_JSON
CASES_JSON: [{"q": .., "sigma": .., "releases": .., "delta": ..}, ...]
Prints, per case, {"rdp": {alpha: value}, "epsilon": value} as one JSON list.

RDP of the sampled Gaussian mechanism at integer order a (Mironov, Talwar,
Zhang 2019, section 3.3): A_a = sum_{k=0}^{a} C(a, k) (1-q)^(a-k) q^k
exp((k^2 - k) / (2 sigma^2)); RDP = log(A_a) / (a - 1); q = 1 gives
a / (2 sigma^2). (eps, delta) from RDP (Balle et al. 2020, Theorem 21):
eps = min_a RDP(a) * releases + log((a-1)/a) - (log delta + log a)/(a-1).
"""
import json
import sys

import mpmath

mpmath.mp.dps = 60
ORDERS = list(range(2, 65)) + [80, 96, 128, 192, 256]


def rdp(q, sigma, a):
    q, sigma = mpmath.mpf(q), mpmath.mpf(sigma)
    if q >= 1:
        return a / (2 * sigma ** 2)
    total = mpmath.fsum(mpmath.binomial(a, k) * (1 - q) ** (a - k) * q ** k *
                        mpmath.e ** ((k * k - k) / (2 * sigma ** 2)) for k in range(a + 1))
    return mpmath.log(total) / (a - 1)


def main():
    out = []
    for case in json.loads(sys.argv[1]):
        curve = {a: rdp(case["q"], case["sigma"], a) * case["releases"] for a in ORDERS}
        delta = mpmath.mpf(case["delta"])
        eps = min(curve[a] + mpmath.log(mpmath.mpf(a - 1) / a) - (mpmath.log(delta) + mpmath.log(a)) / (a - 1)
                  for a in ORDERS)
        out.append({"rdp": {str(a): float(v) for a, v in curve.items()}, "epsilon": float(max(eps, 0))})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

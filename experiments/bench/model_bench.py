#!/usr/bin/python3
"""C++ against Python, the same model on the same LibTorch, in one run.

Usage: experiments/bench/model_bench.py [--bin build/experiments/attune-bench-model]
           [--threads 1] [--batch 32] [--iters 50] [--rounds 3]

Each round runs attune-bench-model (the study model of worker/model.h, the
quickstart's sizes, dropout 0) for its C++ forward + backward step time and
has it dump its parameters and batch; then this script drives the same
model from Python — tests/worker/parity_oracle.py's whole-model reference,
which the parity.model test holds to the C++ model within 1e-5 — on those
parameters and that batch, checks that the logits agree, and times the same
step (zero grads, forward, binary cross-entropy, backward) with the same
thread count. It prints each side's median and C++ / Python; ≤ 1.05 means
the C++ step is no slower than Python's (5% noise allowed).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "worker"))
import parity_oracle as oracle  # noqa: E402


def python_step_ms(dump, iters, warmup):
    ctx = oracle.Ctx(dump, "")
    ctx.in_leaves = {k: v.clone() for k, v in ctx.inputs.items()}  # a batch needs no grad
    with torch.no_grad():
        logits, _ = oracle.model_forward(ctx)
    diff = (logits - dump["output.logits"]).abs().max().item()
    if diff > 1e-4:
        sys.exit("model_bench.py: the Python model's logits differ from C++'s by %.3g" % diff)
    label = ctx.in_leaves["label"]
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        for leaf in ctx.leaves.values():
            leaf.grad = None
        logits, _ = oracle.model_forward(ctx)
        loss = F.binary_cross_entropy_with_logits(logits, label)
        loss.backward()
        t = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(t)
    return statistics.median(times), diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "build", "experiments", "attune-bench-model"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit("model_bench.py: %s is not an executable (build first, or pass --bin)" % args.bin)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    cpp, py = [], []
    with tempfile.TemporaryDirectory() as tmp:
        dump_path, json_path = os.path.join(tmp, "model.pt"), os.path.join(tmp, "cpp.json")
        for r in range(args.rounds):
            subprocess.run([args.bin, "--threads", str(args.threads), "--batch", str(args.batch),
                            "--iters", str(args.iters), "--warmup", str(args.warmup),
                            "--dump", dump_path, "--json", json_path], check=True)
            cpp.append(json.load(open(json_path))["median_ms"])
            ms, diff = python_step_ms(torch.load(dump_path), args.iters, args.warmup)
            py.append(ms)
            print("Python step %.3f ms (median of %d; logits within %.1e of C++'s)" % (ms, args.iters, diff))
    c, p = statistics.median(cpp), statistics.median(py)
    print("model step, batch %d, %d thread(s): C++ %.3f ms, Python %.3f ms, C++ / Python = %.3f (target <= 1.05)"
          % (args.batch, args.threads, c, p, c / p))
    return 0 if c / p <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())

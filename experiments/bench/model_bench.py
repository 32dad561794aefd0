#!/usr/bin/python3
"""C++ against Python, the same model on the same LibTorch, in one run.

Usage: experiments/bench/model_bench.py [--bin build/experiments/attune-bench-model]
           [--variants model,...|all] [--threads 1] [--batch 32]
           [--rounds 15] [--iters 8] [--warmup 5]

For each model variant (experiments/bench/model_variants.h: "model" is the
quickstart's model, then each modality encoder alone and each fusion;
`attune-bench-model --help` lists them) this starts attune-bench-model
--serve, which builds the study model (worker/model.h, dropout 0) in C++ and
dumps its parameters, batch and configuration; then drives the same model
from Python — tests/worker/parity_oracle.py's whole-model reference, which
the parity.model* tests hold to the C++ model within 1e-5 — on those
parameters and that batch, checks that the logits agree, and times the same
step (zero grads, forward, binary cross-entropy plus the fusion's auxiliary
loss, backward) with the same thread count.

The two sides take turns: `rounds` times, --iters C++ steps then --iters
Python steps, so that whatever else the machine does falls on both alike.
It prints each variant's median step time per side and C++ / Python; ≤ 1.05
means the C++ step is no slower than Python's (5% noise allowed). Exit
status 1 when the main model ("model") is over 1.05; the other variants
are reported.
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

TARGET = 1.05


class PythonModel:
    """The oracle's reference on the dumped parameters and batch."""

    def __init__(self, dump):
        self.ctx = oracle.Ctx(dump, "")
        self.ctx.in_leaves = {k: v.clone() for k, v in self.ctx.inputs.items()}  # a batch needs no grad
        with torch.no_grad():
            logits, _, _ = oracle.model_forward(self.ctx)
        self.diff = (logits - dump["output.logits"]).abs().max().item()
        self.label = self.ctx.in_leaves["label"]
        self.parameters = sum(t.numel() for k, t in dump.items() if k.startswith("param."))

    def steps(self, n):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            for leaf in self.ctx.leaves.values():
                leaf.grad = None
            logits, _, aux = oracle.model_forward(self.ctx)
            loss = F.binary_cross_entropy_with_logits(logits, self.label)
            if aux is not None:
                loss = loss + aux
            loss.backward()
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def compare(args, variant, tmp):
    """(C++ median ms, Python median ms, parameters, logits difference)."""
    dump_path = os.path.join(tmp, variant + ".pt")
    cmd = [args.bin, "--variant", variant, "--threads", str(args.threads), "--batch", str(args.batch),
           "--warmup", str(args.warmup), "--dump", dump_path, "--serve"]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as cpp:
        if cpp.stdout.readline().strip() != "ready":
            sys.exit("model_bench.py: %s did not start (exit %s)" % (" ".join(cmd), cpp.wait()))
        py = PythonModel(torch.load(dump_path))
        if py.diff > 1e-4:
            sys.exit("model_bench.py: %s: the Python model's logits differ from C++'s by %.3g" % (variant, py.diff))
        py.steps(args.warmup)
        cpp_ms, py_ms = [], []
        for _ in range(args.rounds):
            cpp.stdin.write("%d\n" % args.iters)
            cpp.stdin.flush()
            line = cpp.stdout.readline()
            if not line:
                sys.exit("model_bench.py: %s ended early (exit %s)" % (args.bin, cpp.wait()))
            cpp_ms += json.loads(line)["steps_ms"]
            py_ms += py.steps(args.iters)
        cpp.stdin.close()
        if cpp.wait() != 0:
            sys.exit("model_bench.py: %s exited %d" % (args.bin, cpp.returncode))
    return statistics.median(cpp_ms), statistics.median(py_ms), py.parameters, py.diff


def variant_names(bin_path):
    """The variants attune-bench-model lists in its --help footer."""
    out = subprocess.run([bin_path, "--help"], check=True, capture_output=True, text=True).stdout
    lines = out.split("variants:\n", 1)[1].splitlines()
    return [line.split()[0] for line in lines if line.startswith("  ")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "build", "experiments", "attune-bench-model"))
    ap.add_argument("--variants", default="model", help="comma-separated, or all (default: model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15, help="turns per side")
    ap.add_argument("--iters", type=int, default=8, help="timed steps per turn")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit("model_bench.py: %s is not an executable (build first, or pass --bin)" % args.bin)
    known = variant_names(args.bin)
    variants = known if args.variants == "all" else args.variants.split(",")
    for v in variants:
        if v not in known:
            sys.exit("model_bench.py: unknown variant %r; variants: %s" % (v, ", ".join(known)))
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)

    print("batch %d, %d thread(s), %d turns x %d steps per side; median step time"
          % (args.batch, args.threads, args.rounds, args.iters))
    print("%-20s %10s %10s %10s %8s %9s" % ("variant", "parameters", "C++ ms", "Python ms", "C++/Py", "logits Δ"))
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            c, p, n, diff = compare(args, v, tmp)
            ratios[v] = c / p
            print("%-20s %10d %10.3f %10.3f %8.3f %9.1e" % (v, n, c, p, c / p, diff), flush=True)
    if "model" in ratios:
        ok = ratios["model"] <= TARGET
        print("main model: C++ / Python = %.3f (target <= %.2f): %s" % (ratios["model"], TARGET, "ok" if ok else "OVER"))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

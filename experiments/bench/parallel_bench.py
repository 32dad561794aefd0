#!/usr/bin/python3
"""Attune's data-parallel training beside PyTorch DDP (Gloo), in one run.

Usage: experiments/bench/parallel_bench.py [--build build] [--ranks 2] [--batch 32]
           [--rounds 6] [--steps 30] [--warmup 5] [--mib 1,4,16,64] [--iters 20]
           [--json out.json]

Throughput. The quickstart's attention model (attune-bench-model's "model":
all four modalities, hierarchical fusion, dropout 0), the same parameters
and batch on both sides: attune-bench-model --dump writes them and
tests/worker/parity_oracle.py's whole-model reference — which the
parity.model test holds to the C++ model within 1e-5 — runs them in
Python as an nn.Module wrapped in DistributedDataParallel (Gloo, DDP's
defaults: 25 MiB buckets). A step on both sides: zero the gradients,
forward, binary cross-entropy plus the auxiliary loss, backward with the
gradients all-reduced in buckets from autograd hooks, Adam (lr 1e-3). Every
rank has 1 intra-op thread and is pinned to its own core (mpirun --bind-to
core; os.sched_setaffinity for the Python ranks) and trains on the same
batch. Attune runs as `mpirun -np N attune-bench-parallel train`; DDP's
ranks are started by this script (a file store, no port).

A fifth configuration, "alone", runs N Attune processes at once, each on
its own core, each training alone with no communication at all: what this
machine gives N processes, the ceiling of any N-rank trainer here. Printed
beside the efficiency: the ceiling's own efficiency (N processes alone /
N x 1 rank) and Attune's N ranks as a share of the ceiling, which separates
what the trainer loses to communication and waiting from what the cores
lose to each other.

The five configurations (Attune and DDP at 1 and --ranks ranks, alone) take turns,
--rounds times, so that whatever else the machine does falls on all alike;
each run's first --warmup steps are not timed. Printed: the median step
time, samples/s = ranks x batch / step, Attune / DDP, and the scaling
efficiency samples/s(N) / (N x samples/s(1)). The first step's loss must
agree between the two sides (the same model and batch). Exit status 1 when
Attune is under 0.95 x DDP at N ranks or its scaling efficiency under 90 %.

Bandwidth. `mpirun -np N attune-bench-parallel allreduce`: for each size,
backward + the bucketed reducer, Attune's MPI communicator alone, and one
raw MPI_Allreduce of the same bytes; algbw = bytes / time and busbw = algbw
x 2(N-1)/N, as nccl-tests defines them.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
SPEED_TARGET = 0.95       # Attune / DDP at N ranks (5 % noise allowed)
EFFICIENCY_TARGET = 0.90  # samples/s(N) / (N x samples/s(1))


def mpirun(n):
    exe = shutil.which("mpirun")
    if exe is None:
        sys.exit("parallel_bench.py: mpirun not found (Open MPI)")
    cmd = [exe, "-np", str(n), "--bind-to", "core", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


# ---- a DDP rank (this script started with --ddp-rank) ----------------------

def ddp_rank(args):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    import torch.nn.functional as F

    sys.path.insert(0, os.path.join(ROOT, "tests", "worker"))
    import parity_oracle as oracle

    os.sched_setaffinity(0, {args.ddp_rank % os.cpu_count()})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + args.ddp_store,
                            rank=args.ddp_rank, world_size=args.ddp_world)

    class OracleModel(nn.Module):
        """parity_oracle's study model, its parameters registered."""

        def __init__(self, dump):
            super().__init__()
            self.ctx = oracle.Ctx(dump, "")
            self.ctx.in_leaves = {k: v.clone() for k, v in self.ctx.inputs.items()}  # a batch needs no grad
            with torch.no_grad():
                oracle.model_forward(self.ctx)  # collects the parameters the model reads
            self.names = list(self.ctx.leaves)
            self.params = nn.ParameterList([nn.Parameter(self.ctx.leaves[n].detach().clone())
                                            for n in self.names])

        def forward(self):
            for n, p in zip(self.names, self.params):
                self.ctx.leaves[n] = p
            logits, _, aux = oracle.model_forward(self.ctx)
            return logits, aux

    model = OracleModel(torch.load(args.ddp_dump))
    label = model.ctx.in_leaves["label"]
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    times, first_loss = [], None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        logits, aux = ddp()
        loss = F.binary_cross_entropy_with_logits(logits, label)
        if aux is not None:
            loss = loss + aux
        loss.backward()
        opt.step()
        if i == 0:
            first_loss = loss.item()
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    if args.ddp_rank == 0:
        with open(args.ddp_out, "w") as f:
            json.dump({"steps_ms": times, "first_loss": first_loss,
                       "parameters": sum(p.numel() for p in model.parameters())}, f)
    dist.destroy_process_group()


# ---- the driver --------------------------------------------------------------

def run_attune(args, n, tmp, independent=False):
    out = os.path.join(tmp, "attune.json")
    cmd = mpirun(n) + [args.parallel_bin, "train", "--batch", str(args.batch), "--threads", "1",
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", out]
    if independent:
        cmd.append("--independent")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("parallel_bench.py: %s exited %d:\n%s" % (" ".join(cmd), r.returncode, r.stderr))
    with open(out) as f:
        return json.load(f)


def run_ddp(args, n, dump, tmp):
    out = os.path.join(tmp, "ddp.json")
    store = os.path.join(tmp, "store-%d" % time.monotonic_ns())
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--ddp-rank", str(r),
                               "--ddp-world", str(n), "--ddp-store", store, "--ddp-dump", dump,
                               "--ddp-out", out, "--steps", str(args.steps), "--warmup", str(args.warmup)])
             for r in range(n)]
    codes = [p.wait(timeout=600) for p in procs]
    if any(codes):
        sys.exit("parallel_bench.py: a DDP rank exited %s" % codes)
    with open(out) as f:
        return json.load(f)


def throughput(args, tmp):
    dump = os.path.join(tmp, "model.pt")
    subprocess.run([args.model_bin, "--batch", str(args.batch), "--threads", "1", "--iters", "1",
                    "--warmup", "0", "--dump", dump], check=True, capture_output=True)
    configs = [("attune", 1), ("ddp", 1), ("attune", args.ranks), ("ddp", args.ranks), ("alone", args.ranks)]
    steps = {c: [] for c in configs}
    first = {}
    for k in range(args.rounds):
        for side, n in configs:
            if side == "ddp":
                j = run_ddp(args, n, dump, tmp)
            else:
                j = run_attune(args, n, tmp, independent=side == "alone")
            # "alone": samples/s is the sum over the processes; its step time
            # the one that gives it (rank 0's own times are not the others').
            steps[(side, n)] += j["steps_ms"] if side != "alone" else [j["step_ms"]]
            first[(side, n)] = j["first_loss"]
        print("round %d/%d done" % (k + 1, args.rounds), file=sys.stderr, flush=True)
    loss_diff = max(abs(first[c] - first[("ddp", 1)]) for c in configs)
    if loss_diff > 1e-4:
        sys.exit("parallel_bench.py: the first step's losses differ (%s): not the same model and batch" % first)
    sps = {}
    print("alone: %d Attune processes training at once, each on its own core, with no communication "
          "(this machine's ceiling for %d ranks)" % (args.ranks, args.ranks))
    print("batch %d per rank, 1 thread per rank, %d turns x %d steps per configuration; median step time"
          % (args.batch, args.rounds, args.steps))
    print("%-8s %6s %10s %12s" % ("side", "ranks", "step ms", "samples/s"))
    for side, n in configs:
        ms = statistics.median(steps[(side, n)])
        sps[(side, n)] = n * args.batch * 1e3 / ms
        print("%-8s %6d %10.3f %12.1f" % (side, n, ms, sps[(side, n)]))
    n = args.ranks
    result = {
        "attune_over_ddp_1": sps[("attune", 1)] / sps[("ddp", 1)],
        "attune_over_ddp_n": sps[("attune", n)] / sps[("ddp", n)],
        "attune_efficiency": sps[("attune", n)] / (n * sps[("attune", 1)]),
        "ddp_efficiency": sps[("ddp", n)] / (n * sps[("ddp", 1)]),
        "ceiling_efficiency": sps[("alone", n)] / (n * sps[("attune", 1)]),
        "attune_of_ceiling": sps[("attune", n)] / sps[("alone", n)],
        "samples_per_s": {"%s_%d" % c: v for c, v in sps.items()},
        "first_loss_diff": loss_diff,
    }
    print("Attune / DDP: %.3f at 1 rank, %.3f at %d ranks; scaling efficiency at %d ranks: Attune %.1f %%, DDP %.1f %%"
          % (result["attune_over_ddp_1"], result["attune_over_ddp_n"], n, n,
             100 * result["attune_efficiency"], 100 * result["ddp_efficiency"]))
    print("%d processes alone (no communication) reach %.1f %% of %d x 1 rank; Attune's %d ranks reach %.1f %% of that"
          % (n, 100 * result["ceiling_efficiency"], n, n, 100 * result["attune_of_ceiling"]))
    return result


def bandwidth(args, tmp):
    out = os.path.join(tmp, "allreduce.json")
    cmd = mpirun(args.ranks) + [args.parallel_bin, "allreduce", "--mib", args.mib, "--iters", str(args.iters),
                                "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("parallel_bench.py: %s exited %d:\n%s" % (" ".join(cmd), r.returncode, r.stderr))
    print(r.stdout, end="")
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="the build folder")
    ap.add_argument("--ranks", type=int, default=2, help="N, beside 1")
    ap.add_argument("--batch", type=int, default=32, help="patients per rank per step")
    ap.add_argument("--rounds", type=int, default=6, help="turns per configuration")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per turn")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per turn first")
    ap.add_argument("--mib", default="1,4,16,64", help="all-reduce sizes (MiB)")
    ap.add_argument("--iters", type=int, default=20, help="timed all-reduces per size")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--ddp-rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-world", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-store", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-dump", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        import torch  # noqa: F401  (the DDP ranks run this interpreter)
    except ImportError:
        sys.exit("parallel_bench.py: %s has no torch (Debian: python3-torch; run /usr/bin/python3)" % sys.executable)
    if args.ddp_rank is not None:
        ddp_rank(args)
        return 0
    args.parallel_bin = os.path.join(args.build, "experiments", "attune-bench-parallel")
    args.model_bin = os.path.join(args.build, "experiments", "attune-bench-model")
    for b in (args.parallel_bin, args.model_bin):
        if not os.access(b, os.X_OK):
            sys.exit("parallel_bench.py: %s is not an executable (build first with MPI found, or pass --build)" % b)
    if args.ranks < 2 or args.ranks > os.cpu_count():
        sys.exit("parallel_bench.py: --ranks must be 2..%d (one core per rank)" % os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        t = throughput(args, tmp)
        print()
        b = bandwidth(args, tmp)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"throughput": t, "allreduce": b}, f, indent=1)
    ok_speed = t["attune_over_ddp_n"] >= SPEED_TARGET
    ok_eff = t["attune_efficiency"] >= EFFICIENCY_TARGET
    print("targets: Attune / DDP at %d ranks >= %.2f: %s; scaling efficiency >= %d %%: %s"
          % (args.ranks, SPEED_TARGET, "ok" if ok_speed else "UNDER", 100 * EFFICIENCY_TARGET,
             "ok" if ok_eff else "UNDER"))
    return 0 if ok_speed and ok_eff else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""CPU speed of the method's parts against the machine's own ceiling: each learner update and the acting GC-agent.

    python bench/cpu_speed.py                                   # default preset, this CPU, fp32 and bf16
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/cpu_speed.py

Times, with the project's own code (Learner.update_*, RolloutWorker.collect) on synthetic batches of the
preset's sizes: the unfolded proposal update, the selection update, the Q update (and the afterstate value
update where the preset has one), and one acting rollout (per environment step). FLOPs are counted by
torch.utils.flop_counter (convolutions and matrix products, forward and backward), divided by the median time,
and compared with the machine's fp32 ceiling: a large fp32 matmul (torch.mm, 2048 x 2048) on all threads.
Variants run interleaved in one process, round after round, so a busy machine slows all alike: the U-Net's
activation layout (NCHW, channels-last) and the precision (float32, bf16 autocast). Prints a table; asserts
nothing. The ISA variables above imitate a CPU without AVX-512 or native bfloat16.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from common.device import native_bf16  # noqa: E402
from common.method.networks import ProposalUNet  # noqa: E402
from common.method.presets import PRESETS  # noqa: E402
from learner.builder import Builder  # noqa: E402

IMAGE = (1, 28, 28)
LAYOUTS = {"nchw": False, "channels-last": True}


def matmul_ceiling(dtype=torch.float32, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of torch.mm on all threads: the machine's practical ceiling for dense work."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - began) / 1e9


def synthetic_batches(config, rng: np.random.Generator) -> dict:
    """Replay batches of the preset's sizes, as the learner receives them."""
    mdp, learning = config.mdp, config.learning
    h, a = mdp.horizon, mdp.num_proposals

    def steps(n):
        return {"state": rng.uniform(-1, 1, (n, *IMAGE)).astype(np.float32), "step": rng.integers(0, h, n).astype(np.int16),
                "selection": rng.integers(0, a, n).astype(np.int16)}

    gc = {**steps(learning.q_batch), "next_state": rng.uniform(-1, 1, (learning.q_batch, *IMAGE)).astype(np.float32),
          "loss": np.zeros(learning.q_batch, np.float32), "goal_index": rng.integers(0, 1000, learning.q_batch)}
    return {"proposal": {"selections": rng.integers(0, a, (learning.proposal_batch, h)).astype(np.int16),
                         "goal_index": rng.integers(0, 1000, learning.proposal_batch)},
            "selection": steps(learning.selection_batch), "gc": gc}


def parts(config, bf16: bool, seed: int = 0) -> dict:
    """name -> a call running that part once, over a learner and a rollout worker built as a run builds them."""
    config = dataclasses.replace(config, acting=dataclasses.replace(config.acting, bf16=bf16),
                                 learning=dataclasses.replace(config.learning, bf16=bf16))
    builder = Builder(config, IMAGE, 1000)
    goals = torch.randint(0, 256, (1000, *IMAGE), dtype=torch.uint8)
    learner = builder.make_learner(builder.make_agent(seed), goals, torch.zeros(IMAGE), torch.device("cpu"))
    worker = builder.make_rollout_worker(learner.agent, goals, torch.zeros(IMAGE), torch.device("cpu"), seed)
    batches = synthetic_batches(config, np.random.default_rng(seed))
    calls = {"proposal update": lambda: learner.update_proposal(batches["proposal"]),
             "selection update": lambda: learner.update_selection(batches["selection"]),
             "acting rollout": lambda: worker.collect()}
    if learner.train_q:
        calls["q update"] = lambda: learner.update_q(batches["gc"])
    if learner.target_value is not None:
        calls["value update"] = lambda: learner.update_value(batches["gc"])
    return calls


def count_flops(call) -> int:
    """FLOPs of one call (convolutions and matrix products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def measure(variants: dict, rounds: int) -> dict:
    """(variant, part) -> sorted seconds, interleaved round after round."""
    times = {}
    for _ in range(rounds):
        for name, (layout, calls) in variants.items():
            ProposalUNet.channels_last = LAYOUTS[layout]
            for part, call in calls.items():
                began = time.perf_counter()
                call()
                times.setdefault((name, part), []).append(time.perf_counter() - began)
    return {k: sorted(v) for k, v in times.items()}


def main(argv=None) -> None:
    """Build every variant, warm it up, count its FLOPs, time it, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=tuple(PRESETS), default="small-lookahead")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = PRESETS[args.preset]()
    native, why = native_bf16(torch.device("cpu"))
    ceiling = matmul_ceiling()
    # bf16's ceiling only when bf16 is measured: emulated (no native bf16) a 2048-wide bf16 matmul takes minutes
    bf16 = f"; bf16 matmul {matmul_ceiling(torch.bfloat16, 1024 if native else 256):.1f} GFLOP/s" \
        if "bf16" in args.precisions else ""
    print(f"CPU: {why}; {args.threads} threads; fp32 matmul ceiling {ceiling:.1f} GFLOP/s{bf16}", flush=True)
    variants, flops = {}, {}
    for layout in args.layouts:
        for precision in args.precisions:
            ProposalUNet.channels_last = LAYOUTS[layout]
            calls = parts(config, precision == "bf16")
            for call in calls.values():
                call()  # warm-up: oneDNN builds its kernels for each shape once
            flops.update({part: count_flops(call) for part, call in calls.items()})
            variants[f"{layout}, {precision}"] = (layout, calls)
    times = measure(variants, args.rounds)
    steps = config.acting.goals_per_rollout * config.mdp.horizon
    print(f"{'variant':<22} {'part':<17} {'median ms':>10} {'GFLOP':>7} {'GFLOP/s':>8} {'of ceiling':>10}")
    for (name, part), seconds in times.items():
        median = seconds[len(seconds) // 2]
        extra = f"  ({median / steps * 1000:.2f} ms per environment step)" if part == "acting rollout" else ""
        rate = flops[part] / median / 1e9
        print(f"{name:<22} {part:<17} {median * 1000:>10.1f} {flops[part] / 1e9:>7.2f} {rate:>8.1f} "
              f"{rate / ceiling:>9.0%}{extra}", flush=True)


if __name__ == "__main__":
    main()

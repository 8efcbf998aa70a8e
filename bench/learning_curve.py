#!/usr/bin/env python3
"""How fast the GC-agent learns to reconstruct a fixed set of goals, against the best a single image can do.

    python bench/learning_curve.py --num-goals 16 --minutes 20

Trains the single-process reference on the first N training images and prints, every --every seconds,
the GC-agent's reconstruction MSE (with the encoder it acts with: Q-network or lookahead) (per pixel, [-1, 1] scale), how many goals got distinct
selection sequences, and the S-agent's cross-entropy on the GC-agent's latest choices. The "mean
baseline" is the MSE of the goals' mean image: a model below it reconstructs goals individually, which
a model that only learned the mean cannot. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deploy.cli import parse_train  # noqa: E402
from common.storage.data import load_goals  # noqa: E402
from common.method.losses import selection_cross_entropy  # noqa: E402
from evaluation.inference import encoder_of, reconstruct  # noqa: E402
from deploy.single_process import SingleProcessTrainer  # noqa: E402


def parse_args() -> argparse.Namespace:
    """The curve's own flags; anything after them is passed to the training flags (e.g. --set ...)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-goals", type=int, default=16)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--every", type=float, default=60.0, help="seconds between readings")
    p.add_argument("--preset", default="small")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args, rest = p.parse_known_args()
    args.training = rest
    return args


def reading(trainer: SingleProcessTrainer, pixels: torch.Tensor) -> tuple[float, int, float]:
    """(reconstruction MSE, distinct sequences among the goals, S-agent cross-entropy on recent choices)."""
    learner = trainer.learner
    reconstruction = reconstruct(learner.agent, learner.x1, learner.rates, pixels, **encoder_of(trainer.config))
    with torch.no_grad():
        batch = trainer.replay.selections.sample(1024, np.random.default_rng(0))
        logits = learner.agent.selection(torch.from_numpy(batch["state"]).to(learner.device),
                                         torch.from_numpy(batch["step"].astype(np.int64)).to(learner.device))
        cross_entropy = float(selection_cross_entropy(
            logits, torch.from_numpy(batch["selection"].astype(np.int64)).to(learner.device)))
    return reconstruction.mse, len({tuple(s) for s in reconstruction.codes.tolist()}), cross_entropy


def main() -> None:
    """Train in slices of --every seconds and print one line per slice."""
    args = parse_args()
    flags = ["--runtime", "single-process", "--preset", args.preset, "--data-dir", str(args.data_dir),
             "--num-goals", str(args.num_goals), "--total-updates", str(10**12), "--progress-every", "1e9",
             *(["--threads", str(args.threads)] if args.threads else []), *args.training]
    command = parse_train(flags, "learning curve")
    goals = load_goals("mnist", args.data_dir).subset(args.num_goals)
    trainer = SingleProcessTrainer(command.config, goals, command.run, command.preset_name)
    pixels = goals.goals(np.arange(len(goals)), trainer.device)
    baseline = float((pixels - pixels.mean(dim=0)).pow(2).mean())
    print(f"preset {command.preset_name}, {len(goals)} goals, torch threads {torch.get_num_threads()}; "
          f"mean baseline MSE {baseline:.3f}", flush=True)
    print(f"{'seconds':>8} {'updates':>8} {'recon MSE':>10} {'x baseline':>10} {'distinct':>8} {'S-agent CE':>10}")
    started = time.monotonic()
    while time.monotonic() - started < args.minutes * 60:
        slice_end = time.monotonic() + args.every
        while time.monotonic() < slice_end:
            if not trainer.learn():
                trainer.act()
        if trainer.learner.counts.steps:
            mse, distinct, ce = reading(trainer, pixels)
            print(f"{time.monotonic() - started:8.0f} {trainer.learner.counts.steps:8d} {mse:10.3f} "
                  f"{mse / baseline:10.2f} {distinct:8d} {ce:10.3f}", flush=True)


if __name__ == "__main__":
    main()

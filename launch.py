#!/usr/bin/env python3
"""Train a generative model with goal-conditioned RL (Vargas Vieyra and Menard), locally or on Ray.

    python launch.py                                  # Ray, started locally, on MNIST
    python launch.py --runtime single-process         # the one-process reference trainer
    ray submit deploy/cluster.yaml launch.py -- --num-actors 64

`ray submit` copies only this file to the head node, so everything it runs comes from the installed
package; this file only dispatches and turns bad input into one line on stderr (exit status 2).
"""

from __future__ import annotations

import os
import sys

from common.errors import UserError

DESCRIPTION = __doc__.splitlines()[0]


def train(argv: list[str]) -> int:
    """Parse flags, load the goals, run the chosen runtime."""
    from common.cli import parse_train
    from common.data import load_goals

    command = parse_train(argv, DESCRIPTION)
    print(f"preset: {command.preset_name} ({'chosen' if command.args.preset else 'default'}), "
          f"runtime: {command.runtime}, dataset: {command.data.dataset}", flush=True)
    goals = load_goals(command.data.dataset, command.data.data_dir, "train", command.data.download)
    if command.data.num_goals:
        goals = goals.subset(command.data.num_goals)
    if command.runtime == "single-process":
        from learner.single_process import SingleProcessTrainer

        summary = SingleProcessTrainer(command.config, goals, command.run, command.preset_name).run()
    else:
        if not command.args.address:  # a local Ray needs no routable address: keep it on loopback
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from deploy.driver import run_distributed

        summary = run_distributed(command, goals)
    print(f"done: {summary.updates} updates, {summary.env_steps} env steps in {summary.seconds:.0f}s "
          f"(stopped by {summary.stopped_by}); checkpoint: {summary.checkpoint or 'none'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: every UserError becomes `error: ...` on one line and status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return train(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

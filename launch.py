#!/usr/bin/env python3
"""Train a generative model with goal-conditioned RL (Vargas Vieyra and Menard), locally or on Ray.

    python launch.py                                  # Ray, started locally, on MNIST
    python launch.py --runtime single-process         # the one-process reference trainer
    python launch.py evaluate --checkpoint runs/x     # also: sample, encode, decode (evaluation/commands.py)
    python launch.py sweep --checkpoint-dir runs/s --grid acting.beam_width=1,2   # Ray Tune (deploy/sweep.py)
    ray submit deploy/cluster.yaml launch.py -- --num-actors 64

`ray submit` copies only this file to the head node, so everything it runs comes from the installed
package; this file only dispatches and turns bad input into one line on stderr (exit status 2). A training
run that ends without a single learner update says why on one `error:` line and exits with status 1.
"""

from __future__ import annotations

import os
import sys

from common.errors import UserError

DESCRIPTION = __doc__.splitlines()[0]
EVAL_COMMANDS = ("evaluate", "sample", "encode", "decode")


def train(argv: list[str]) -> int:
    """Parse flags, load the goals, run the chosen runtime."""
    from common.device import precision_line, resolve_device
    from common.method.networks import check_image_size
    from deploy.cli import parse_train
    from deploy.inputs import training_evaluation, training_goals

    command = parse_train(argv, DESCRIPTION)
    print(f"preset: {command.preset_name} ({'chosen' if command.preset_chosen else 'default'}), "
          f"runtime: {command.runtime}, dataset: {command.data.dataset}", flush=True)
    print(precision_line(command.config, resolve_device(command.run.device))
          + ("" if command.runtime == "single-process" else " (Ray actors resolve auto on their own devices)"),
          flush=True)
    goals = training_goals(command)
    check_image_size(tuple(goals.image_shape), len(command.config.network.proposal_widths))  # before Ray starts
    evaluation = training_evaluation(command, goals)
    if command.runtime == "single-process":
        from deploy.single_process import SingleProcessTrainer

        summary = SingleProcessTrainer(command.config, goals, command.run, command.preset_name, evaluation).run()
    else:
        if not command.ray.address:  # a local Ray needs no routable address: keep it on loopback
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from deploy.ray_driver import run_distributed

        summary = run_distributed(command, goals, evaluation)
    print(f"done: {summary.updates} updates, {summary.env_steps} env steps in {summary.seconds:.0f}s "
          f"(stopped by {summary.stopped_by}); checkpoint: {summary.checkpoint or 'none'}", flush=True)
    if summary.stalled:  # a run that learned nothing is a failure, whatever stopped it
        print(f"error: no learner update in {summary.seconds:.0f}s (stopped by {summary.stopped_by}): {summary.stalled}",
              file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: every UserError becomes `error: ...` on one line and status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in EVAL_COMMANDS:
            from evaluation.commands import main as evaluation_main

            return evaluation_main(argv)
        if argv and argv[0] == "sweep":
            from deploy.sweep import main as sweep_main

            return sweep_main(argv[1:])
        return train(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Quality benchmark: does the model learn on full data? Reconstruction, codes, samples and FID over time.

    python bench/quality.py --minutes 30 --every 2.5 --output runs/quality   # default preset, single process
    python bench/quality.py --minutes 10 --runtime ray -- --set acting.behaviour=q

Trains on the whole training set with either runtime for --minutes of training (the time spent here
measuring is not counted) and every --every minutes records, on 1,000 fixed test images: the
reconstruction MSE (per pixel, [-1, 1]) of each encoder (the Q-agent's greedy choice, the lookahead),
beside the mean-image baseline; how many distinct codes each gives; the S-agent's cross-entropy on the
acting encoder's choices along its test trajectories; a grid of 64 S-agent samples. At --fid-minutes and
at the end it computes the sample FID of --fid-samples S-agent samples against the training set, beside
the same-N floor (that many test images against the same reference). Writes quality.json, curve.png and
sample grids into --output and prints a table. Asserts nothing. Flags after `--` go to launch.py's
training flags (--preset, --set, --threads, ...).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
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
from evaluation.inference import ENCODERS, encoder_of, reconstruct, sample  # noqa: E402
from evaluation.figures import line_chart, reconstructions_figure, samples_figure  # noqa: E402
from common.method.losses import selection_cross_entropy  # noqa: E402
from common.method.mdp import step_rates, transition  # noqa: E402
from deploy.tracking import flat_scalars, log_points  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's own flags; what follows `--` (or is unknown) goes to the training flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes (measuring not counted)")
    p.add_argument("--every", type=float, default=2.5, help="minutes between readings")
    p.add_argument("--runtime", choices=("single-process", "ray"), default="single-process")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--output", type=Path, default=Path("runs/quality"))
    p.add_argument("--num-test", type=int, default=1000, help="fixed test images reconstructed at each reading")
    p.add_argument("--fid-samples", type=int, default=1000, help="S-agent samples for FID (0: no FID)")
    p.add_argument("--fid-reference", type=int, default=2000, help="training images in the FID reference")
    p.add_argument("--fid-minutes", type=float, nargs="*", default=[10.0], help="FID also at these minutes")
    p.add_argument("--seed", type=int, default=0)
    args, rest = p.parse_known_args(argv)
    for name, value in (("--minutes", args.minutes), ("--every", args.every), ("--num-test", args.num_test)):
        if value <= 0:
            p.error(f"{name} must be positive, got {value}")
    args.training = [a for a in rest if a != "--"]
    return args


class QualityProbe:
    """The run's periodic evaluation hook (due/run, like TrainingEvaluation) that measures quality.

    Keeps a training clock that excludes its own time, stops the run (SIGINT to this process, which
    both runtimes turn into a clean stop) once --minutes of training have passed, and keeps a copy of
    the agent at each FID time, so FID is computed after training.
    """

    def __init__(self, args, config, test_pixels: torch.Tensor, baseline: float, output: Path):
        self.args, self.config, self.test, self.baseline, self.output = args, config, test_pixels, baseline, output
        self.device = torch.device("cpu")
        self.readings, self.snapshots = [], []  # snapshots: (minutes, updates, agent copy) for FID
        self.fid_due = sorted(m for m in args.fid_minutes if m < args.minutes)
        self.started, self.measuring, self.done = None, 0.0, False
        self.marks = reading_marks(args.every, args.minutes)  # training minutes of the readings, untrained first

    def training_minutes(self) -> float:
        """Minutes since the first call, less the time spent measuring."""
        if self.started is None:
            self.started = time.monotonic()
        return (time.monotonic() - self.started - self.measuring) / 60.0

    def due(self) -> bool:
        """A reading is due at each mark (see reading_marks)."""
        return not self.done and bool(self.marks) and self.training_minutes() >= self.marks[0]

    @torch.no_grad()
    def run(self, agent, x1: torch.Tensor, updates: int) -> dict:
        """One reading; the last one also stops the run."""
        began, minutes = time.monotonic(), self.training_minutes()
        agent.eval()
        reading = {"minutes": round(minutes, 2), "updates": int(updates), **self.measure(agent, x1, updates)}
        agent.train()
        self.readings.append(reading)
        print(format_reading(reading, self.baseline), flush=True)
        if self.fid_due and minutes >= self.fid_due[0] or minutes >= self.args.minutes:
            self.snapshots.append((round(minutes, 2), int(updates), copy.deepcopy(agent).cpu().eval()))
            self.fid_due = self.fid_due[1:] if self.fid_due and minutes >= self.fid_due[0] else self.fid_due
        self.marks = [m for m in self.marks if m > minutes]
        if minutes >= self.args.minutes:
            self.done = True
            os.kill(os.getpid(), signal.SIGINT)  # both runtimes: finish the step, checkpoint, return
        self.measuring += time.monotonic() - began
        return {"reconstruction_mse": reading["mse"][self.config.acting.behaviour], "sample_fid": None,
                "scalars": flat_scalars(reading, "quality")}  # the run's TensorBoard log gets every reading

    def measure(self, agent, x1: torch.Tensor, updates: int) -> dict:
        """MSE and distinct codes per encoder, the S-agent's cross-entropy, a sample grid."""
        rates = step_rates(self.config.mdp, x1.device)
        mse, distinct, recons = {}, {}, {}
        for encoder in ENCODERS:
            settings = encoder_of(self.config, encoder)
            recons[encoder] = reconstruct(agent, x1, rates, self.test, 250, **settings)
            mse[encoder] = recons[encoder].mse
            distinct[encoder] = len({tuple(c) for c in recons[encoder].codes.tolist()})
        acting = recons[self.config.acting.behaviour]
        cross_entropy = s_agent_cross_entropy(agent, x1, rates, acting.codes)
        samples = sample(agent, x1, rates, 64, seed=self.args.seed, keep_trajectories=0)
        samples_figure(samples.images, self.output / f"samples-{updates:06d}.png", limit=64)
        reconstructions_figure(self.test[:32], acting.images, self.output / "reconstructions-latest.png", limit=32)
        return {"mse": mse, "distinct_codes": distinct, "s_agent_cross_entropy": cross_entropy}


def reading_marks(every: float, minutes: float) -> list[float]:
    """0 (untrained), 0.5 and 1 minute (to time leaving the mean), then every `every` minutes, and the end."""
    marks = {0.0, 0.5, 1.0, minutes} | {round(k * every, 6) for k in range(1, int(minutes / every) + 1)}
    return sorted(m for m in marks if m <= minutes)


def s_agent_cross_entropy(agent, x1: torch.Tensor, rates: torch.Tensor, codes: torch.Tensor) -> float:
    """-log S-select(a_h | x_h, h) averaged over the steps of the encoder's trajectories (codes [N, H])."""
    total = 0.0
    state = x1.unsqueeze(0).expand(codes.shape[0], *x1.shape)
    for h in range(codes.shape[1]):
        step = torch.full((codes.shape[0],), h, dtype=torch.long)
        total += float(selection_cross_entropy(agent.selection(state, step), codes[:, h]))
        state = transition(state, agent.proposal(state, step, codes[:, h]), rates[h])
    return total / codes.shape[1]


def format_reading(r: dict, baseline: float) -> str:
    """One table row: minutes, updates, MSE and distinct codes per encoder, cross-entropy."""
    cells = "".join(f" {r['mse'][e]:>9.4f} {r['mse'][e] / baseline:>6.2f}x {r['distinct_codes'][e]:>6d}"
                    for e in ENCODERS)
    return f"{r['minutes']:>7.1f} {r['updates']:>8d}{cells} {r['s_agent_cross_entropy']:>8.3f}"


def header() -> str:
    """Column names of format_reading."""
    cells = "".join(f" {e + ' MSE':>9} {'/base':>7} {'codes':>6}" for e in ENCODERS)
    return f"{'minutes':>7} {'updates':>8}{cells} {'S-CE':>8}"


def train(args, command, goals, probe: QualityProbe):
    """Run the chosen runtime with the probe as its periodic evaluation; no time limit but the probe's."""
    if args.runtime == "single-process":
        from deploy.single_process import SingleProcessTrainer

        return SingleProcessTrainer(command.config, goals, command.run, command.preset_name, probe).run()
    from deploy.ray_driver import run_distributed

    return run_distributed(command, goals, probe)


def fid_results(args, goals, test_goals, snapshots, x1: torch.Tensor, config) -> list[dict]:
    """Sample FID of each snapshot against the training reference, and the same-N floor."""
    if args.fid_samples <= 0 or not snapshots:
        return []
    from evaluation.fid import ReferenceCache, reference_stats, training_scorer

    scorer = training_scorer(goals, args.fid_reference)
    floor = scorer.distance(scorer.reference, reference_stats(scorer, test_goals, args.fid_samples, ReferenceCache()))
    rates = step_rates(config.mdp)
    results = []
    for minutes, updates, agent in snapshots:
        samples = sample(agent, x1.cpu(), rates, args.fid_samples, seed=args.seed, keep_trajectories=0)
        fid = scorer.score(samples.images)
        results.append({"minutes": minutes, "updates": updates, "sample_fid": fid, "floor": floor,
                        "ratio": fid / floor})
        print(f"FID@{args.fid_samples} at {minutes:.1f} min ({updates} updates): {fid:.2f}; same-N floor "
              f"{floor:.2f}; ratio {fid / floor:.2f}", flush=True)
    return results


def draw_curves(readings: list[dict], fids: list[dict], baseline: float, path: Path) -> None:
    """MSE per encoder and the mean baseline against minutes and against updates; FID points too.

    The untrained reading (MSE far above everything after it) is left out so the scale shows learning.
    """
    readings = [r for r in readings if r["updates"] > 0] or readings
    series = {f"{e} MSE": [r["mse"][e] for r in readings] for e in ENCODERS}
    series["mean baseline"] = [baseline] * len(readings)
    panels = [("reconstruction MSE vs minutes", [r["minutes"] for r in readings], series),
              ("reconstruction MSE vs updates", [r["updates"] for r in readings], series)]
    if fids:
        panels.append(("sample FID / same-N floor vs minutes", [f["minutes"] for f in fids],
                       {"FID ratio": [f["ratio"] for f in fids]}))
    line_chart(panels, path)


def main(argv=None) -> None:
    """Train, read, score, draw, print."""
    args = parse_args(argv)
    flags = ["--runtime", args.runtime, "--dataset", args.dataset, "--data-dir", str(args.data_dir),
             "--total-updates", str(10**12), "--progress-every", "120", "--eval-every", "0",
             "--seed", str(args.seed), "--log-dir", str(args.output / "tb"), *args.training]
    command = parse_train(flags, "quality benchmark")
    goals, test_goals = load_goals(args.dataset, args.data_dir), load_goals(args.dataset, args.data_dir, "test")
    test = test_goals.goals(np.arange(min(args.num_test, len(test_goals))))
    baseline = float((test - goals.mean_image()).pow(2).mean())
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"preset {command.preset_name}, runtime {args.runtime}, {len(goals)} goals, {test.shape[0]} test images, "
          f"torch threads {torch.get_num_threads()}; mean-image baseline MSE {baseline:.4f}", flush=True)
    print(f"settings: {json.dumps(command.config.to_dict())}", flush=True)
    print(header(), flush=True)
    probe = QualityProbe(args, command.config, test, baseline, args.output)
    summary = train(args, command, goals, probe)
    x1 = torch.zeros(goals.image_shape) if command.config.mdp.initial_state == "zeros" else goals.mean_image()
    fids = fid_results(args, goals, test_goals, probe.snapshots, x1, command.config)
    log_points(args.output / "tb", [(f["updates"], flat_scalars(f, "quality/fid")) for f in fids])
    draw_curves(probe.readings, fids, baseline, args.output / "curve.png")
    report = {"preset": command.preset_name, "runtime": args.runtime, "training_flags": args.training,
              "config": command.config.to_dict(), "minutes": args.minutes, "baseline_mse": baseline,
              "updates": summary.updates, "env_steps": summary.env_steps, "readings": probe.readings, "fid": fids}
    (args.output / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}/quality.json, curve.png and sample grids", flush=True)


if __name__ == "__main__":
    main()

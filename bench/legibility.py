#!/usr/bin/env python3
"""Legible samples: the share of S-agent samples a digit classifier reads with confidence, and how many classes.

    python bench/legibility.py --checkpoint runs/quickstart --temperatures 1 0.8 --top-k 0 8

"Clean, varied digits, no malformed majority" (the quickstart's target) made a number instead of a look. A small
CNN, trained here on the dataset's training split (cached under --cache, read back with weights_only), classifies
each sample; a sample is *legible* when the classifier's top class has probability at least --threshold. Per
sampling setting it prints the legible share, the classes the legible samples cover (a class counts when it holds
at least --class-share of them) and the normalised entropy of their classes (1: all ten equally often). The first
row scores the same number of real test images: the ceiling at this threshold. A fused or broken digit is what the
classifier cannot place, so it falls below the threshold (tests/test_legibility.py checks that on blends of two
digits). It complements FID, which scores the distribution, not each image. Asserts nothing; writes
legibility.json and a grid per setting into --output.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from common.device import resolve_bf16  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.method.pixels import to_unit_range  # noqa: E402
from common.storage.data import load_goals, load_labels  # noqa: E402
from evaluation.figures import samples_figure  # noqa: E402
from evaluation.files import write_json  # noqa: E402
from evaluation.inference import sample  # noqa: E402
from evaluation.model import WEIGHTS, load_model  # noqa: E402

NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """Two conv blocks and two linear layers: 98.3 % on MNIST's test split after two epochs."""

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 32, H/2, W/2]
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 64, H/4, W/4]
            nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> logits [B, 10]."""
        return self.net(to_unit_range(images))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 2, batch: int = 128,
                     seed: int = 0) -> DigitClassifier:
    """Adam on shuffled minibatches of uint8 images [N, C, H, W] and their classes [N]."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(tuple(images.shape[1:]))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(images.shape[0], generator=generator).split(batch):
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def probabilities(model: DigitClassifier, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """uint8 [N, C, H, W] -> class probabilities [N, 10]."""
    return torch.cat([model(images[i:i + batch]).softmax(-1) for i in range(0, images.shape[0], batch)])


def legibility(probs: torch.Tensor, threshold: float = 0.9, class_share: float = 0.02) -> dict:
    """Legible share, the classes the legible images cover, and their normalised class entropy."""
    confidence, classes = probs.max(-1)
    legible = classes[confidence >= threshold]
    counts = torch.bincount(legible, minlength=NUM_CLASSES)
    shares = counts.float() / max(int(counts.sum()), 1)
    entropy = -float((shares[shares > 0] * shares[shares > 0].log()).sum()) / math.log(NUM_CLASSES)
    return {"legible_share": legible.numel() / probs.shape[0], "classes_covered": int((shares >= class_share).sum()),
            "class_entropy": entropy, "class_counts": counts.tolist()}


def scores_of(classifier: DigitClassifier, threshold: float, class_share: float, images: torch.Tensor) -> dict:
    """legibility() of uint8 images [N, C, H, W] as this classifier reads them."""
    return legibility(probabilities(classifier, images), threshold, class_share)


def cached_classifier(dataset: str, data_dir, cache: Path, epochs: int) -> tuple[DigitClassifier, float]:
    """The dataset's classifier (trained and saved once) and its test accuracy."""
    path = cache / f"{dataset}-classifier-e{epochs}.pt"
    train = load_goals(dataset, data_dir)
    if path.exists():
        model = DigitClassifier(train.image_shape)
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval().requires_grad_(False)
    else:
        model = train_classifier(train.images, load_labels(dataset, data_dir), epochs)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # never a half-written cache
    test, labels = load_goals(dataset, data_dir, "test"), load_labels(dataset, data_dir, "test")
    accuracy = float((probabilities(model, test.images).argmax(-1) == labels).float().mean())
    return model, accuracy


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's settings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder or a run's --checkpoint-dir")
    p.add_argument("--temperatures", type=float, nargs="+", default=None, help="default: the checkpoint's own")
    p.add_argument("--top-k", type=int, nargs="+", default=None, help="0: all A; default: the checkpoint's own")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--threshold", type=float, default=0.9, help="the classifier's confidence a legible sample has")
    p.add_argument("--class-share", type=float, default=0.02, help="a class is covered from this share of legible")
    p.add_argument("--epochs", type=int, default=2, help="the classifier's training epochs")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--cache", type=Path, default=REPO_ROOT / "runs" / "legibility-cache")
    p.add_argument("--output", type=Path, default=None, help="default: <checkpoint>/legibility")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=WEIGHTS, default="averaged")
    args = p.parse_args(argv)
    if not 0 < args.threshold < 1 or args.samples < 1:
        p.error(f"--threshold must be in (0, 1) and --samples at least 1, got {args.threshold} and {args.samples}")
    return args


def settings_of(args, model) -> list[tuple[float, int]]:
    """(temperature, top-k) pairs: the flags' grid, or the checkpoint's own sampling settings."""
    own = model.config.sampling
    temperatures = args.temperatures or [own.temperature]
    tops = args.top_k if args.top_k is not None else [own.top_k]
    return [(t, k) for t in temperatures for k in tops]


def report_row(label: str, scores: dict) -> str:
    """One printed line."""
    return (f"{label:<22} legible {scores['legible_share']:6.1%}  classes {scores['classes_covered']:>2}  "
            f"class entropy {scores['class_entropy']:.3f}  counts {scores['class_counts']}")


def main(argv=None) -> int:
    """Train or read the classifier, score real test images, then the samples of each setting."""
    args = parse_args(argv)
    try:
        model = load_model(args.checkpoint, "cpu", args.weights)
        dataset = model.dataset.get("name", "mnist")
        classifier, accuracy = cached_classifier(dataset, args.data_dir, args.cache, args.epochs)
        test = load_goals(dataset, args.data_dir, "test").images[:args.samples]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = args.output or model.path.parent / "legibility"
    output.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {model.path} (update {model.updates}); {dataset} classifier test accuracy {accuracy:.4f}")
    score = partial(scores_of, classifier, args.threshold, args.class_share)
    rows = [{"label": f"real test images ({test.shape[0]})", **score(test)}]
    print(report_row(rows[0]["label"], rows[0]), flush=True)
    bf16 = resolve_bf16(model.config.acting.bf16, model.device)
    for temperature, top_k in settings_of(args, model):
        images = sample(model.agent, model.x1, model.rates, args.samples, seed=args.seed, keep_trajectories=0,
                        bf16=bf16, temperature=temperature, top_k=top_k or None).images
        samples_figure(images, output / f"samples-t{temperature:g}-k{top_k}.png", limit=64)
        rows.append({"label": f"T {temperature:g}, top-k {top_k or 'all'}", "temperature": temperature,
                     "top_k": top_k, **score(images)})
        print(report_row(rows[-1]["label"], rows[-1]), flush=True)
    write_json(output / "legibility.json", {"checkpoint": str(model.path), "updates": model.updates,
                                            "classifier_accuracy": accuracy, "threshold": args.threshold,
                                            "samples": args.samples, "rows": rows})
    print(f"wrote {output / 'legibility.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

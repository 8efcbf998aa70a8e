#!/usr/bin/env python3
"""Train a Table 1 baseline (VAE or DDPM) for a wall-clock budget or a number of updates.

    python bench/baselines/train.py --model ddpm --minutes 30 --output runs/table1/ddpm
    python bench/baselines/train.py --model vae --updates 2000 --dataset fashion-mnist --device cuda

Adam on minibatches of the training split (MNIST, Fashion-MNIST or an image folder), bf16 autocast
where the CPU computes it natively (as the GCRL presets for a CPU do), an exponential moving average
of the weights (Ho et al.'s recipe for the DDPM). The checkpoint is a folder: weights-<digest>.pt (the averaged
weights, read back with torch.load(weights_only=True)) and baseline.json (kind, settings, dataset,
updates, loss curve, the weights' digest), written in that order so a folder with its JSON is whole.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench.baselines.diffusion import Diffusion, DiffusionConfig  # noqa: E402
from bench.baselines.vae import VAE, VAEConfig  # noqa: E402
from common.storage.checkpoint import file_digest  # noqa: E402
from common.errors import OneLineParser  # noqa: E402
from common.method.config import check_non_negative, check_positive, check_positive_int  # noqa: E402
from common.storage.data import DATASETS, GoalSet, load_goals  # noqa: E402
from common.device import DEVICE_CHOICES, cpu_has_native_bf16, resolve_device  # noqa: E402
from common.errors import CheckpointError, ConfigError, UserError  # noqa: E402

BASELINES = {"vae": (VAEConfig, VAE), "ddpm": (DiffusionConfig, Diffusion)}
DEFAULT_LR = {"vae": 1e-3, "ddpm": 1e-3}
DEFAULT_EMA = {"vae": 0.0, "ddpm": 0.999}
FORMAT = "gcrl-baseline/v1"


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation of a baseline: budget (minutes and/or updates; the first reached ends it) and Adam."""

    minutes: float | None = None
    updates: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    ema: float = 0.0  # weight average decay; 0: none
    grad_clip: float = 1.0
    bf16: bool = False
    seed: int = 0
    progress_every: float = 60.0  # seconds between progress lines

    def __post_init__(self):
        if self.minutes is None and self.updates is None:
            raise ConfigError("a baseline needs a budget: --minutes M or --updates N")
        if self.minutes is not None:
            check_positive("--minutes", self.minutes)
        if self.updates is not None:
            check_positive_int("--updates", self.updates)
        check_positive_int("--batch-size", self.batch_size)
        check_positive("--lr", self.lr)
        check_positive("--grad-clip", self.grad_clip)
        check_non_negative("--progress-every", self.progress_every)
        if not 0 <= self.ema < 1:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")


@dataclass
class TrainSummary:
    """What a budgeted run did: updates, training seconds, the loss averaged over each progress interval."""

    updates: int = 0
    seconds: float = 0.0
    losses: list = dataclasses.field(default_factory=list)  # [(updates, mean loss since the last entry)]


def build(kind: str, config_fields: dict, image_shape) -> torch.nn.Module:
    """The baseline `kind` with its settings (a dict of its config's fields, checked), untrained."""
    if kind not in BASELINES:
        raise ConfigError(f"unknown baseline {kind!r} (expected one of {', '.join(BASELINES)})")
    config_class, model_class = BASELINES[kind]
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config_fields) - names)
    if unknown:
        raise ConfigError(f"unknown {kind} setting(s) {', '.join(unknown)} (expected some of {', '.join(sorted(names))})")
    return model_class(config_class(**config_fields), tuple(image_shape))


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when enabled: training and measuring run the networks the same way."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train(model: torch.nn.Module, goals: GoalSet, settings: TrainSettings, device: torch.device,
          log=print) -> tuple[torch.nn.Module, TrainSummary]:
    """Minimise model.loss on random minibatches until the budget; returns (averaged model, summary)."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model.to(device).train()
    average = copy.deepcopy(model).eval() if settings.ema > 0 else model
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    summary, interval = TrainSummary(), []
    started = last_line = time.monotonic()
    while not _spent(settings, summary.updates, time.monotonic() - started):
        batch = goals.goals(torch.randint(0, len(goals), (settings.batch_size,), generator=generator), device)
        interval.append(_step(model, optimiser, batch, settings, device))
        summary.updates += 1
        if average is not model:
            _ema_update(average, model, settings.ema)
        if time.monotonic() - last_line >= settings.progress_every or _spent(settings, summary.updates,
                                                                              time.monotonic() - started):
            summary.losses.append((summary.updates, sum(interval) / len(interval)))
            log(f"[{time.monotonic() - started:6.0f}s] update {summary.updates}: loss {summary.losses[-1][1]:.5f}")
            interval, last_line = [], time.monotonic()
    summary.seconds = time.monotonic() - started
    return average, summary


def _spent(settings: TrainSettings, updates: int, seconds: float) -> bool:
    return (settings.updates is not None and updates >= settings.updates) or \
        (settings.minutes is not None and seconds >= 60.0 * settings.minutes)


def _step(model, optimiser, batch: torch.Tensor, settings: TrainSettings, device: torch.device) -> float:
    """One Adam step on model.loss(batch); returns the loss."""
    with autocast(device, settings.bf16):
        loss = model.loss(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"baseline loss became {float(loss)}; lower --lr (now {settings.lr})")
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimiser.step()
    return loss.item()


@torch.no_grad()
def _ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for kept, current in zip(average.parameters(), model.parameters()):
        kept.lerp_(current, 1.0 - decay)
    for kept, current in zip(average.buffers(), model.buffers()):
        kept.copy_(current)


def parameter_count(model: torch.nn.Module) -> int:
    """Trainable parameters, for the size comparison in Table 1's notes."""
    return sum(p.numel() for p in model.parameters())


def save_baseline(folder: str | Path, kind: str, model: torch.nn.Module, goals: GoalSet, settings: TrainSettings,
                  summary: TrainSummary) -> Path:
    """weights-<digest>.pt then baseline.json (renamed into place), then older weights files go."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / "weights.pt.tmp"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging)
    digest = file_digest(staging)
    weights = folder / f"weights-{digest[:16]}.pt"  # the old checkpoint stays whole until the JSON moves
    os.replace(staging, weights)
    manifest = {"format": FORMAT, "kind": kind, "config": dataclasses.asdict(model.config),
                "image_shape": list(model.image_shape), "dataset": goals.name, "trained_on": goals.fingerprint(),
                "parameters": parameter_count(model), "settings": dataclasses.asdict(settings),
                "updates": summary.updates, "seconds": round(summary.seconds, 2), "losses": summary.losses,
                "weights": weights.name, "weights_sha256": digest}
    staging = folder / "baseline.json.tmp"
    staging.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging, folder / "baseline.json")
    for old in folder.glob("weights-*.pt"):
        if old != weights:
            old.unlink()
    return folder


def load_baseline(folder: str | Path, device="cpu") -> tuple[str, torch.nn.Module, dict]:
    """(kind, model in eval mode, manifest) from a folder written by save_baseline; one-line errors."""
    folder = Path(folder)
    manifest = _read_manifest(folder / "baseline.json")
    name = str(manifest.get("weights"))
    if Path(name).name != name or not name.endswith(".pt"):
        raise CheckpointError(f"{folder}/baseline.json names weights file {name!r}, expected weights-<digest>.pt")
    weights = folder / name
    if not weights.is_file() or file_digest(weights) != manifest.get("weights_sha256"):
        raise CheckpointError(f"{weights} is missing or does not match the digest in baseline.json")
    model = build(manifest.get("kind"), manifest.get("config") or {}, manifest.get("image_shape") or ())
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)  # never unpickle code
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a weights-only tensor file: {str(exc).splitlines()[0]}") from exc
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{weights} does not fit a {manifest['kind']} of these settings: "
                              f"{str(exc).splitlines()[0]}") from exc
    return manifest["kind"], model.to(device).eval(), manifest


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} not found: expected a baseline folder written by bench/baselines/train.py")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path} has format {got!r}, expected {FORMAT!r}")
    return manifest


def parse_args(argv=None):
    """Flags; errors are one line (ConfigError) naming the flag."""
    p = OneLineParser(prog="bench/baselines/train.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(BASELINES), required=True)
    p.add_argument("--minutes", type=float, help="wall-clock training budget")
    p.add_argument("--updates", type=int, help="update budget (with --minutes: whichever comes first)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", type=Path, help="torchvision-layout folder, or the image folder")
    p.add_argument("--output", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, help="Adam rate (default: 1e-3)")
    p.add_argument("--ema", type=float, help="weight-average decay (default: 0.999 for ddpm, none for vae)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast (auto: on a GPU or a CPU with native bf16)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a model setting, e.g. latent_dim=16 or sample_steps=32 (JSON values)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
    return p.parse_args(argv)


def model_settings(items: list[str]) -> dict:
    """--set NAME=VALUE pairs as a dict; values are JSON (numbers, lists, null) or else strings."""
    fields = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            fields[name] = json.loads(text)
        except json.JSONDecodeError:
            fields[name] = text
    return fields


def settings_from(args, device: torch.device) -> TrainSettings:
    """TrainSettings from the flags, with the per-model defaults."""
    bf16 = {"on": True, "off": False}.get(args.bf16, device.type == "cuda" or cpu_has_native_bf16())
    lr = DEFAULT_LR[args.model] if args.lr is None else args.lr
    ema = DEFAULT_EMA[args.model] if args.ema is None else args.ema
    return TrainSettings(minutes=args.minutes, updates=args.updates, batch_size=args.batch_size, lr=lr, ema=ema,
                         bf16=bf16, seed=args.seed, progress_every=args.progress_every)


def main(argv=None) -> int:
    """Parse, check everything, load data, train, save; a UserError is one line and status 2."""
    try:
        args = parse_args(argv)
        device = resolve_device(args.device)
        settings = settings_from(args, device)
        goals = load_goals(args.dataset, args.data_dir, "train")
        model = build(args.model, model_settings(args.set), goals.image_shape)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model}: {parameter_count(model):,} parameters, {len(goals)} {goals.name} images, device {device}, "
          f"bf16 {settings.bf16}, budget {settings.minutes} min / {settings.updates} updates", flush=True)
    trained, summary = train(model, goals, settings, device)
    folder = save_baseline(args.output, args.model, trained, goals, settings, summary)
    print(f"{summary.updates} updates in {summary.seconds:.0f}s -> {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

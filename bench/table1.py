#!/usr/bin/env python3
"""The paper's Table 1, re-run here: the GCRL model, a VAE and a DDPM trained for the same budget on one
dataset, measured by one protocol, printed beside the paper's own figures with each model's sampling cost.

    python bench/table1.py --minutes 30                       # MNIST, 2 CPU cores: about 2 hours in all
    python bench/table1.py --minutes 30 --dataset fashion-mnist -- --preset paper   # flags after -- go to launch.py
    python bench/table1.py --minutes 30 --curve-every 10     # and both FIDs of the GCRL run at 10, 20, 30 minutes

Each model trains in its own process, one after the other, for --minutes of wall clock (or --updates
updates): the GCRL model through `launch.py --runtime single-process` (its default preset unless flags
after `--` say otherwise), the baselines through bench/baselines/train.py. Then bench/baselines/protocol.py
measures all of them the same way. Writes <output>/table1.json and <output>/table1.png (64 samples per
model). --evaluate-only re-measures checkpoints already in <output>. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.storage.data import DATASETS, load_goals  # noqa: E402
from common.errors import UserError  # noqa: E402
from evaluation.fid import check_fid_dependencies  # noqa: E402
from evaluation.files import write_json  # noqa: E402

MODELS = ("gcrl", "vae", "ddpm")
PAPER = {  # Table 1 of the paper: (reconstruction MSE, reconstruction FID, sample FID); None where it has none
    "mnist": {"vae": (0.12, 16.49, 27.96), "ddpm": (None, None, 1.94), "gcrl": (0.06, 7.77, 19.46)},
    "fashion-mnist": {"vae": (0.13, 45.09, 60.06), "ddpm": (None, None, 9.63), "gcrl": (0.10, 39.10, 47.74)},
}
LABELS = {"gcrl": "GCRL (ours)", "vae": "VAE", "ddpm": "DDPM 1000 steps", "ddim": "DDIM 16 steps"}


class OneLineArgs(argparse.ArgumentParser):
    """Bad flags end the run with one line naming them."""

    def error(self, message: str):
        """Print one line and exit with status 2."""
        print(f"error: {message} (see `python {self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    """Own flags; what follows `--` goes to launch.py for the GCRL model."""
    p = OneLineArgs(prog="bench/table1.py", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget per model")
    p.add_argument("--updates", type=int, help="an update budget per model instead (for quick checks)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--dataset", choices=[d for d in DATASETS if d != "folder"], default="mnist")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--output", type=Path, default=Path("runs/table1"))
    p.add_argument("--num-test", type=int, default=1000, help="test images reconstructed")
    p.add_argument("--fid-samples", type=int, default=1000, help="samples per model for the sample FID")
    p.add_argument("--fid-reference", type=int, default=2000, help="images in each FID reference set")
    p.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    p.add_argument("--ddim-eta", type=float, default=0.0, help="DDIM's eta: 0 is Song et al.'s deterministic "
                   "sampler (default), 1 the stochastic one")
    p.add_argument("--evaluate-only", action="store_true", help="measure the checkpoints already in --output")
    p.add_argument("--curve-every", type=float, metavar="MINUTES", help="the GCRL run also keeps a checkpoint "
                   "every MINUTES, and each is measured afterwards: both FIDs over training (bench/fid_curve.py)")
    p.add_argument("--seed", type=int, default=0)
    args, rest = p.parse_known_args(argv)
    _check(p, args)
    args.gcrl_flags = [a for a in rest if a != "--"]
    return args


def _check(p: argparse.ArgumentParser, args) -> None:
    if args.minutes <= 0:
        p.error(f"--minutes must be positive, got {args.minutes}")
    if args.curve_every is not None and not 0 < args.curve_every < args.minutes:
        p.error(f"--curve-every must be between 0 and --minutes ({args.minutes:g}), got {args.curve_every}")
    if not 0 <= args.ddim_eta <= 1:
        p.error(f"--ddim-eta must be in [0, 1], got {args.ddim_eta}")
    for flag, value, least in (("--updates", args.updates, 1), ("--num-test", args.num_test, 2),
                               ("--fid-samples", args.fid_samples, 2), ("--fid-reference", args.fid_reference, 2),
                               ("--batch-size", args.batch_size, 1)):
        if value is not None and value < least:
            p.error(f"{flag} must be an integer >= {least}, got {value}")
    if not args.evaluate_only and args.output.is_dir() and any((args.output / m).exists() for m in args.models):
        p.error(f"--output {args.output} already holds trained models; pick a new folder or add --evaluate-only")


def training_command(model: str, args) -> list[str]:
    """The process that trains `model` for the budget, as a user would run it."""
    out = str(args.output / model)
    data = ["--dataset", args.dataset, "--data-dir", str(args.data_dir), "--seed", str(args.seed)]
    if model == "gcrl":
        budget = ["--total-updates", str(args.updates)] if args.updates else \
            ["--time-limit", str(60 * args.minutes), "--total-updates", str(10**12)]
        return [sys.executable, str(REPO_ROOT / "launch.py"), "--runtime", "single-process", *data, *budget,
                "--checkpoint-dir", out, *_checkpointing(args), "--eval-every", "0", "--progress-every", "120",
                *args.gcrl_flags]
    budget = ["--updates", str(args.updates)] if args.updates else ["--minutes", str(args.minutes)]
    return [sys.executable, str(REPO_ROOT / "bench" / "baselines" / "train.py"), "--model", model, *data, *budget,
            "--output", out, "--progress-every", "120"]


def _checkpointing(args) -> list[str]:
    """Only the final checkpoint, or (--curve-every) one every so many minutes, all of them kept."""
    if args.curve_every is None:
        return ["--checkpoint-every", "1e9"]
    return ["--checkpoint-every", f"{60 * args.curve_every:g}",
            "--keep-checkpoints", str(int(args.minutes // args.curve_every) + 2)]


def train_all(args) -> None:
    """Each model in turn, alone on the machine; a failed run stops the table."""
    for model in args.models:
        command = training_command(model, args)
        print(f"== training {model}: {' '.join(command)}", flush=True)
        if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
            raise SystemExit(f"error: training {model} failed (command above); nothing measured")


def measure(args, on_row=lambda rows, floors: None) -> tuple[list[dict], dict, dict]:
    """(rows, floors, 64 samples per row) under one protocol; `on_row` sees the rows so far after each one, and
    each row's scored samples and reconstructions go to <output>/<row>-samples.npy (-reconstructions.npy)."""
    from bench.baselines import protocol as pr

    train, test = load_goals(args.dataset, args.data_dir), load_goals(args.dataset, args.data_dir, "test")
    proto = pr.build_protocol(train, test, args.num_test, args.fid_reference, args.fid_samples, args.batch_size)
    floors = {**proto.floors, "mean_image_mse": pr.mean_image_mse(train, proto)}
    rows, images = [], {}
    for model in args.models:
        for name, row, drawn in measure_model(model, args.output / model, proto, args.seed, args.ddim_eta):
            label = LABELS[name] + (f", eta {args.ddim_eta:g}" if name == "ddim" and args.ddim_eta else "")
            row.update(model=name, label=label, paper=_paper(args.dataset, name))
            _save_scored(args.output, name, drawn, row.pop(pr.SCORED_RECONSTRUCTIONS, None))
            rows.append(row)
            images[name] = drawn[:64]
            figures = {k: row[k] for k in ("recon_mse", "recon_fid", "sample_fid")}
            print(f"measured {label}: {json.dumps(figures)}", flush=True)
            on_row(rows, floors)
    if args.curve_every is not None and "gcrl" in args.models:
        _add_curve(args, rows, proto, on_row, floors)
    return rows, floors, images


def _add_curve(args, rows: list[dict], proto, on_row, floors: dict) -> None:
    """The GCRL row's `curve`: every earlier kept checkpoint measured like the row, then the row itself."""
    from bench.fid_curve import POINT_KEYS, checkpoints_of, curve_points

    row = next(r for r in rows if r["model"] == "gcrl")
    earlier = checkpoints_of(args.output / "gcrl")[:-1]  # the newest is the one the row measured
    final = {"checkpoint": "final", **{k: row[k] for k in POINT_KEYS}}
    points = [*curve_points(earlier, proto, args.seed), final]
    for k, point in enumerate(points):  # nominal: each save's seconds also count against the budget
        point["minutes"] = None if args.updates else min(args.minutes, (k + 1) * args.curve_every)
    if not args.updates:
        points[-1]["minutes"] = args.minutes
    row["curve"] = points
    on_row(rows, floors)


def _save_scored(output: Path, name: str, samples: torch.Tensor, reconstructions: torch.Tensor | None) -> None:
    """The images FID scored, as uint8 .npy, so any outside FID tool can score the same ones."""
    np.save(output / f"{name}-samples.npy", samples.numpy())
    if reconstructions is not None:
        np.save(output / f"{name}-reconstructions.npy", reconstructions.numpy())


def measure_model(model: str, folder: Path, proto, seed: int, eta: float = 0.0) -> list[tuple[str, dict, torch.Tensor]]:
    """[(row name, figures, samples)]: one row for GCRL and the VAE, two (both samplers) for the DDPM."""
    from bench.baselines import protocol as pr
    from bench.baselines.train import load_baseline, parameter_count

    if model == "gcrl":
        row, drawn = pr.evaluate_gcrl(folder, proto, seed)
        return [("gcrl", {**row, "parameters": _gcrl_parameters(folder)}, drawn)]
    _, net, manifest = load_baseline(folder)
    extra = {"parameters": parameter_count(net), "updates": manifest["updates"]}
    if model == "vae":
        row, drawn = pr.evaluate_vae(net, proto, seed)
        return [("vae", {**row, **extra}, drawn)]
    return [(sampler, {**row, **extra}, drawn) for sampler in ("ddpm", "ddim")
            for row, drawn in [pr.evaluate_diffusion(net, proto, sampler, seed, eta)]]


def _gcrl_parameters(folder: Path) -> dict:
    from evaluation.model import load_model

    agent = load_model(folder, "cpu").agent
    return {name: sum(p.numel() for p in getattr(agent, name).parameters())
            for name in ("proposal", "selection", "goal_q")}


def _paper(dataset: str, name: str) -> dict | None:
    figures = PAPER.get(dataset, {}).get("ddpm" if name == "ddpm" else name)
    return None if figures is None else dict(zip(("recon_mse", "recon_fid", "sample_fid"), figures))


def format_table(rows: list[dict], floors: dict, dataset: str, fid_samples: int) -> str:
    """The paper's layout (Rec. MSE, Rec. FID, Samples FID), the paper's figures beside, sampling cost after."""
    f = lambda v, spec: f"{'-':>8}" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{dataset}: {'':<16} {'measured here':^26} | {'paper Table 1':^26} | sampling cost",
             f"{'method':<24} {'MSE Rec.':>8} {'FID Rec.':>8} {'Samples':>8} | {'MSE Rec.':>8} {'FID Rec.':>8} "
             f"{'Samples':>8} | {'passes/img':>10} {'img/s':>8} {'updates':>8}"]
    for r in rows:
        p = r["paper"] or {}
        lines.append(f"{r['label']:<24} {f(r['recon_mse'], '8.4f')} {f(r['recon_fid'], '8.2f')} "
                     f"{f(r['sample_fid'], '8.2f')} | {f(p.get('recon_mse'), '8.2f')} {f(p.get('recon_fid'), '8.2f')} "
                     f"{f(p.get('sample_fid'), '8.2f')} | {r['passes_per_image']:>10d} {r['images_per_second']:>8.1f} "
                     f"{r['updates']:>8d}")
    for r in rows:
        for point in r.get("curve", ()):
            lines.append(f"  {r['label']} at {point['updates']:>6d} updates: reconstruction FID "
                         f"{point['recon_fid']:.2f}, sample FID {point['sample_fid']:.2f}, MSE {point['recon_mse']:.4f}")
    lines.append(f"same-N floors ({fid_samples} images): reconstruction FID {floors['reconstruction']:.2f}, "
                 f"sample FID {floors['samples']:.2f}; mean-image reconstruction MSE {floors['mean_image_mse']:.4f}")
    return "\n".join(lines)


def draw_samples(images: dict, rows: list[dict], path: Path) -> Path:
    """One 8 x 8 grid of samples per model, labelled, side by side."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    grids = [(r["label"], make_grid(images[r["model"]].float() / 255.0, nrow=8, padding=2)) for r in rows]
    width = max(g.shape[2] for _, g in grids)
    height = max(g.shape[1] for _, g in grids)
    canvas = Image.new("RGB", ((width + 10) * len(grids), height + 22), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, grid) in enumerate(grids):
        array = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        canvas.paste(Image.fromarray(array), (k * (width + 10), 20))
        draw.text((k * (width + 10) + 4, 4), label, fill="black")
    canvas.save(path)
    return path


def write_report(args, rows: list[dict], floors: dict, table: str | None) -> None:
    """table1.json with the rows measured so far (table None: not finished), rewritten after every row."""
    report = {"dataset": args.dataset, "minutes": None if args.updates else args.minutes, "updates_budget": args.updates,
              "num_test": args.num_test, "fid_samples": args.fid_samples, "fid_reference": args.fid_reference,
              "ddim_eta": args.ddim_eta, "gcrl_flags": args.gcrl_flags, "floors": floors, "rows": rows,
              "complete": table is not None, "table": table}
    write_json(args.output / "table1.json", report)


def main(argv=None) -> int:
    """Train each model for the budget, measure all of them, print and write the table."""
    args = parse_args(argv)
    try:
        load_goals(args.dataset, args.data_dir)  # a bad data folder fails now, not after training
        check_fid_dependencies()  # and a missing FID package too
        if not args.evaluate_only:
            args.output.mkdir(parents=True, exist_ok=True)
            train_all(args)
        rows, floors, images = measure(args, lambda rows, floors: write_report(args, rows, floors, None))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = format_table(rows, floors, args.dataset, args.fid_samples)
    print(table, flush=True)
    write_report(args, rows, floors, table)
    draw_samples(images, rows, args.output / "table1.png")
    curves = [r["curve"] for r in rows if "curve" in r]  # the GCRL row's, with --curve-every
    if curves:
        from bench.fid_curve import draw_curve

        draw_curve(curves[0], floors, args.output / "table1-curve.png")
    print(f"wrote {args.output}/table1.json and table1.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

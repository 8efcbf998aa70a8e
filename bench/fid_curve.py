#!/usr/bin/env python3
"""Both FIDs over training, from the checkpoints one run kept, measured by Table 1's protocol.

    python bench/table1.py --models gcrl --minutes 30 --output runs/T -- --checkpoint-every 600 --keep-checkpoints 6
    python bench/fid_curve.py runs/T/gcrl --output runs/T/curve.json --plot runs/T/curve.png

Why a separate pass: bench/quality.py reads FID while it trains, so its measuring shares the cores with
training; here training runs alone (table1.py's 30 minutes stay 30 minutes of updates) and every kept
checkpoint, update-<n>/, is measured afterwards with the same scorer, reference statistics, test images and
sample count as table1.py's rows (bench/baselines/protocol.py). The last point is the table's GCRL row.
Writes one JSON with a point per checkpoint (updates, reconstruction MSE and FID, sample FID, the S-agent's
cross-entropy) and, with --plot, both FIDs against updates beside their same-N floors. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from common.errors import UserError  # noqa: E402
from common.storage.checkpoint import complete_checkpoints  # noqa: E402
from common.storage.data import DATASETS, load_goals  # noqa: E402
from evaluation.fid import check_fid_dependencies  # noqa: E402
from evaluation.files import write_json  # noqa: E402

POINT_KEYS = ("updates", "recon_mse", "recon_fid", "sample_fid", "s_agent_cross_entropy",
              "s_agent_cross_entropy_per_step")


def parse_args(argv=None) -> argparse.Namespace:
    """The run's checkpoint folder, the data it trained on, and Table 1's protocol sizes."""
    from bench.table1 import OneLineArgs

    p = OneLineArgs(prog="bench/fid_curve.py", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint_dir", type=Path, help="a run's --checkpoint-dir (its update-*/ folders)")
    p.add_argument("--dataset", choices=[d for d in DATASETS if d != "folder"], default="mnist")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--output", type=Path, required=True, help="the JSON to write")
    p.add_argument("--plot", type=Path, help="also draw both FIDs against updates into this PNG")
    p.add_argument("--num-test", type=int, default=1000, help="test images reconstructed")
    p.add_argument("--fid-samples", type=int, default=1000, help="S-agent samples per point")
    p.add_argument("--fid-reference", type=int, default=2000, help="images in each FID reference set")
    p.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for flag, value in (("--num-test", args.num_test), ("--fid-samples", args.fid_samples),
                        ("--fid-reference", args.fid_reference), ("--batch-size", args.batch_size)):
        if value < (1 if flag == "--batch-size" else 2):
            p.error(f"{flag} must be an integer >= {1 if flag == '--batch-size' else 2}, got {value}")
    return args


def checkpoints_of(folder: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first; none is one clear line."""
    found = complete_checkpoints(folder)
    if not found:
        raise UserError(f"{folder} holds no complete checkpoint (update-*/manifest.json); pass a run's "
                        "--checkpoint-dir")
    return found


def curve_points(folders: list[Path], proto, seed: int, on_point=lambda points: None) -> list[dict]:
    """One point per checkpoint, each measured exactly as table1.py measures its GCRL row."""
    from bench.baselines import protocol as pr

    points = []
    for folder in folders:
        row, _ = pr.evaluate_gcrl(folder, proto, seed)
        points.append({"checkpoint": folder.name, **{k: row[k] for k in POINT_KEYS}})
        print(f"measured {folder.name}: reconstruction FID {row['recon_fid']:.2f}, sample FID "
              f"{row['sample_fid']:.2f}, MSE {row['recon_mse']:.4f}", flush=True)
        on_point(points)
    return points


def draw_curve(points: list[dict], floors: dict, path: Path) -> Path:
    """Reconstruction and sample FID against updates, each beside its same-N floor (Pillow, no plotting library)."""
    from evaluation.figures import line_chart

    updates = [p["updates"] for p in points]
    series = {"reconstruction FID": [p["recon_fid"] for p in points],
              "sample FID": [p["sample_fid"] for p in points],
              "floor (reconstruction)": [floors["reconstruction"]] * len(points),
              "floor (samples)": [floors["samples"]] * len(points)}
    return line_chart([("FID@1k vs learner updates", updates, series)], path)


def main(argv=None) -> int:
    """Measure every kept checkpoint of one run; write the JSON after each point."""
    from bench.baselines import protocol as pr

    args = parse_args(argv)
    try:
        folders = checkpoints_of(args.checkpoint_dir)
        train, test = load_goals(args.dataset, args.data_dir), load_goals(args.dataset, args.data_dir, "test")
        check_fid_dependencies()
        proto = pr.build_protocol(train, test, args.num_test, args.fid_reference, args.fid_samples, args.batch_size)
        report = {"run": str(args.checkpoint_dir), "dataset": args.dataset, "num_test": args.num_test,
                  "fid_samples": args.fid_samples, "fid_reference": args.fid_reference, "floors": proto.floors}
        points = curve_points(folders, proto, args.seed, lambda points: write_json(args.output,
                                                                                   {**report, "points": points}))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        print(f"wrote {draw_curve(points, proto.floors, args.plot)}", flush=True)
    print(f"wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

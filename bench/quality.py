#!/usr/bin/env python3
"""Quality benchmark: does the model learn on full data? Reconstruction, codes, samples and FID over time.

    python bench/quality.py --minutes 30 --every 2.5 --output runs/quality   # default preset, single process
    python bench/quality.py --minutes 10 --runtime ray -- --set acting.behaviour=q

Trains on the whole training set with either runtime for --minutes of training (the time spent here
measuring is not counted) and every --every minutes records, on 1,000 fixed test images
(bench/quality_probe.py): the reconstruction MSE (per pixel, [-1, 1]) of each encoder beside the mean-image
baseline; how many distinct codes each gives; the S-agent's cross-entropy on the acting encoder's choices,
in all and per step; a grid of 64 S-agent samples; how long the reading took. At --fid-minutes and at the
end it scores --fid-samples S-agent samples against the training set (sample FID) and the acting encoder's
reconstructions of the test images against the test set (reconstruction FID), each beside its same-N floor,
and saves the scored images as uint8 .npy. Writes quality.json after every reading (a run that dies later
keeps its readings), curve.png, sample grids, and the final checkpoint (<output>/checkpoint, readable by
`launch.py evaluate`). Everything FID needs is checked before training. Asserts nothing. Flags after `--` go
to launch.py's training flags (--preset, --set, --threads, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.quality_probe import QualityProbe, format_reading, header  # noqa: E402
from common.device import resolve_bf16  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.method.mdp import step_rates  # noqa: E402
from common.storage.data import load_goals  # noqa: E402
from deploy.cli import parse_train  # noqa: E402
from evaluation.figures import line_chart  # noqa: E402
from evaluation.files import write_json  # noqa: E402
from evaluation.inference import sample, sampling_of  # noqa: E402
from deploy.tracking import flat_scalars, log_points  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's own flags; what follows `--` (or is unknown) goes to the training flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes (measuring not counted)")
    p.add_argument("--every", type=float, default=2.5, help="minutes between readings")
    p.add_argument("--readings-at", type=float, nargs="+", help="read at exactly these training minutes instead "
                   "(the last one ends the run; e.g. `--readings-at 10` for one reading at the end)")
    p.add_argument("--runtime", choices=("single-process", "ray"), default="single-process")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--output", type=Path, default=Path("runs/quality"))
    p.add_argument("--num-test", type=int, default=1000, help="fixed test images reconstructed at each reading")
    p.add_argument("--fid-samples", type=int, default=1000, help="S-agent samples for FID (0: no FID)")
    p.add_argument("--fid-reference", type=int, default=2000, help="training images in the FID reference")
    p.add_argument("--fid-minutes", type=float, nargs="*", default=[10.0], help="FID also at these minutes")
    p.add_argument("--seed", type=int, default=0)
    args, rest = p.parse_known_args(argv)
    for name, value in (("--minutes", args.minutes), ("--every", args.every), ("--num-test", args.num_test)):
        if value <= 0:
            p.error(f"{name} must be positive, got {value}")
    args.training = [a for a in rest if a != "--"]
    if args.readings_at:
        args.minutes = max(args.readings_at)
    return args


def train(args, command, goals, probe: QualityProbe):
    """Run the chosen runtime with the probe as its periodic evaluation; no time limit but the probe's."""
    if args.runtime == "single-process":
        from deploy.single_process import SingleProcessTrainer

        return SingleProcessTrainer(command.config, goals, command.run, command.preset_name, probe).run()
    from deploy.ray_driver import run_distributed

    return run_distributed(command, goals, probe)


def fid_results(args, goals, test_goals, snapshots: list[dict], x1: torch.Tensor, config) -> list[dict]:
    """Sample FID and reconstruction FID of each snapshot, beside their same-N floors (bench/baselines/protocol.py:
    the Table 1 protocol); the scored images are saved as uint8 .npy for any outside FID tool."""
    if args.fid_samples <= 0 or not snapshots:
        return []
    from bench.baselines.protocol import build_protocol

    protocol = build_protocol(goals, test_goals, args.num_test, args.fid_reference, args.fid_samples)
    rates, results = step_rates(config.mdp), []
    for snap in snapshots:
        began = time.monotonic()
        samples = sample(snap["agent"], x1.cpu(), rates, args.fid_samples, seed=args.seed, keep_trajectories=0,
                         bf16=protocol.bf16, **sampling_of(config)).images
        tag = f"{snap['updates']:06d}"
        np.save(args.output / f"fid-samples-{tag}.npy", samples.numpy())
        np.save(args.output / f"fid-reconstructions-{tag}.npy", snap["reconstructions"].numpy())
        result = {"minutes": snap["minutes"], "updates": snap["updates"],
                  "sample_fid": protocol.scorer.score(samples, protocol.train_reference, "sample FID"),
                  "recon_fid": protocol.scorer.score(snap["reconstructions"], protocol.test_reference, "recon FID"),
                  "floor": protocol.floors["samples"], "recon_floor": protocol.floors["reconstruction"],
                  "seconds": round(time.monotonic() - began, 3)}
        result.update(ratio=result["sample_fid"] / result["floor"], recon_ratio=result["recon_fid"] / result["recon_floor"])
        results.append(result)
        print(f"FID@{args.fid_samples} at {snap['minutes']:.1f} min ({snap['updates']} updates): samples "
              f"{result['sample_fid']:.2f} (floor {result['floor']:.2f}, {result['ratio']:.2f}x), reconstructions "
              f"{result['recon_fid']:.2f} (floor {result['recon_floor']:.2f}, {result['recon_ratio']:.2f}x); "
              f"{result['seconds']:.0f}s", flush=True)
    return results


def draw_curves(readings: list[dict], fids: list[dict], baseline: float, path: Path) -> None:
    """MSE per encoder and the mean baseline against minutes and against updates; FID points too.

    The untrained reading (MSE far above everything after it) is left out so the scale shows learning.
    """
    readings = [r for r in readings if r["updates"] > 0] or readings
    series = {f"{e} MSE": [r["mse"][e] for r in readings] for e in readings[-1]["mse"]}
    series["mean baseline"] = [baseline] * len(readings)
    panels = [("reconstruction MSE vs minutes", [r["minutes"] for r in readings], series),
              ("reconstruction MSE vs updates", [r["updates"] for r in readings], series)]
    if fids:
        panels.append(("FID / same-N floor vs minutes", [f["minutes"] for f in fids],
                       {"sample FID ratio": [f["ratio"] for f in fids],
                        "reconstruction FID ratio": [f["recon_ratio"] for f in fids]}))
    line_chart(panels, path)


def training_command(args):
    """The training flags of the benchmarked run: unbounded updates (the probe stops it), no evaluation of its own,
    and a checkpoint folder in the output unless the flags name one."""
    flags = ["--runtime", args.runtime, "--dataset", args.dataset, "--data-dir", str(args.data_dir),
             "--total-updates", str(10**12), "--progress-every", "120", "--eval-every", "0",
             "--seed", str(args.seed), "--checkpoint-every", str(10**9), "--log-dir", str(args.output / "tb"),
             *args.training]
    if "--checkpoint-dir" not in args.training:
        flags += ["--checkpoint-dir", str(args.output / "checkpoint")]
    return parse_train(flags, "quality benchmark")


def main(argv=None) -> int:
    """Check, train, read, score, draw, print; the report is rewritten after every reading."""
    args = parse_args(argv)
    try:
        if args.fid_samples > 0:
            from evaluation.fid import check_fid_dependencies

            check_fid_dependencies()
        command = training_command(args)
        goals, test_goals = load_goals(args.dataset, args.data_dir), load_goals(args.dataset, args.data_dir, "test")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test = test_goals.goals(np.arange(min(args.num_test, len(test_goals))))
    baseline = float((test - goals.mean_image()).pow(2).mean())
    args.output.mkdir(parents=True, exist_ok=True)
    report = {"preset": command.preset_name, "runtime": args.runtime, "training_flags": args.training,
              "config": command.config.to_dict(), "minutes": args.minutes, "baseline_mse": baseline,
              "acting_bf16": resolve_bf16(command.config.acting.bf16, torch.device("cpu")),
              "cpu": torch.backends.cpu.get_cpu_capability(), "readings": [], "fid": []}
    print(f"preset {command.preset_name}, runtime {args.runtime}, {len(goals)} goals, {test.shape[0]} test images, "
          f"torch threads {torch.get_num_threads()}, CPU {report['cpu']}, readings in "
          f"{'bf16' if report['acting_bf16'] else 'float32'}; mean-image baseline MSE {baseline:.4f}", flush=True)
    print(f"settings: {json.dumps(command.config.to_dict())}", flush=True)
    print(header(), flush=True)

    def on_reading(readings):
        print(format_reading(readings[-1], baseline), flush=True)
        write_json(args.output / "quality.json", report)

    probe = QualityProbe(args, command.config, test, baseline, args.output, on_reading)
    report["readings"] = probe.readings  # the same list: each reading lands in the report as it is taken
    summary = train(args, command, goals, probe)
    report.update(updates=summary.updates, env_steps=summary.env_steps, checkpoint=summary.checkpoint)
    write_json(args.output / "quality.json", report)
    x1 = torch.zeros(goals.image_shape) if command.config.mdp.initial_state == "zeros" else goals.mean_image()
    report["fid"] = fid_results(args, goals, test_goals, probe.snapshots, x1, command.config)
    write_json(args.output / "quality.json", report)
    log_points(args.output / "tb", [(f["updates"], flat_scalars(f, "quality/fid")) for f in report["fid"]])
    if not probe.readings:  # stopped (SIGINT, --total-updates) before its first reading: keep the checkpoint
        print(f"the run ended after {summary.updates} updates, before its first reading: no readings, no curve; "
              f"wrote {args.output}/quality.json and {summary.checkpoint}", flush=True)
        return 1
    draw_curves(probe.readings, report["fid"], baseline, args.output / "curve.png")
    print(f"wrote {args.output}/quality.json, curve.png, sample grids and {summary.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Sampling controls on a trained checkpoint: sample FID for each S-select temperature and top-k.

    python bench/sampling_sweep.py --checkpoint runs/q-default/checkpoint --temperatures 1 0.9 0.8 --top-k 0 8

Draws --fid-samples S-agent samples (Algorithm 3, the same seed) for every (temperature, top-k) pair and scores
them against the training set's first --fid-reference images, beside the same-N floor (that many test images
against the same reference): the FID protocol of bench/quality.py and bench/table1.py. Temperature 1 and top-k
0 (all A) is the paper's plain sampling. Writes sweep.json and one grid per setting into --output; prints a
table. With --reconstructions it also scores the acting GC-agent's reconstructions of the first --num-test test
images against the test split (reconstruction FID, bench/quality.py's protocol). --weights online reads a checkpoint
made with learning.averaging_rate as the weights the GC-agent acted with, so one run gives both rows. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

from common.device import resolve_bf16  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.storage.data import load_goals  # noqa: E402
from evaluation.figures import samples_figure  # noqa: E402
from evaluation.files import write_json  # noqa: E402
from evaluation.inference import encoder_of, reconstruct, sample  # noqa: E402
from evaluation.model import WEIGHTS, load_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The sweep's settings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7])
    p.add_argument("--top-k", type=int, nargs="+", default=[0], help="0: all A selections")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--fid-samples", type=int, default=1000)
    p.add_argument("--fid-reference", type=int, default=2000)
    p.add_argument("--output", type=Path, default=Path("runs/sampling-sweep"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=WEIGHTS, default="averaged", help="the averaged S-agent (where the checkpoint "
                   "has one) or the online weights")
    p.add_argument("--reconstructions", action="store_true", help="also the reconstruction FID of --num-test images")
    p.add_argument("--num-test", type=int, default=1000)
    return p.parse_args(argv)


def reconstruction_row(args, model, train, test) -> dict:
    """The acting GC-agent's reconstructions of the first --num-test test images: MSE, and FID against the test
    split beside its same-N floor (bench/baselines/protocol.py, as bench/quality.py scores them)."""
    from bench.baselines.protocol import build_protocol

    protocol = build_protocol(train, test, args.num_test, args.fid_reference, args.fid_samples)
    recons = reconstruct(model.agent, model.x1, model.rates, test.images[:args.num_test], 500, bf16=protocol.bf16,
                         **encoder_of(model.config))
    fid = protocol.scorer.score(recons.images, protocol.test_reference, "recon FID")
    floor = protocol.floors["reconstruction"]
    print(f"reconstructions ({args.num_test}): MSE {recons.mse:.4f}, FID {fid:.2f} ({fid / floor:.2f}x the floor "
          f"{floor:.2f})", flush=True)
    return {"recon_mse": recons.mse, "recon_fid": fid, "recon_floor": floor}


def sweep(args, model, scorer, floor: float) -> list[dict]:
    """One row per (temperature, top-k): sample FID, its ratio to the floor, and the time to draw."""
    bf16, rows = resolve_bf16(model.config.acting.bf16, model.device), []
    for temperature in args.temperatures:
        for top_k in args.top_k:
            began = time.monotonic()
            images = sample(model.agent, model.x1, model.rates, args.fid_samples, seed=args.seed, keep_trajectories=0,
                            bf16=bf16, temperature=temperature, top_k=top_k or None).images
            fid = scorer.score(images)
            samples_figure(images, args.output / f"samples-t{temperature:g}-k{top_k}.png", limit=64)
            rows.append({"temperature": temperature, "top_k": top_k, "sample_fid": fid, "ratio": fid / floor,
                         "seconds": round(time.monotonic() - began, 3)})
            print(f"temperature {temperature:<5g} top-k {top_k or 'all':>4}: sample FID {fid:7.2f} "
                  f"({fid / floor:.2f}x the floor)", flush=True)
    return rows


def main(argv=None) -> int:
    """Load, sweep, write."""
    args = parse_args(argv)
    try:
        from evaluation.fid import check_fid_dependencies, training_scorer

        check_fid_dependencies()
        model = load_model(args.checkpoint, "cpu", args.weights)
        name = model.dataset.get("name", "mnist")
        train, test = load_goals(name, args.data_dir), load_goals(name, args.data_dir, "test")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    scorer = training_scorer(train, args.fid_reference)
    floor = scorer.score(test.images[:args.fid_samples])
    print(f"checkpoint {model.path} (update {model.updates}); same-N floor {floor:.2f}", flush=True)
    recon = reconstruction_row(args, model, train, test) if args.reconstructions else {}
    rows = sweep(args, model, scorer, floor)
    write_json(args.output / "sweep.json", {"checkpoint": str(model.path), "updates": model.updates, "floor": floor,
                                            "weights": args.weights, "fid_samples": args.fid_samples, "rows": rows,
                                            **recon})
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The ablation table of docs/results.md from bench/quality.py outputs: one markdown row per run folder.

    python bench/quality_table.py runs/q-A1 runs/q-A2 ...              # the end of each run
    python bench/quality_table.py --marks docs/figures/quality-runs/*.json   # readings at 2.5, 5, 10, 30 min
    python bench/quality_table.py --plot curves.png runs/q-A1 runs/q-A2   # the runs' curves in one chart

Per run: its training flags and updates per minute; by default the last reading (MSE of each encoder, the
S-agent's cross-entropy), the last FID reading (reconstruction and sample FID) and the first reading below
0.7x the mean baseline; with --marks the MSE of each encoder and the sample FID ratio at 2.5, 5, 10 and 30
minutes where the run has them. With --plot FILE it also draws, one line per run, the acting encoder's MSE and
both FIDs against training minutes (how docs/results.md sets the afterstate agent beside the lookahead).
Prints; asserts nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

LEAVE_MEAN = 0.7
MARKS = (2.5, 5.0, 10.0, 30.0)


def load(path: Path) -> dict:
    """A run's quality.json: the file itself, or the run folder holding it; anything else is one line and exit 2."""
    file = path if path.is_file() else path / "quality.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"error: {file} is not a quality.json written by bench/quality.py ({type(exc).__name__})")


def acting_encoder(report: dict) -> str:
    """The encoder the run acted with (its behaviour)."""
    return report["config"]["acting"]["behaviour"]


def left_mean(report: dict) -> str:
    """'minutes / updates' of the first reading under LEAVE_MEAN x baseline, or 'no'."""
    encoder, baseline = acting_encoder(report), report["baseline_mse"]
    for r in report["readings"]:
        if r["mse"][encoder] < LEAVE_MEAN * baseline:
            return f"{r['minutes']:.1f} / {r['updates']}"
    return "no"


def at(report: dict, minutes: float) -> str:
    """'lookahead MSE / Q MSE (FID ratio)' at a minute mark, or '-'."""
    readings = [r for r in report["readings"] if abs(r["minutes"] - minutes) < 0.2]
    if not readings:
        return "-"
    r = readings[-1]
    fids = [f for f in report["fid"] if abs(f["minutes"] - minutes) < 0.2]
    fid = f", FID {fids[-1]['sample_fid']:.1f} ({fids[-1]['ratio']:.1f}x)" if fids else ""
    return f"{r['mse']['lookahead']:.4f} / {r['mse']['q']:.3f}{fid}"


def row(folder: Path) -> str:
    """One markdown row of the marks table (--marks)."""
    report = load(folder)
    last = report["readings"][-1]
    rate = last["updates"] / max(last["minutes"], 1e-9)
    cells = [folder.stem, " ".join(report["training_flags"]), f"{rate:.0f}", left_mean(report)]
    return "| " + " | ".join(cells + [at(report, m) for m in MARKS]) + " |"


def final_row(folder: Path) -> str:
    """One markdown row of the end-of-run table: the last reading and the last FID reading."""
    report = load(folder)
    last, fid = report["readings"][-1], (report.get("fid") or [{}])[-1]
    rate = last["updates"] / max(last["minutes"], 1e-9)
    mse = " / ".join(f"{e} {v:.4f}" for e, v in last["mse"].items())
    number = lambda key, fmt: format(fid[key], fmt) if fid.get(key) is not None else "-"  # noqa: E731
    cells = [folder.stem, " ".join(report["training_flags"]) or "(default)", f"{rate:.0f}",
             f"{last['minutes']:.1f} / {last['updates']}", mse, number("recon_fid", ".1f"), number("sample_fid", ".1f"),
             f"{last['s_agent_cross_entropy']:.3f}", left_mean(report)]
    return "| " + " | ".join(cells) + " |"


def at_minutes(points: list[dict], minutes: list[float], value) -> list[float | None]:
    """value(point) at each of `minutes` (the point read at that minute, to 0.1 min), None where the run has none."""
    found = {round(p["minutes"], 1): value(p) for p in points}
    return [found.get(round(m, 1)) for m in minutes]


def comparison_chart(folders: list[Path], path: Path) -> None:
    """One panel per figure (acting-encoder MSE, sample FID, reconstruction FID) against training minutes, one
    line per run, named by its folder and behaviour; readings of the untrained model are left out."""
    from evaluation.figures import line_chart

    runs = [(f"{folder.stem} ({acting_encoder(r)})", r) for folder in folders for r in [load(folder)]]
    read = sorted({round(p["minutes"], 1) for _, r in runs for p in r["readings"] if p["updates"] > 0})
    scored = sorted({round(p["minutes"], 1) for _, r in runs for p in r.get("fid") or []})
    mse = {name: at_minutes(r["readings"], read, lambda p, r=r: p["mse"][acting_encoder(r)]) for name, r in runs}
    panels = [("reconstruction MSE (acting encoder) vs minutes", read, mse)]
    for key, title in (("sample_fid", "sample FID"), ("recon_fid", "reconstruction FID")) if scored else ():
        series = {name: at_minutes(r.get("fid") or [], scored, lambda p, key=key: p.get(key)) for name, r in runs}
        panels.append((f"{title} vs minutes", scored, series))
    line_chart(panels, path)
    print(f"wrote {path}")


def main() -> None:
    """Header, then a row per folder given; with --plot FILE, the runs' curves in one chart."""
    args = [a for a in sys.argv[1:] if a != "--marks"]
    plot = None
    if "--plot" in args:
        at_flag = args.index("--plot")
        if at_flag + 1 >= len(args):
            sys.exit("error: --plot needs a file name (e.g. --plot curves.png)")
        plot = Path(args[at_flag + 1])
        del args[at_flag:at_flag + 2]
    if not args or args[0] in ("-h", "--help"):
        sys.exit("usage: python bench/quality_table.py [--marks] [--plot FILE.png] RUN_FOLDER_OR_quality.json ... "
                 "(folders of bench/quality.py)")
    if "--marks" in sys.argv:
        marks = " | ".join(f"{m:g} min: lookahead / Q MSE" for m in MARKS)
        print(f"| run | flags | updates/min | left the mean (min / updates) | {marks} |")
        print("|" + " --- |" * (4 + len(MARKS)))
        rows = [row(Path(name)) for name in args]
    else:
        print("| run | flags | updates/min | minutes / updates | reconstruction MSE per encoder | recon. FID | "
              "sample FID | S-agent CE | left the mean (min / updates) |")
        print("|" + " --- |" * 9)
        rows = [final_row(Path(name)) for name in args]
    print("\n".join(rows))
    if plot is not None:
        comparison_chart([Path(name) for name in args], plot)


if __name__ == "__main__":
    main()

"""`launch.py sweep`: a grid or random search of single-process training runs with Ray Tune.

Each trial is a function trainable that trains exactly as `launch.py` does with the trial's flags
(deploy/sweep_flags.py builds them): the SingleProcessTrainer through deploy/loop.py's run loop,
checkpoints in the usual format under <sweep>/trials/<name>/ and a TensorBoard log under
<sweep>/tb/<name>/. Each periodic evaluation is reported to Tune (reconstruction MSE, sample FID where
computed, updates, seconds since the trial's first step), and so is a last evaluation after the trial
stops, so every trial is ranked on the weights it ended with. With --asha, Tune's ASHA scheduler stops
the trials that trail at each rung of those seconds; a trial is then checkpointed at each report, so the weights it was
judged on are the ones left on disk. Trials reserve --trial-cpus/--trial-gpus on the local Ray or the
cluster at --address. At the end a table of every trial goes to stdout and <sweep>/summary.md, and
each trial's command line and figures to <sweep>/sweep.json.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from common.errors import ConfigError
from deploy.cli import parse_train
from deploy.inputs import training_evaluation, training_goals
from deploy.loop import run_loop
from deploy.sweep_flags import (SweepOptions, asha_grace, format_value, parse_sweep, trial_flags,
                                trial_name)
from deploy.tracking import open_log

HIGHER_IS_WORSE = "min"  # both metrics (MSE, FID) are better lower


class TrialReport:
    """A Tracker that reports each evaluation of a trial to Tune (after a checkpoint, under ASHA)."""

    def __init__(self, trainer, checkpoint_each: bool):
        self.trainer, self.checkpoint_each = trainer, checkpoint_each
        self.started = time.monotonic()
        self.checkpoint: str | None = None

    def scalars(self, step: int, values: dict) -> None:
        """Curves go to the TensorBoard log only."""

    def evaluation(self, result: dict) -> None:
        """Report a periodic evaluation; under ASHA this may be the trial's last act, so checkpoint first."""
        if self.checkpoint_each:
            self.checkpoint = self.trainer.save()
        self.report(result, final=False)

    def report(self, result: dict, final: bool) -> None:
        """One Tune report: the evaluation's figures, the trial's counters and where its checkpoint is."""
        from ray import tune

        counters = self.trainer.counters
        metrics = {"reconstruction_mse": result["reconstruction_mse"], "updates": int(result["updates"]),
                   "env_steps": counters.env_steps, "seconds": time.monotonic() - self.started,
                   "checkpoint": self.checkpoint or "", "final": final}
        if result.get("sample_fid") is not None:
            metrics["sample_fid"] = result["sample_fid"]
        tune.report(metrics)

    def close(self) -> None:
        """Nothing to release."""


def run_trial(params: dict, options: SweepOptions) -> None:
    """One trial, in a Ray worker: train with the trial's flags, then evaluate once more and report it."""
    from ray import tune

    from deploy.single_process import SingleProcessTrainer

    name = tune.get_context().get_trial_name()
    command = parse_train(trial_flags(options, params, name), "sweep trial")
    goals = training_goals(command)
    trainer = SingleProcessTrainer(command.config, goals, command.run, command.preset_name,
                                   training_evaluation(command, goals))
    log = open_log(command.run, trainer.counters.updates, command.config.to_dict())
    report = TrialReport(trainer, options.asha)
    try:
        summary = run_loop(trainer, command.run, [log, report])
        report.checkpoint = summary.checkpoint
        final = trainer.evaluate()
        log.evaluation(final)
        report.report(final, final=True)
    finally:
        log.close()


def search_space(options: SweepOptions) -> dict:
    """Tune's param_space: grid_search for --grid, choice / uniform / loguniform for the random axes."""
    from ray import tune

    make = {"grid": lambda v: tune.grid_search(list(v)), "choice": lambda v: tune.choice(list(v)),
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {axis.key: make[axis.kind](axis.values) for axis in options.axes}


def name_of(trial) -> str:
    """A Tune trial's name and folder: its index (from Tune's id, e.g. 'a1b2c_00003') and its values."""
    suffix = trial.trial_id.rpartition("_")[2]
    index = int(suffix) if suffix.isdigit() else 0
    return trial_name(index, dict(trial.config))


def make_tuner(options: SweepOptions):
    """The Tuner: the trial function with its resources, the search space, ASHA if asked, the storage."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = parse_train(trial_flags(options, {}, "check"), "sweep")
    scheduler = None
    if options.asha:
        # max_t past the time limit: a trial's last reports come at about its --time-limit, and one at max_t
        # would be stopped as "finished" by ASHA before its final evaluation
        scheduler = ASHAScheduler(time_attr="seconds", max_t=2 * base.run.time_limit,
                                  grace_period=asha_grace(options, base), reduction_factor=options.asha_reduction)
    trainable = tune.with_resources(tune.with_parameters(run_trial, options=options),
                                    {"cpu": options.trial_cpus, "gpu": options.trial_gpus})
    config = tune.TuneConfig(metric=options.metric, mode=HIGHER_IS_WORSE, scheduler=scheduler,
                             num_samples=options.num_samples, max_concurrent_trials=options.max_concurrent,
                             trial_name_creator=name_of, trial_dirname_creator=name_of)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # Tune's own TensorBoard files would sit beside ours
    run = tune.RunConfig(name="tune", storage_path=str(options.folder), verbose=1,
                         callbacks=[CSVLoggerCallback(), JsonLoggerCallback()])
    return tune.Tuner(trainable, param_space=search_space(options), tune_config=config, run_config=run)


def summarize(options: SweepOptions, results) -> list[dict]:
    """One row per trial from Tune's ResultGrid, best first by --metric (failed trials last)."""
    rows = []
    for result in results:
        name = Path(result.path).name
        params = {axis.key: result.config.get(axis.key) for axis in options.axes}
        metrics = result.metrics or {}
        status = ("error: " + str(result.error).strip().splitlines()[-1] if result.error else
                  "done" if metrics.get("final") else f"stopped by ASHA at {metrics.get('seconds', 0):.0f}s")
        rows.append({"trial": name, "params": params, "status": status,
                     **{k: metrics.get(k) for k in ("updates", "env_steps", "seconds", "reconstruction_mse",
                                                    "sample_fid")},
                     "checkpoint": metrics.get("checkpoint") or None,
                     "command": shlex.join(["python", "launch.py", *trial_flags(options, params, name)])})
    return sorted(rows, key=lambda r: (r[options.metric] is None, r[options.metric] or 0.0, r["trial"]))


def table(options: SweepOptions, rows: list[dict]) -> str:
    """The summary as a Markdown table (what docs/results.md shows)."""
    keys = [axis.key for axis in options.axes]
    fid = any(r["sample_fid"] is not None for r in rows)
    head = ["trial", *keys, "updates", "minutes", "recon MSE", *(["sample FID"] if fid else []), "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["trial"], *(format_value(r["params"][k]) for k in keys), _number(r["updates"], "{:d}"),
                 _number(r["seconds"] and r["seconds"] / 60, "{:.1f}"), _number(r["reconstruction_mse"], "{:.4f}"),
                 *([_number(r["sample_fid"], "{:.2f}")] if fid else []), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def write_summary(options: SweepOptions, rows: list[dict]) -> str:
    """Print the table and write summary.md and sweep.json into the sweep folder; the table's text."""
    text = table(options, rows)
    options.folder.mkdir(parents=True, exist_ok=True)
    (options.folder / "summary.md").write_text(text + "\n")
    (options.folder / "sweep.json").write_text(json.dumps({"metric": options.metric, "trials": rows}, indent=2) + "\n")
    print(f"\n{text}\n\ntrials' checkpoints: {options.folder / 'trials'}/<trial>; their TensorBoard logs: "
          f"tensorboard --logdir {options.tb_folder}; each trial's command: {options.folder / 'sweep.json'}", flush=True)
    return text


def main(argv: list[str]) -> int:
    """`launch.py sweep ...`: check every flag, run the trials on Ray, print and write the summary.

    Exit status 0 when every trial finished (or was stopped by ASHA), 1 when one failed; bad flags raise
    ConfigError before Ray starts (launch.py prints it as one line, status 2)."""
    options = parse_sweep(argv)
    print(f"sweep: {options.grid_size() * options.num_samples} trials of {', '.join(a.key for a in options.axes)} "
          f"into {options.folder}; each reserves {options.trial_cpus:g} CPUs, {options.trial_gpus:g} GPUs", flush=True)
    if not options.address:  # a local Ray needs no routable address: keep it on loopback
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from deploy.placement import connect

    started = connect(options.address, options.trial_cpus)
    try:
        results = make_tuner(options).fit()
    finally:
        if started:
            ray.shutdown()
    rows = summarize(options, results)
    write_summary(options, rows)
    failed = [r["trial"] for r in rows if r["status"].startswith("error")]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} trials failed: {', '.join(failed)} (their errors are in the "
              "table; each trial's log is in Tune's output above)", flush=True)
        return 1
    if not rows:
        raise ConfigError("the sweep ran no trial")
    return 0

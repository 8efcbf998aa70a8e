"""Command-line flags and config files turned into the typed settings of a run.

Kept in the installed package (not in launch.py) because `ray submit` copies launch.py alone to the
head node. Parsing imports no Ray; launch.py dispatches to a runtime with what this returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.device import DEVICE_CHOICES, gpu_available
from common.errors import ConfigError, OneLineParser
from common.method.config import ExperimentConfig, apply_overrides, check_override_names, merge_overrides
from common.method.presets import PRESETS, preset
from common.storage.data import DATASETS
from deploy.settings import RUNTIMES, DataOptions, RaySettings, RunOptions, TrainCommand
from evaluation.periodic import EvalOptions


def build_parser(description: str) -> OneLineParser:
    """The training flags; the Ray runtime's flags are declared here too so --help shows them all."""
    p = OneLineParser(prog="launch.py", description=description)
    p.add_argument("--runtime", choices=RUNTIMES, default="ray", help="ray (default) or the single-process reference")
    p.add_argument("--preset", choices=tuple(PRESETS), help="default: paper-lookahead with a GPU, small-lookahead without")
    p.add_argument("--config", type=Path, help="YAML file of {section: {setting: value}} overrides")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                   help="override one setting, e.g. --set mdp.horizon=8 (repeatable)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--data-dir", type=Path, help="torchvision-layout folder (or image folder); default: searched")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--num-goals", type=int, help="train on the first N training images only")
    p.add_argument("--total-updates", type=int, default=RunOptions.total_updates, help="learner steps to run")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of training")
    p.add_argument("--checkpoint-dir", type=Path, help="where checkpoints go (default: none are written)")
    p.add_argument("--checkpoint-every", type=float, default=RunOptions.checkpoint_every, help="seconds")
    p.add_argument("--keep-checkpoints", type=int, default=RunOptions.keep_checkpoints)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--seed", type=int, default=RunOptions.seed)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="the single-process trainer's device (the Ray learner's follows --learner-gpus)")
    p.add_argument("--threads", type=int, help="torch CPU threads of the single-process trainer (default: torch's)")
    p.add_argument("--progress-every", type=float, default=RunOptions.progress_every, help="seconds")
    p.add_argument("--log-dir", help="TensorBoard log folder of this run, or none (default: <checkpoint-dir>/tb; "
                                     "none without --checkpoint-dir)")
    p.add_argument("--log-every", type=float, default=RunOptions.log_every, help="seconds between logged points")
    g = p.add_argument_group("evaluation during training")
    g.add_argument("--eval-every", type=float, default=EvalOptions.every, help="seconds between evaluations (0: off)")
    g.add_argument("--eval-test-goals", type=int, default=EvalOptions.test_goals, help="test images reconstructed")
    g.add_argument("--eval-fid-samples", type=int, help="samples for FID (default: 2000 with a GPU, else 0)")
    g.add_argument("--eval-cpus", type=float, default=RaySettings.eval_cpus, help="CPUs the Ray runtime's evaluation actor reserves")
    g.add_argument("--eval-gpus", type=float, default=RaySettings.eval_gpus,
                   help="GPU fraction of the Ray runtime's evaluation actor (FID by default only on a GPU)")
    add_ray_flags(p)
    return p


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the distributed runtime (ignored by --runtime single-process)."""
    g = p.add_argument_group("ray runtime")
    g.add_argument("--num-actors", type=int, help="rollout actors (default: one per CPU left over)")
    g.add_argument("--num-replay-shards", type=int, default=RaySettings.num_replay_shards, help="replay shard actors")
    g.add_argument("--actor-cpus", type=float, default=RaySettings.actor_cpus, help="CPUs per rollout actor")
    g.add_argument("--actor-gpus", type=float, default=RaySettings.actor_gpus, help="GPU fraction per rollout actor")
    g.add_argument("--learner-cpus", type=float, default=RaySettings.learner_cpus, help="CPUs for the learner")
    g.add_argument("--learner-gpus", type=float, help="GPUs for the learner (default: 1 if the cluster has one)")
    g.add_argument("--metrics-port", type=int, default=RaySettings.metrics_port, help="Prometheus endpoint on the driver (0: any free port, -1: off)")
    g.add_argument("--address", help="Ray cluster to join, e.g. auto; default: start Ray locally")
    g.add_argument("--publish-every", type=int, default=RaySettings.publish_every, help="learner steps between weight publications")
    g.add_argument("--shared-checkpoint-dir", action="store_true",
                   help="--checkpoint-dir is on a filesystem every node mounts (NFS, EFS): replay shards spread over "
                        "the nodes and write their checkpoint files where they run (default: shards on the driver's node)")
    g.add_argument("--max-learner-restarts", type=int, default=RaySettings.max_learner_restarts,
                   help="times the driver restarts a dead learner from the newest checkpoint before ending the run")


def load_config(args: argparse.Namespace) -> tuple[str, ExperimentConfig]:
    """Preset, then the --config file, then the --set items (a later one wins), applied and checked as one.

    Names are checked per source, so an unknown one is reported against the file or --set that gave it;
    values are checked once, on the whole, so settings that need each other can come from either source in
    any order: `--set acting.stochastic=true --set acting.prior_weight=0.001` is checked as a whole.
    """
    file_overrides = _read_yaml(args.config) if args.config else {}
    name = args.preset or file_overrides.pop("preset", None)
    name, config = preset(name, gpu_available())
    check_override_names(config, file_overrides, str(args.config))
    set_overrides = merge_overrides(*(_parse_set(item) for item in args.set))
    check_override_names(config, set_overrides, "--set")
    merged = merge_overrides(file_overrides, set_overrides)
    return name, apply_overrides(config, merged, "--config/--set") if merged else config


def _read_yaml(path: Path) -> dict:
    import yaml  # a dependency of ray; imported only when a file is given

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _parse_set(item: str) -> dict:
    import yaml

    key, sep, text = item.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set {item!r}: expected SECTION.NAME=VALUE, e.g. mdp.horizon=8")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: cannot parse value {text!r}") from exc
    return {section: {name: plain_number(value)}}


def plain_number(value):
    """A string YAML 1.1 leaves unparsed but Python reads as a number ('3e-4', '1e3') as that float, so
    `--set learning.proposal_lr=3e-4` means what it says; anything else unchanged."""
    if isinstance(value, str) and any(c.isdigit() for c in value):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_writable_checkpoint_dir(run: RunOptions) -> None:
    """Refuse a --checkpoint-dir that cannot be created or written (a parent that is a file, a read-only place)
    in one line before training starts, not as a traceback at the first checkpoint after minutes of training.

    Nothing is created: the folder itself when it exists, else its nearest existing parent, is what is checked.
    """
    import os

    if run.checkpoint_dir is None:
        return
    folder = Path(run.checkpoint_dir).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise ConfigError(f"--checkpoint-dir {run.checkpoint_dir}: cannot create or write there: {problem}; "
                      "expected a writable folder")


def check_fresh_checkpoint_dir(run: RunOptions) -> None:
    """Refuse a new run (no --resume) into a folder that holds another run's checkpoints.

    Its checkpoints would be pruned by the older, higher-numbered ones, and a restarted learner or shard
    would come back from the other run's state; so the user says which: --resume, or another folder.
    """
    from common.storage.checkpoint import complete_checkpoints

    found = complete_checkpoints(run.checkpoint_dir) if run.checkpoint_dir and not run.resume else []
    if found:
        raise ConfigError(f"--checkpoint-dir {run.checkpoint_dir} already holds checkpoints (newest {found[-1].name}); "
                          "pass --resume to continue from it, or choose another folder")


def parse_train(argv: list[str], description: str) -> TrainCommand:
    """Parse and check training flags; every bad value raises ConfigError with one line."""
    args = build_parser(description).parse_args(argv)
    name, config = load_config(args)
    run = RunOptions(total_updates=args.total_updates, time_limit=args.time_limit,
                     checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                     keep_checkpoints=args.keep_checkpoints, resume=args.resume, seed=args.seed,
                     device=args.device, progress_every=args.progress_every, threads=args.threads,
                     log_dir=log_dir(args.log_dir, args.checkpoint_dir), log_every=args.log_every)
    command = TrainCommand(args.runtime, name, args.preset is not None, config,
                           DataOptions(args.dataset, args.data_dir, args.download, args.num_goals), run,
                           EvalOptions(args.eval_every, args.eval_test_goals, args.eval_fid_samples), ray_settings(args))
    check_fresh_checkpoint_dir(run)
    check_writable_checkpoint_dir(run)
    return command


def log_dir(flag: str | None, checkpoint_dir: Path | None) -> Path | None:
    """--log-dir as given ('none': no log), else <checkpoint-dir>/tb; a run that writes no checkpoints writes
    no log either (like its evaluation files), unless --log-dir asks for one."""
    if flag is None:
        return checkpoint_dir / "tb" if checkpoint_dir is not None else None
    if not flag.strip():
        raise ConfigError("--log-dir needs a folder, or none to write no TensorBoard log")
    return None if flag.strip().lower() == "none" else Path(flag)


def ray_settings(args: argparse.Namespace) -> RaySettings:
    """The Ray runtime's flags as checked settings (built, so checked, whatever the runtime)."""
    return RaySettings(num_actors=args.num_actors, num_replay_shards=args.num_replay_shards,
                       actor_cpus=args.actor_cpus, actor_gpus=args.actor_gpus, learner_cpus=args.learner_cpus,
                       learner_gpus=args.learner_gpus, eval_cpus=args.eval_cpus, eval_gpus=args.eval_gpus,
                       metrics_port=args.metrics_port, address=args.address, publish_every=args.publish_every,
                       shared_checkpoint_dir=args.shared_checkpoint_dir,
                       max_learner_restarts=args.max_learner_restarts)

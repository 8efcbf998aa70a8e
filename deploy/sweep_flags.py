"""`launch.py sweep`'s flags: the search space, the trials' resources, and each trial's own training flags.

A sweep is a set of single-process training runs that differ in a few settings. Its flags name the
axes (`--grid acting.beam_width=1,2` tries each value, and several grids make a cartesian product;
`--choice`, `--uniform` and `--loguniform` are drawn at random, `--num-samples` times), and every other
flag is a training flag that each trial gets as it is (`--time-limit 300 --preset small`...). An axis
is a setting (`SECTION.NAME`, as `--set` takes it), `preset` or `seed`. Each trial is then described by
ordinary launch.py flags, so it trains exactly as `launch.py` would with them, and its checkpoints are
the usual ones (`launch.py evaluate --checkpoint` and `--resume` take them).

Everything is checked here, before Ray starts: every grid point, every choice and both ends of every
range are built into a run's settings, so a bad value is one line naming it. Imports no Ray.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, OneLineParser
from common.method.config import check_choice, check_non_negative, check_positive, check_positive_int
from common.storage.data import default_data_dirs, find_data_dir
from deploy.cli import build_parser, parse_train, plain_number
from deploy.settings import TrainCommand

KINDS = ("grid", "choice", "uniform", "loguniform")
METRICS = ("reconstruction_mse", "sample_fid")
FLAG_KEYS = ("preset", "seed")  # axes that are launch.py flags rather than --set settings
MAX_GRID_POINTS = 1000
TRIAL_PROGRESS_EVERY = "60"  # a trial's progress lines, unless --progress-every says otherwise: 4 trials at 5 s drown


@dataclass(frozen=True)
class Axis:
    """One swept setting: its key and either the values to try (grid, choice) or a range (low, high)."""

    kind: str
    key: str  # SECTION.NAME, preset or seed
    values: tuple

    def __post_init__(self):
        check_choice("axis kind", self.kind, KINDS)
        if self.kind in ("uniform", "loguniform"):
            low, high = self.values
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise ConfigError(f"--{self.kind} {self.key}: expected LOW,HIGH numbers with LOW < HIGH, "
                                  f"got {low!r},{high!r}")
            if self.kind == "loguniform" and low <= 0:
                raise ConfigError(f"--loguniform {self.key}: LOW must be positive, got {low!r}")

    def probes(self) -> tuple:
        """The values to check before anything starts: every value, or both ends of a range."""
        return self.values


@dataclass(frozen=True)
class SweepOptions:
    """A sweep: where it writes, what it searches, how trials are scheduled, and the trials' common flags."""

    folder: Path  # trials/<name>/ (checkpoints), tb/<name>/ (TensorBoard), tune/, summary.md, sweep.json
    axes: tuple[Axis, ...]
    training: tuple[str, ...]  # launch.py training flags every trial gets
    num_samples: int = 1
    metric: str = "reconstruction_mse"
    asha: bool = False
    asha_grace: float | None = None  # a trial's seconds before ASHA may stop it (None: 2 evaluation periods)
    asha_reduction: float = 2.0
    trial_cpus: float = 1.0
    trial_gpus: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    log_dir: Path | None = None  # every trial's TensorBoard log under it (None: <folder>/tb)

    def __post_init__(self):
        if not self.axes:
            raise ConfigError("a sweep needs at least one axis: --grid, --choice, --uniform or --loguniform "
                              "SECTION.NAME=... (or preset=..., seed=...)")
        keys = [axis.key for axis in self.axes]
        if len(set(keys)) < len(keys):
            raise ConfigError(f"each setting is swept by one axis only; repeated: {sorted({k for k in keys if keys.count(k) > 1})}")
        check_positive_int("--num-samples", self.num_samples)
        check_choice("--metric", self.metric, METRICS)
        check_positive("--trial-cpus", self.trial_cpus)
        check_non_negative("--trial-gpus", self.trial_gpus)
        check_positive("--asha-reduction", self.asha_reduction)
        if self.asha_reduction <= 1:
            raise ConfigError(f"--asha-reduction must be above 1, got {self.asha_reduction!r}")
        if self.asha_grace is not None:
            check_positive("--asha-grace", self.asha_grace)
        if self.max_concurrent is not None:
            check_positive_int("--max-concurrent", self.max_concurrent)

    @property
    def tb_folder(self) -> Path:
        """The folder holding every trial's TensorBoard log (`tensorboard --logdir` it to compare them)."""
        return self.log_dir if self.log_dir is not None else self.folder / "tb"

    def grid_size(self) -> int:
        """Trials in one pass over the grids (the product of their sizes; 1 without grids)."""
        return math.prod(len(axis.values) for axis in self.axes if axis.kind == "grid")


def build_sweep_parser() -> OneLineParser:
    """The sweep's own flags; everything else is a training flag for every trial."""
    p = OneLineParser(prog="launch.py sweep", description="Ray Tune sweep of single-process training runs",
                      epilog="Every other flag is a training flag each trial gets (python launch.py --help), e.g. "
                             "--time-limit 300 --preset small. More: docs/tracking.md.",
                      allow_abbrev=False)  # an abbreviation is a training flag's, never swallowed here
    p.add_argument("--checkpoint-dir", type=Path, help="the sweep's folder (required): trials/, tb/, tune/, summary.md")
    for kind, values, what in (("grid", "V1,V2", "try each value (cartesian product of all grids)"),
                               ("choice", "V1,V2", "draw one value per trial"),
                               ("uniform", "LOW,HIGH", "draw uniformly"), ("loguniform", "LOW,HIGH", "draw log-uniformly")):
        p.add_argument(f"--{kind}", action="append", default=[], metavar=f"KEY={values}", help=f"{what}; KEY is "
                       "SECTION.NAME, preset or seed (repeatable)")
    p.add_argument("--num-samples", type=int, default=1, help="passes over the grid (each draws the random axes anew)")
    p.add_argument("--metric", default="reconstruction_mse", help="what trials are ranked (and ASHA stops) by: "
                   "reconstruction_mse or sample_fid (needs FID samples)")
    p.add_argument("--asha", action="store_true", help="ASHA early stopping on --metric (needs --time-limit)")
    p.add_argument("--asha-grace", type=float, help="seconds a trial trains before ASHA may stop it "
                   "(default: two --eval-every periods)")
    p.add_argument("--asha-reduction", type=float, default=2.0, help="ASHA keeps 1 in this many trials at each rung")
    p.add_argument("--trial-cpus", type=float, default=1.0, help="CPUs each trial reserves (its torch threads)")
    p.add_argument("--trial-gpus", type=float, default=0.0, help="GPUs (or a fraction) each trial reserves")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as resources allow)")
    p.add_argument("--address", help="Ray cluster to run the trials on, e.g. auto (default: a local Ray)")
    p.add_argument("--log-dir", type=Path, help="folder of every trial's TensorBoard log (default: <checkpoint-dir>/tb)")
    return p


def parse_axis(kind: str, item: str) -> Axis:
    """KEY=V1,V2,... (values as YAML reads them, so lists nest: network.groups=4,8 or KEY=[8,16],[16,32])."""
    import yaml

    key, sep, text = item.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not text.strip() or not (key in FLAG_KEYS or (dot and section and name)):
        raise ConfigError(f"--{kind} {item!r}: expected KEY=V1,V2 with KEY SECTION.NAME, preset or seed, "
                          "e.g. acting.beam_width=1,2")
    try:
        values = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError as exc:
        raise ConfigError(f"--{kind} {item!r}: cannot read the values {text!r} as a comma-separated list") from exc
    values = tuple(plain_number(v) for v in values)
    if kind in ("uniform", "loguniform") and len(values) != 2:
        raise ConfigError(f"--{kind} {item!r}: expected exactly LOW,HIGH")
    if kind in ("grid", "choice") and len(set(map(render, values))) < len(values):
        raise ConfigError(f"--{kind} {item!r}: a value is repeated")
    return Axis(kind, key, values)


def render(value) -> str:
    """A value as launch.py's flags take it back (`--set KEY=<this>`, `--preset <this>`)."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_sweep(argv: list[str]) -> SweepOptions:
    """Parse and check a sweep's flags and every trial's training flags; one ConfigError line if any is bad."""
    args, training = build_sweep_parser().parse_known_args(argv)
    if args.checkpoint_dir is None:
        raise ConfigError("a sweep needs --checkpoint-dir DIR: its trials' checkpoints, logs and summary go there")
    axes = tuple(parse_axis(kind, item) for kind in KINDS for item in getattr(args, kind))
    options = SweepOptions(args.checkpoint_dir.resolve(), axes, tuple(absolute_paths(training)), args.num_samples,
                           args.metric, args.asha, args.asha_grace, args.asha_reduction, args.trial_cpus,
                           args.trial_gpus, args.max_concurrent, args.address,
                           args.log_dir.resolve() if args.log_dir else None)
    check_training(options)
    return options


def absolute_paths(training: list[str]) -> list[str]:
    """The training flags with --data-dir and --config made absolute (a trial may run in another working
    directory, or on another node that mounts the same paths) and the data folder found here when not given."""
    flags, wanted = [], ("--data-dir", "--config")
    for i, flag in enumerate(training):
        name, eq, value = flag.partition("=")
        if eq and name in wanted:
            flag = f"{name}={Path(value).resolve()}"
        elif i and training[i - 1] in wanted:
            flag = str(Path(flag).resolve())
        flags.append(flag)
    if not any(f == "--data-dir" or f.startswith("--data-dir=") for f in flags):
        args, _ = build_parser("sweep").parse_known_args(flags)
        found = None if args.dataset == "folder" else find_data_dir(args.dataset, default_data_dirs())
        flags += ["--data-dir", str(found.resolve())] if found else []
    return flags


def check_training(options: SweepOptions) -> None:
    """Refuse flags the sweep owns and a folder that holds trials, then build the settings of every grid
    point and every probe value."""
    for i, flag in enumerate(options.training):
        name, _, value = flag.partition("=")
        if name == "--resume":
            raise ConfigError("--resume: a sweep starts new trials; continue one with launch.py --resume and the "
                              "trial's flags from <sweep>/sweep.json (its --checkpoint-dir is <sweep>/trials/<trial>)")
        value = value or (options.training[i + 1] if i + 1 < len(options.training) else "")
        if name == "--runtime" and value != "single-process":
            raise ConfigError(f"--runtime {value}: each sweep trial is a single-process run (Ray schedules the "
                              "trials); leave out --runtime")
    trials = options.folder / "trials"
    if trials.is_dir() and any(trials.iterdir()):
        raise ConfigError(f"--checkpoint-dir {options.folder} already holds a sweep's trials; choose another folder")
    base = parse_train(trial_flags(options, {}, "check"), "sweep")
    if base.evaluation.every <= 0:
        raise ConfigError("a sweep reports each trial's periodic evaluation: --eval-every must be above 0")
    if options.metric == "sample_fid" and not base.evaluation.fid_samples and options.trial_gpus == 0:
        raise ConfigError("--metric sample_fid needs FID at every evaluation: pass --eval-fid-samples N (on by "
                          "default only for trials with --trial-gpus)")
    if options.asha and base.run.time_limit is None:
        raise ConfigError("--asha stops trials by training time: give every trial a --time-limit")
    if options.asha and asha_grace(options, base) >= base.run.time_limit:
        raise ConfigError(f"--asha-grace {asha_grace(options, base):g}s leaves ASHA nothing to stop within "
                          f"--time-limit {base.run.time_limit:g}s; shorten it")
    for params in probe_points(options):
        try:
            parse_train(trial_flags(options, params, "check"), "sweep")
        except ConfigError as exc:
            values = ", ".join(f"{key}={render(value)}" for key, value in params.items())
            raise ConfigError(f"the trial with {values}: {exc}") from None


def asha_grace(options: SweepOptions, base: TrainCommand) -> float:
    """Seconds of training before ASHA may stop a trial: --asha-grace, or two evaluation periods."""
    return options.asha_grace if options.asha_grace is not None else 2 * base.evaluation.every


def probe_points(options: SweepOptions) -> list[dict]:
    """Every grid point (with each random axis at its first probe), then each other probe of each random axis."""
    grids = [a for a in options.axes if a.kind == "grid"]
    others = [a for a in options.axes if a.kind != "grid"]
    if options.grid_size() > MAX_GRID_POINTS:
        raise ConfigError(f"the grids make {options.grid_size()} trials per pass, more than {MAX_GRID_POINTS}; "
                          "sweep fewer values or draw some with --choice")
    first = {a.key: a.probes()[0] for a in others}
    points = [{**first, **dict(zip([a.key for a in grids], combo))}
              for combo in itertools.product(*[a.values for a in grids])]
    return points + [{**points[0], a.key: value} for a in others for value in a.probes()[1:]]


def trial_flags(options: SweepOptions, params: dict, name: str) -> list[str]:
    """The launch.py flags of one trial: the common training flags, then its own folder, log, threads and
    device, then its values (after the common flags, so they win)."""
    given = {flag.partition("=")[0] for flag in options.training}
    flags = list(options.training) + ["--runtime", "single-process", "--log-dir", str(options.tb_folder / name),
                                      "--checkpoint-dir", str(options.folder / "trials" / name)]
    if "--threads" not in given:
        flags += ["--threads", str(max(1, int(options.trial_cpus)))]
    if "--device" not in given and options.trial_gpus == 0:
        flags += ["--device", "cpu"]  # a trial without a GPU of its own stays off the node's GPUs
    if "--progress-every" not in given:
        flags += ["--progress-every", TRIAL_PROGRESS_EVERY]
    for key, value in params.items():
        flags += [f"--{key}", render(value)] if key in FLAG_KEYS else ["--set", f"{key}={render(value)}"]
    return flags


def trial_name(index: int, params: dict) -> str:
    """A trial's folder name: its index and values by key, e.g. 01-beam_width=2,proposal_lr=0.001 (full keys
    where the short ones would clash)."""
    short = {key: key.rpartition(".")[2] for key in params}
    if len(set(short.values())) < len(short):
        short = {key: key for key in params}
    values = ",".join(f"{short[key]}={format_value(params[key])}" for key in sorted(params))
    return f"{index:02d}-{values}".replace("/", "_")


def format_value(value) -> str:
    """Short text of a value for names and tables (3 significant digits for a float)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return render(value).replace(" ", "")

"""What a sweep is: its typed config, its search space, and each trial's pretraining config.

A sweep file (``configs/sweeps/*.yaml``) names a recipe, fixed ``train:`` fields for every trial and a
``space:`` of ``TrainConfig`` fields. In a space a list is a grid axis (``grid`` search) or a choice
(``random`` / ``optuna``); a mapping ``{loguniform: [lo, hi]}``, ``{uniform: …}``, ``{randint: …}``,
``{quniform: [lo, hi, q]}`` or ``{choice: […]}`` is a distribution. String values may name other fields
of the trial in braces (``run:{sweeps}/init/runs/{model}/final``): ``{sweep}`` is the sweep's folder,
``{sweeps}`` the folder that holds it (``storage``), ``{trial_id}`` Tune's id of the trial.
Everything is checked before any trial starts: unknown fields, empty or malformed axes, values of the
wrong type, unknown presets, missing builds and ``timm:``/``run:`` files that do not fit the preset.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pipelines.build.manifest import read_manifest
from pipelines.settings import ConfigError, Layer, _Raw, resolve
from pipelines.storage import Location, local_init
from pipelines.train.config import TrainConfig, data_key
from pipelines.train.recipes import get_recipe

DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "quniform": 3, "choice": None}
# Fields a trial's own run sets: the sweep owns where runs go and what they are called.
NOT_SWEPT = ("storage", "name", "recipe", "until_step")
SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")


@dataclass
class SweepConfig:
    data: str = ""  # a build folder; a space may sweep `data` instead (one build per teacher)
    storage: str = "runs/sweeps"  # sweeps go to <storage>/<name>/
    name: str = "sweep"  # re-running the same name resumes the sweep
    recipe: str = "cpu"  # every trial's recipe (configs/recipes/)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields fixed for every trial
    space: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields swept: lists or distributions
    search: str = "grid"  # grid | random | optuna (optuna: pip install optuna)
    num_samples: int = 1  # grid: repeats of the whole grid; random/optuna: trials
    scheduler: str = "fifo"  # fifo | asha (stops trials early on `metric`)
    metric: str = "zeroshot_top1"  # a metric the runs report: zeroshot_top1/top5 (periodic eval) or loss
    mode: str = "max"  # max | min
    grace_period: int = 50  # asha: steps before a trial can be stopped
    reduction_factor: int = 2  # asha: 1/reduction_factor of the trials go on at each rung
    max_concurrent_trials: int = 0  # 0 = as many as the cluster fits at once
    trial_cpus: float = 0.05  # the trial's own process (it starts Ray Train and waits)
    run_name: str = "{trial_id}"  # each trial's run folder under <sweep>/runs/; may use the trial's fields
    check_fits: bool = True  # refuse trials bigger than the cluster (off on autoscaling clusters)
    mlflow: bool = True  # also log to MLflow when mlflow is installed
    mlflow_tracking_uri: str = ""  # default: sqlite:///<sweep>/mlflow.db (mlflow ui --backend-store-uri …)
    report_every_s: float = 60.0  # the report is refreshed at most this often while trials run

    def __post_init__(self) -> None:
        checks = {
            "search": self.search in SEARCHES,
            "scheduler": self.scheduler in SCHEDULERS,
            "mode": self.mode in ("max", "min"),
            "num_samples": self.num_samples >= 1,
            "grace_period": self.grace_period >= 1,
            "reduction_factor": self.reduction_factor >= 2,
            "max_concurrent_trials": self.max_concurrent_trials >= 0,
            "trial_cpus": self.trial_cpus >= 0,
        }
        bad = [f"{n}={getattr(self, n)!r}" for n, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SweepConfig: invalid {', '.join(bad)}")

    @property
    def folder(self) -> Location:
        """``<storage>/<name>``: an absolute local folder or a URI (``pipelines.storage``)."""
        return Location.of(self.storage) / self.name


@dataclass(frozen=True)
class Axis:
    field: str
    kind: str  # grid (a list) | a distribution name
    values: tuple[Any, ...]  # the list, or the distribution's arguments


def parse_space(space: dict[str, Any], where: str) -> list[Axis]:
    """The space's axes, in file order; malformed entries name the field and what was expected."""
    if not space:
        raise ConfigError(f"{where}: the search space is empty; give space: in the file or --grid key=v1,v2")
    fields = set(TrainConfig.__dataclass_fields__)
    axes = []
    for key, spec in space.items():
        if key not in fields or key in NOT_SWEPT:
            known = ", ".join(sorted(fields - set(NOT_SWEPT)))
            raise ConfigError(f"{where}: space.{key}: not a TrainConfig field a trial can sweep; fields: {known}")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where}: space.{key}: an empty list; give at least one value")
            axes.append(Axis(key, "grid", tuple(spec)))
            continue
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise ConfigError(
                f"{where}: space.{key}={spec!r}: expected a list of values or one of "
                f"{{{', '.join(f'{d}: [...]' for d in DISTRIBUTIONS)}}}"
            )
        (kind, args), arity = next(iter(spec.items())), DISTRIBUTIONS[next(iter(spec))]
        if not isinstance(args, list) or not args or (arity and len(args) != arity):
            count = arity or "one or more"
            raise ConfigError(f"{where}: space.{key}: {kind} takes a list of {count} values, got {args!r}")
        if kind != "choice" and not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: space.{key}: {kind} bounds must be numbers, got {args!r}")
        if kind in ("loguniform", "uniform", "randint", "quniform") and not args[0] < args[1]:
            raise ConfigError(f"{where}: space.{key}: {kind} needs low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{where}: space.{key}: loguniform needs positive bounds, got {args!r}")
        axes.append(Axis(key, kind, tuple(args)))
    return axes


def grid_arguments(items: list[str]) -> dict[str, list[Any]]:
    """``--grid key=v1,v2`` -> ``{key: [raw strings]}`` (typed later by the field they land in)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--grid {item!r} must look like key=v1,v2")
        out[key.strip()] = [_Raw(v) for v in values]
    return out


def is_template(value: Any) -> bool:
    """A value that names other fields (``{model}``, ``{sweeps}``): ``fill_templates`` fills it per trial."""
    return isinstance(value, str) and "{" in value


def fill_templates(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """``{field}`` in string values -> the trial's value of that field (or ``{sweep}``, ``{trial_id}``)."""
    out = {}
    for key, value in params.items():
        if is_template(value):
            names = re.findall(r"{(\w+)}", value)
            missing = [n for n in names if n not in context]
            if missing:
                raise ConfigError(f"space.{key}={value!r}: {{{missing[0]}}} is not a field of the trial")
            value = type(value)(re.sub(r"{(\w+)}", lambda m: str(context[m.group(1)]), value))
        out[key] = value
    return out


FOLDERS = ("sweep", "sweeps")  # the templates that name folders of one machine or bucket


def shown_values(params: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The trial's values as reports, progress lines and TensorBoard show them: its own fields filled in, the
    sweep's folders left as written (``run:{sweeps}/init/runs/nano-s/final``), the same on every machine."""
    return fill_templates(params, {**context, **{name: "{" + name + "}" for name in FOLDERS}})


def trial_context(cfg: SweepConfig, params: dict[str, Any], trial_id: str = "") -> dict[str, Any]:
    base = {**get_recipe(cfg.recipe), **cfg.train, **{k: v for k, v in params.items()}}
    folder = cfg.folder
    return {
        **base,
        "data": params.get("data", cfg.data),
        "sweep": str(folder),
        "sweeps": str(folder.parent),
        "trial_id": trial_id,
    }


def trial_config(cfg: SweepConfig, params: dict[str, Any], sets: list[Layer], run_name: str) -> TrainConfig:
    """One trial's TrainConfig: recipe ← sweep ``train:`` ← command-line ``--set`` ← the trial's values."""
    context = trial_context(cfg, params)
    filled = fill_templates(params, context)
    fixed = {"data": cfg.data, "storage": str(cfg.folder / "runs"), "name": run_name, "recipe": cfg.recipe}
    layers = [
        Layer(f"recipe {cfg.recipe}", get_recipe(cfg.recipe)),
        Layer("the sweep's train:", cfg.train),
        Layer("the sweep", fixed),
        *sets,
        Layer(f"trial {_label(filled)}", filled),
    ]
    return resolve(TrainConfig, layers, {"data": "give --data BUILD or sweep data: in the space"})


def _label(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def grid_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the list axes (distributions left out: they are sampled per trial)."""
    lists = [a for a in axes if a.kind == "grid" or a.kind == "choice"]
    names = [a.field for a in lists]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*[a.values for a in lists])]


def check_builds(cfg: SweepConfig, axes: list[Axis]) -> dict[str, Any]:
    """Every build a trial may read exists; returns data folder -> its manifest."""
    data_axis = next((a for a in axes if a.field == "data"), None)
    folders = [str(v) for v in data_axis.values] if data_axis else [cfg.data]
    if not any(folders):
        raise ConfigError("data is required: give --data BUILD (or sweep data, one build per teacher, in space:)")
    manifests = {}
    for folder in folders:
        path = Location.of(folder) / "manifest.json"
        if not path.is_file():
            raise ConfigError(f"data {folder!r}: no manifest.json there: build it with jobs/build_dataset.py")
        manifests[folder] = read_manifest(str(path))
    return manifests


@dataclass
class SweepPlan:
    axes: list[Axis]
    points: list[dict[str, Any]]  # the grid (list axes) a trial's values come from
    manifests: dict[str, Any]  # build folder -> Manifest
    trial_cpus: float  # the most any trial asks for: its process, its workers, one data task
    trial_gpus: float
    max_steps: int  # the longest trial, in optimiser steps (ASHA's max_t)
    by_data: dict[tuple, TrainConfig] = field(default_factory=dict)  # one trial per data_key: what to prepare
    biggest: TrainConfig | None = None  # the trial that asks for the most CPUs

    @property
    def num_trials(self) -> int | None:
        """Trials the sweep will run, if it is a pure grid."""
        return len(self.points) if all(a.kind == "grid" for a in self.axes) else None


def plan_sweep(cfg: SweepConfig, sets: list[Layer], where: str = "the sweep") -> SweepPlan:
    """Check everything a trial will need, before any trial starts (raises ConfigError naming the problem)."""
    import uni3d

    axes = parse_space(cfg.space, where)
    manifests = check_builds(cfg, axes)
    points = grid_points(axes)
    if len(points) > 100_000:
        raise ConfigError(f"{where}: the grid has {len(points)} points; use search: random with distributions")
    samplers = [a for a in axes if a.kind not in ("grid", "choice")]
    cpus = gpus = 0.0
    max_steps = 1
    names: set[str] = set()
    checked: set[tuple[str, str]] = set()
    by_data: dict[tuple, TrainConfig] = {}
    biggest: TrainConfig | None = None
    for point in points:
        for bounds in _bound_samples(samplers):
            params = {**point, **bounds}
            run = fill_templates({"run_name": cfg.run_name}, trial_context(cfg, params, trial_id="x"))["run_name"]
            train = trial_config(cfg, params, sets, run)
            try:
                preset = uni3d.get_preset(train.model)
            except ValueError as exc:
                raise ConfigError(f"{where}: model={train.model!r}: {exc}") from None
            if (train.init, train.model) not in checked:
                checked.add((train.init, train.model))
                _check_init(train, preset, manifests[train.data].embed_dim, where)
            if "{trial_id}" not in cfg.run_name:
                names.add(run)
            need = cfg.trial_cpus + train.num_workers * train.worker_cpus + train.data_cpus
            if biggest is None or need > cpus:
                biggest = train
            cpus = max(cpus, need)
            gpus = max(gpus, float(train.num_workers) if train.use_gpu else 0.0)
            max_steps = max(max_steps, _estimate_steps(train, manifests[train.data].num_shapes))
            by_data.setdefault(data_key(train), train)
    if "{trial_id}" not in cfg.run_name:
        if cfg.search != "grid" or samplers or len(names) < len(points) * cfg.num_samples:
            raise ConfigError(
                f"run_name={cfg.run_name!r} gives two trials the same run folder; include {{trial_id}} in it"
            )
    return SweepPlan(axes, points, manifests, cpus, gpus, max_steps, by_data, biggest)


FITTED = ("num_workers", "worker_cpus", "data_cpus")  # what a sweep sizes to the cluster, unless the user set it


def user_fields(cfg: SweepConfig, sets: list[Layer]) -> set[str]:
    """TrainConfig fields the user gave: ``--set``, the sweep file's ``train:``, or an axis of the space."""
    return {k for layer in sets for k in layer.values} | set(cfg.train) | set(cfg.space)


def fit_trials(cfg: SweepConfig, sets: list[Layer], plan: SweepPlan, cpus: float, gpus: float) -> Layer | None:
    """Trial resources the user left to the recipe, sized so that a trial fits the cluster; None if it already does.

    GPU trials get at most as many workers as the cluster has GPUs; the CPUs a trial's workers and its data tasks
    ask for (Ray's logical CPUs: they place tasks, they do not change what a trial computes) shrink in
    proportion until the trial fits. A fitted layer goes to every trial; the user's own values are never changed
    (a trial still too big for the cluster is then refused by ``check_resources``)."""
    train = plan.biggest
    if not cfg.check_fits or train is None or (plan.trial_cpus <= cpus + 1e-9 and plan.trial_gpus <= gpus + 1e-9):
        return None
    free = [f for f in FITTED if f not in user_fields(cfg, sets)]
    values: dict[str, Any] = {}
    workers = train.num_workers
    if train.use_gpu and "num_workers" in free and gpus >= 1 and workers > gpus:
        workers = values["num_workers"] = int(gpus)
    fixed = cfg.trial_cpus
    flexible = 0.0
    for name, amount in (("worker_cpus", workers * train.worker_cpus), ("data_cpus", train.data_cpus)):
        if name in free:
            flexible += amount
        else:
            fixed += amount
    room = cpus - fixed
    if flexible > 0 and room > 0 and fixed + flexible > cpus + 1e-9:
        scale = room / flexible
        for name in ("worker_cpus", "data_cpus"):
            if name in free:
                values[name] = math.floor(getattr(train, name) * scale * 1000) / 1000  # down: the sum fits
    if not values:
        return None
    return Layer(f"sized to the cluster ({cpus:g} CPUs, {gpus:g} GPUs)", values)


def describe_plan(cfg: SweepConfig, plan: SweepPlan, concurrent: int, fitted: Layer | None) -> str:
    """One line: trials at once, and what each asks for."""
    train = plan.biggest
    head = f"{concurrent} trial{'s' if concurrent != 1 else ''} at once"
    if train is None:
        return head
    workers = f"{train.num_workers} workers x {train.worker_cpus:g}"
    parts = f"process {cfg.trial_cpus:g} + {workers} + data {train.data_cpus:g}"
    line = f"{head}, each {plan.trial_cpus:g} CPUs ({parts}) and {plan.trial_gpus:g} GPUs"
    if fitted is not None:
        line += "; " + ", ".join(f"{k}={v}" for k, v in fitted.values.items()) + f", {fitted.source}"
    return line


def _bound_samples(samplers: list[Axis]) -> list[dict[str, Any]]:
    """Each distribution at its low and its high bound: enough to type-check the values it will draw."""
    if not samplers:
        return [{}]
    return [{a.field: a.values[0] for a in samplers}, {a.field: a.values[1] for a in samplers}]


def _check_init(train: TrainConfig, preset: Any, embed_dim: int, where: str) -> None:
    from uni3d.init import check_init, parse_init

    try:
        with local_init(parse_init(train.init)) as spec:  # a URI: a temporary copy
            check_init(spec, preset.replace(embed_dim=embed_dim))
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"{where}: init={train.init!r} for model={train.model!r}: {_one_line(str(exc))}") from None


def _one_line(message: str) -> str:
    """A multi-line fit report as one line: its head, the key counts, and the preset the file fits."""
    head, *rest = message.splitlines()
    counts = [m.group(2) + " " + m.group(1) for line in rest if (m := re.match(r"\s+(\w+) \((\d+)\):", line))]
    tail = [line.strip() for line in rest if "fits" in line and not re.match(r"\s+\w+ \(\d+\):", line)]
    extra = "; ".join([", ".join(counts) + " keys" if counts else "", *tail]).strip("; ")
    return head.rstrip(":") + (f" ({extra})" if extra else "")


def _estimate_steps(train: TrainConfig, num_shapes: int) -> int:
    per_epoch = int(num_shapes * (1 - train.holdout_fraction)) // train.num_workers // train.batch_size
    return max(1, per_epoch * train.epochs)

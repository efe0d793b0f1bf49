"""Ray Tune sweeps of pretraining: the scale and initialisation ablations of Uni3D (arXiv 2310.06773, §4).

Every trial is a whole Ray Train run of ``pipelines.train.driver.run_pretrain`` (the same strategies, DeepSpeed
or DDP), started by a function trainable, as Ray Train V2 runs inside Tune: the trial's process builds
the trainer and Ray Train's workers take their own resources, so the driver caps the trials running at
once to what the cluster fits. Only the reports that carry the sweep's metric (the periodic held-out
zero-shot evaluation) reach Tune, which is what its schedulers (ASHA) and searchers (Optuna) act on.

Layout of ``<storage>/<name>/``: ``sweep.json`` (the resolved sweep), Tune's experiment state,
``scheduler/asha.pkl`` (ASHA's rungs), one folder per trial (``result.json``, ``progress.csv``,
``error.txt``), ``runs/<run>/`` (each trial's pretraining run: ``config.json``, ``metrics.jsonl``,
``tensorboard/`` with the trial's hyperparameters in the HParams view, checkpoints, ``final/``),
``report/`` (``pipelines.sweep.report``, refreshed while the sweep runs) and ``mlflow.db`` when MLflow
is installed. Re-running the same sweep restores it with ``Tuner.restore``: finished trials are kept,
interrupted ones resume from their last checkpoint, and ASHA keeps the rungs it had recorded and the trials it
stopped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import ray
from ray import tune
from ray.data import DataContext
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import TrialScheduler

from pipelines import faults
from pipelines.ray_connect import data_progress
from pipelines.settings import ConfigError, Layer
from pipelines.storage import Location, is_uri
from pipelines.sweep.report import TrialRecord, read_metrics_file, summarise_metrics, write_report
from pipelines.sweep.space import (
    SweepConfig,
    SweepPlan,
    describe_plan,
    fill_templates,
    fit_trials,
    is_template,
    plan_sweep,
    shown_values,
    trial_config,
    trial_context,
)
from pipelines.train.config import data_key
from pipelines.train.driver import DataPrep, prepare_data, run_pretrain

# ResumableASHA's rungs, in a folder of their own: on a restore Tune copies the .pkl and .json files at the top of the
# sweep's folder to its staging folder and later uploads them again, which would put back the rungs of the restore
SCHEDULER_STATE = "scheduler/asha.pkl"


class MetricReportCallback(TuneReportCallback):
    """Ray Train -> Tune, only the reports that carry the sweep's metric (Tune requires it in every result)."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


@dataclass(frozen=True)
class TrialSpec:
    """What every trial needs besides its own values: shipped once to the trials by ``tune.with_parameters``."""

    sweep: SweepConfig
    sets: tuple[Layer, ...]  # the command line's --set items for every trial
    fields: tuple[str, ...]  # the swept fields
    prepared: tuple[DataPrep, ...] = ()  # counts and held-out splits, made once by the driver
    ray_tqdm: bool = True  # Ray Data's tqdm bars from the trials: off when the driver's stdout is not a terminal
    faults: str = ""  # tests only: the driver's $UNI3D_FAULTS, for the trials' own runs (pipelines.faults)


def run_name(sweep: SweepConfig, params: dict[str, Any], trial_id: str) -> str:
    context = trial_context(sweep, params, trial_id)
    return fill_templates({"run_name": sweep.run_name}, context)["run_name"]


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """One trial (a Tune function trainable): a pretraining run with the trial's values."""
    trial_id = tune.get_context().get_trial_id()
    data_progress(spec.ray_tqdm)  # a trial's own datasets (its training rows) report as the driver's do
    if spec.faults:  # tests only
        os.environ[faults.ENV] = spec.faults
    params = {k: config[k] for k in spec.fields}
    name = run_name(spec.sweep, params, trial_id)
    cfg = trial_config(spec.sweep, params, list(spec.sets), name)
    run_dir = Location.of(cfg.storage) / cfg.name
    if (run_dir / "final").is_dir():  # it ended after Tune last saved its state (a restored sweep): done
        lines = read_metrics_file(run_dir / "metrics.jsonl", missing_ok=True)
        last = next((m for m in reversed(lines) if spec.sweep.metric in m), None)
        if last is not None:
            tune.report(last)
        return
    starts = run_dir / "trial_starts.jsonl"  # one line per start: a restored sweep adds one
    before = starts.read_text() if starts.is_file() else ""  # rewritten whole: object stores do not append
    starts.write_text(before + json.dumps({"trial_id": trial_id, "time": time.time(), "pid": os.getpid()}) + "\n")
    # TensorBoard's HParams: the trial's values as resolved, a template as written (its folders not filled in)
    shown = shown_values(params, trial_context(spec.sweep, params, trial_id))
    hparams = {k: _hparam(shown[k] if is_template(params[k]) else getattr(cfg, k)) for k in spec.fields}
    prepared = next((p for p in spec.prepared if p.key == data_key(cfg)), None)
    callbacks = [MetricReportCallback(spec.sweep.metric)]
    run_pretrain(cfg, verbose=False, callbacks=callbacks, hparams=hparams, prepared=prepared)  # a failure raises


def _hparam(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else str(value)


def tune_space(plan: SweepPlan, search: str) -> dict[str, Any]:
    """Our axes as Tune's space: lists are grid axes for grid search, choices otherwise."""
    space: dict[str, Any] = {}
    for axis in plan.axes:
        values = [_plain(v) for v in axis.values]
        if axis.kind == "grid":
            space[axis.field] = tune.grid_search(values) if search == "grid" else tune.choice(values)
        elif axis.kind == "choice":
            space[axis.field] = tune.choice(values)
        elif axis.kind == "quniform":
            space[axis.field] = tune.quniform(*values)
        else:
            space[axis.field] = getattr(tune, axis.kind)(*values)
    return space


def _plain(value: Any) -> Any:
    """Command-line values (str subclasses) as plain strings: Tune and MLflow show and store them."""
    return str(value) if isinstance(value, str) else value


def cluster_size() -> tuple[float, float]:
    """The cluster's CPUs and GPUs, as Ray counts them now."""
    total = ray.cluster_resources()
    return float(total.get("CPU", 0)), float(total.get("GPU", 0))


def check_resources(cfg: SweepConfig, plan: SweepPlan, cpus: float, gpus: float) -> int:
    """Refuse trials bigger than the cluster; returns how many trials run at once."""
    if cfg.check_fits and (plan.trial_cpus > cpus + 1e-9 or plan.trial_gpus > gpus + 1e-9):
        raise ConfigError(
            f"a trial asks for {plan.trial_cpus:g} CPUs and {plan.trial_gpus:g} GPUs (its process "
            f"{cfg.trial_cpus:g} + num_workers x worker_cpus + data_cpus), the cluster has {cpus:g} CPUs and "
            f"{gpus:g} GPUs: lower num_workers / worker_cpus, or set check_fits=false on an autoscaling cluster"
        )
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    fit = math.floor(cpus / plan.trial_cpus + 1e-9) if plan.trial_cpus else 1
    if plan.trial_gpus:
        fit = min(fit, math.floor(gpus / plan.trial_gpus + 1e-9))
    return max(1, fit)


class ResumableASHA(tune.schedulers.ASHAScheduler):
    """ASHA whose rungs survive a restored sweep.

    ``Tuner.restore`` brings back the trials and the searcher's state, but the scheduler comes back as it was
    built, with empty rungs: the trials run after a resume were compared only with each other, so a trailing
    trial went on whenever it reached a rung first. This one writes its state (what ASHA's own ``save``
    pickles: its ``__dict__``) to ``state_file``, a local path or a URI, after every decision, and reads it
    back when a restored sweep adds its first trial.

    It also keeps the trials it stopped. Tune saves its own state every few seconds, so a kill can come after
    ASHA stopped a trial and before Tune saved that: the restored sweep then resumes the trial, whose rung
    already records it, and ASHA's own rule (a recorded trial goes on) would let it run to the end.
    """

    def __init__(self, state_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_file = state_file
        self._restored = False
        self._stopped: set[str] = set()  # trials ASHA stopped below max_t, saved with the rungs

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._restored:
            self._restored = True
            saved = Location.of(self.state_file)
            if saved.is_file():
                self.__dict__.update(pickle.loads(saved.read_bytes()))  # as ASHA's own restore() does
                self.state_file, self._restored = str(saved), True  # the sweep's folder may have moved
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id in self._stopped:  # stopped before a kill, resumed by a restored Tune: stopped again
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if result.get(self._time_attr, 0) >= self._max_t:
            # ASHA stops a trial that reaches max_t; that is its last step here, and a trial stopped by Tune
            # would be killed before it writes final/. It ends by itself.
            action = TrialScheduler.CONTINUE
        elif action == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        self._save()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def _save(self) -> None:
        Location.of(self.state_file).write_bytes(pickle.dumps(self.__dict__))  # whole: a kill leaves the last one


def _scheduler(cfg: SweepConfig, plan: SweepPlan) -> Any:
    if cfg.scheduler == "fifo":
        return tune.schedulers.FIFOScheduler()
    return ResumableASHA(
        state_file=str(cfg.folder / SCHEDULER_STATE),
        time_attr="step",
        max_t=max(plan.max_steps, cfg.grace_period + 1),
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
    )


def _searcher(cfg: SweepConfig) -> Any:
    if cfg.search != "optuna":
        return None
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("search=optuna needs the optuna package: pip install optuna (or the project's [sweep] extra)")
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=0)


def _mlflow(cfg: SweepConfig) -> list[Any]:
    if not cfg.mlflow or importlib.util.find_spec("mlflow") is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = cfg.mlflow_tracking_uri or f"sqlite:///{_mlflow_db(cfg)}"  # MLflow 3 retired file stores
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=cfg.name, save_artifact=False)]


def _mlflow_db(cfg: SweepConfig) -> str:
    """``<sweep>/mlflow.db``; a sweep in object storage keeps it on the driver's scratch (SQLite needs a file)."""
    if cfg.folder.local:
        return str(cfg.folder / "mlflow.db")
    scratch = Path(os.environ.get("UNI3D_CACHE") or Path.home() / ".cache" / "uni3d") / "mlflow"
    scratch.mkdir(parents=True, exist_ok=True)
    return str(scratch / f"{cfg.name}.db")


def check_same_sweep(cfg: SweepConfig, sets: list[Layer]) -> None:
    """A re-run under an existing name must be the same sweep: say what differs."""
    saved_file = cfg.folder / "sweep.json"
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text())
    current = _describe(cfg, sets)
    keys = ("space", "train", "sets", "recipe", "data", "search", "num_samples", "scheduler", "metric", "run_name")
    diff = [k for k in keys if saved.get(k) != current.get(k)]
    if diff:
        raise ConfigError(
            f"sweep {cfg.folder} exists with other settings ({', '.join(diff)} differ); it resumes only as it was "
            "started: use another --name, or the saved settings in its sweep.json"
        )


def _describe(cfg: SweepConfig, sets: list[Layer], fitted: Layer | None = None) -> dict[str, Any]:
    record = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    record["sets"] = [layer.source for layer in sets]
    if fitted is not None:  # kept: a restored sweep's trials resume with the resources they started with
        record["fitted"] = {"source": fitted.source, "values": fitted.values}
    return record


def saved_fit(cfg: SweepConfig) -> Layer | None:
    """The trial resources a sweep was sized to when it started (``sweep.json``), for its restore."""
    saved = json.loads((cfg.folder / "sweep.json").read_text()).get("fitted")
    return Layer(saved["source"], saved["values"]) if saved else None


@dataclass
class SweepResult:
    folder: Location
    records: list[TrialRecord]
    report: Location

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def run_sweep(cfg: SweepConfig, sets: list[Layer], log: Any = print) -> SweepResult:
    """Run (or resume) the sweep; Ray must be initialised. Raises ConfigError before any trial on bad input."""
    cfg = absolute_paths(cfg)
    plan = plan_sweep(cfg, sets)
    cpus, gpus = cluster_size()
    check_same_sweep(cfg, sets)
    fitted = saved_fit(cfg) if (cfg.folder / "sweep.json").is_file() else fit_trials(cfg, sets, plan, cpus, gpus)
    trial_sets = [*sets, fitted] if fitted is not None else list(sets)
    if fitted is not None:
        plan = plan_sweep(cfg, trial_sets)
    concurrent = check_resources(cfg, plan, cpus, gpus)
    cfg.folder.mkdir()
    (cfg.folder / "sweep.json").write_text(json.dumps(_describe(cfg, sets, fitted), indent=2))
    log(f"[sweep] plan: {describe_plan(cfg, plan, concurrent, fitted)}")
    # Shape counts, the held-out split (its class names embedded by the teacher) and, for a build that fits the
    # object store, its training rows: once for every trial, not once per trial (one copy of the rows).
    prepared = tuple(prepare_data(train) for train in plan.by_data.values())
    ray_tqdm = DataContext.get_current().use_ray_tqdm  # as the job's connect() set it
    injected = os.environ.get(faults.ENV, "")  # tests only
    spec = TrialSpec(cfg, tuple(trial_sets), tuple(a.field for a in plan.axes), prepared, ray_tqdm, injected)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), {"CPU": cfg.trial_cpus})
    reporter = ReportCallback(cfg, spec, plan, log)
    # Each run writes its own TensorBoard events (with hparams): Tune's TensorBoard logger would add a second,
    # differently named copy of every curve under the same logdir. Its JSON and CSV loggers stay.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks = [tune.logger.JsonLoggerCallback(), tune.logger.CSVLoggerCallback(), reporter, *_mlflow(cfg)]
    kill_after = int(faults.faults().get("sweep_kill_after_trials", 0) or 0)  # tests only ($UNI3D_FAULTS)
    if kill_after:
        at_step = int(faults.faults().get("sweep_kill_at_step", 0) or 0)
        callbacks.append(KillAfterTrials(kill_after, at_step, str(cfg.folder)))
    total = plan.num_trials * cfg.num_samples if plan.num_trials else cfg.num_samples
    if tune.Tuner.can_restore(str(cfg.folder)):
        log(f"[sweep] resuming {cfg.folder}: finished trials are kept, interrupted ones continue")
        tuner = tune.Tuner.restore(str(cfg.folder), trainable, resume_unfinished=True, resume_errored=False)
    else:
        (cfg.folder / SCHEDULER_STATE).delete()  # left by a start killed before Tune saved
        log(f"[sweep] {total} trials over {', '.join(spec.fields)} -> {cfg.folder}")
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(plan, cfg.search),
            tune_config=tune.TuneConfig(
                metric=cfg.metric,
                mode=cfg.mode,
                search_alg=_searcher(cfg),
                scheduler=_scheduler(cfg, plan),
                num_samples=cfg.num_samples,
                max_concurrent_trials=concurrent,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=str(cfg.folder.parent),
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=0),  # Ray Train retries workers itself
                verbose=1,
            ),
        )
    grid = tuner.fit()
    reporter.trials = [_EndedTrial(result) for result in grid]  # a restored Tuner reports to its own callbacks
    records = reporter.refresh(force=True)
    return SweepResult(cfg.folder, records, cfg.folder / "report")


class _EndedTrial:
    """A finished trial as Tune's ResultGrid has it, with the attributes ``ReportCallback.record`` reads."""

    def __init__(self, result: Any) -> None:
        # Tune puts the id in every result; the trial's folder is named by it too (trial_dirname_creator), but a
        # trial restarted by a restored sweep gets a new folder with a suffix (<id>_1a2b) when the old one exists
        folder = PurePosixPath(result.path).name
        self.trial_id = (result.metrics or {}).get("trial_id") or re.sub(r"^(\w+_\d{5})_[0-9a-f]{4}$", r"\1", folder)
        self.status = "ERROR" if result.error is not None else "TERMINATED"
        self.config = result.config or {}
        self.last_result = result.metrics or {}
        self.error_file = ""
        self.error_text = f"{type(result.error).__name__}: {result.error}" if result.error is not None else ""


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Storage, builds and init files as absolute paths: Tune runs each trial in its own working folder."""
    from uni3d.init import parse_init

    def data(value: Any) -> Any:
        return str(Path(value).resolve()) if value and "://" not in str(value) else value

    def init(value: Any) -> Any:
        spec = parse_init(str(value))
        if "{" in str(value) or spec.kind == "scratch" or is_uri(spec.path):
            return value
        return type(value)(str(spec.resolve()))

    space = dict(cfg.space)
    for key, fix in (("data", data), ("init", init)):
        if isinstance(space.get(key), list):
            space[key] = [fix(v) for v in space[key]]
    train = {**cfg.train, **({"init": init(cfg.train["init"])} if "init" in cfg.train else {})}
    storage = str(Location.of(cfg.storage))  # absolute when local, a URI as given
    return dataclasses.replace(cfg, data=data(cfg.data), storage=storage, space=space, train=train)


class KillAfterTrials(tune.Callback):
    """Tests only (``pipelines.faults``): the sweep's driver kills itself as soon as ``n`` trials have finished,
    before Tune starts another or saves that they finished: a restored sweep finds those trials' runs finished
    (``final/``) and does not train them again. With ``at_step``, it waits until Tune's saved state in the
    sweep's folder records every trial finished so far (at least ``n``) and a trial started after the ``n``-th
    finished reports a result at that step or later: a restored Tune keeps the finished trials itself, and
    resumes the running one from its checkpoint (a trial that was already running may be at its last step)."""

    def __init__(self, n: int, at_step: int = 0, folder: str = "") -> None:
        self.n, self.at_step, self.folder, self.finished = n, at_step, folder, 0
        self.ended: set[str] = set()
        self.started_after: set[str] = set()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if self.finished >= self.n:
            self.started_after.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.finished += 1
        self.ended.add(trial.trial_id)
        if self.finished >= self.n and not self.at_step:
            self._kill(f"{self.finished} trials finished")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        step = int(result.get("step") or 0)
        if not self.at_step or trial.trial_id not in self.started_after or step < self.at_step:
            return
        saved = self._saved_finished()
        if len(saved) >= self.n and self.ended <= saved:
            self._kill(f"Tune saved {len(saved)} finished trials and trial {trial.trial_id} reported step {step}")

    def _saved_finished(self) -> set[str]:
        """The trials that Tune's experiment state, as saved in the sweep's folder, records as finished."""
        files = Location.of(self.folder).files(recursive=False)  # sorted by name: the latest state last
        states = [f for f in files if f.uri.rsplit("/", 1)[-1].startswith("experiment_state-")]
        if not states:
            return set()
        trials = [json.loads(state) for state, _ in json.loads(states[-1].read_text())["trial_data"]]
        return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}

    def _kill(self, why: str) -> None:
        if "sweep_kill_after_trials" in faults.faults():
            # (Tuner.restore brings its callbacks back pickled: a restored sweep runs without the fault)
            faults.kill_self(f"{why} (sweep_kill_after_trials={self.n}, sweep_kill_at_step={self.at_step})")


class ReportCallback(tune.Callback):
    """Driver side: a progress line per evaluation, and ``report/`` refreshed while trials run."""

    def __init__(self, cfg: SweepConfig, spec: TrialSpec, plan: SweepPlan, log: Any) -> None:
        self.cfg, self.spec, self.log = cfg, spec, log
        self.embed_dims = {k: m.embed_dim for k, m in plan.manifests.items()}
        self.trials: list[Any] = []
        self.ended: dict[str, str] = {}  # trial id -> status: Tune calls on_trial_complete/error before setting it
        self.last = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {**self.__dict__, "trials": [], "log": print}

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.trials = trials
        if time.time() - self.last >= self.cfg.report_every_s:
            self.refresh()

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        label = ", ".join(f"{k}={v}" for k, v in self.values(trial).items())
        value = result.get(self.cfg.metric)
        self.log(f"[sweep] {trial.trial_id} ({label}) step {result.get('step')}: {self.cfg.metric} {value:.4g}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.trials = trials
        self.ended[trial.trial_id] = "TERMINATED"
        self.refresh(force=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.trials = trials
        self.ended[trial.trial_id] = "ERROR"
        self.log(f"[sweep] {trial.trial_id} failed: {_error_line(trial)}")
        self.refresh(force=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.trials = trials
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> list[TrialRecord]:
        if not force and time.time() - self.last < self.cfg.report_every_s:
            return []
        self.last = time.time()
        records = sorted((self.record(t) for t in self.trials), key=lambda r: r.trial_id)
        meta = {"sweep": str(self.cfg.folder), "data": self.cfg.data, "metric": self.cfg.metric}
        classes = [len(c) for r in records if (c := self._classes(r.run_dir))]
        if classes:
            meta["chance_top1"] = 100.0 / classes[0]
        write_report(self.cfg.folder / "report", records, title=f"sweep {self.cfg.name}", meta=meta)
        return records

    def _classes(self, run_dir: str) -> list[str]:
        """The held-out split's class names, from a run's config.json (empty until the run has started)."""
        saved = self.cfg.folder / run_dir / "config.json"
        return json.loads(saved.read_text()).get("heldout", {}).get("classes", []) if saved.is_file() else []

    def values(self, trial: Any) -> dict[str, Any]:
        """The trial's swept values with its fields filled into templates, the sweep's folders as written."""
        params = {k: _plain(trial.config.get(k)) for k in self.spec.fields}
        return shown_values(params, trial_context(self.cfg, params, trial.trial_id))

    def record(self, trial: Any) -> TrialRecord:
        from uni3d.cost import model_cost

        params = {k: _plain(trial.config.get(k)) for k in self.spec.fields}
        name = run_name(self.cfg, params, trial.trial_id)
        values = self.values(trial)
        run_dir = self.cfg.folder / "runs" / name
        train = trial_config(self.cfg, params, list(self.spec.sets), name)
        saved = run_dir / "config.json"
        total = json.loads(saved.read_text())["plan"]["total_steps"] if saved.is_file() else 0
        summary = summarise_metrics(read_metrics_file(run_dir / "metrics.jsonl", missing_ok=True))
        cost = model_cost(train.model, self.embed_dims.get(train.data, 0) or 1024)
        status = str(trial.status)
        if status == "RUNNING":
            status = self.ended.get(trial.trial_id, status)
        if status == "TERMINATED" and total and summary["steps"] < total:
            status = "STOPPED"  # ended by the scheduler before its last step
        if status == "PAUSED":
            status = "PENDING"
        return TrialRecord(
            trial_id=trial.trial_id,
            status=status,
            params=values,
            model=train.model,
            init=str(params.get("init", train.init)),  # as swept (a template groups the scales' inits)
            num_params=cost.num_params,
            flops_per_sample=cost.flops_per_sample,
            steps=summary["steps"],
            total_steps=total,
            best_top1=summary["best_top1"],
            final_top1=summary["final_top1"],
            best_top5=summary["best_top5"],
            final_top5=summary["final_top5"],
            wall_s=float((trial.last_result or {}).get("time_total_s", 0.0)),
            error=_error_line(trial) if status == "ERROR" else "",
            curve=summary["curve"],
            run_dir=f"runs/{name}",
        )


def _error_line(trial: Any) -> str:
    """The exception line of the trial's error file (the last line of its traceback), a local file on the
    driver whatever the sweep's storage (Tune stages it there)."""
    path = trial.error_file
    text = getattr(trial, "error_text", "") or (Path(path).read_text() if path and os.path.exists(path) else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "failed (no error file)"

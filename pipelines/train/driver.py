"""The driver side of pretraining: plan the run, check a resumed run is the same run, start Ray Train,
print progress, and export the final model.

Layout of ``<storage>/<name>/``: ``config.json`` (the resolved config), ``metrics.jsonl``,
``tensorboard/``, Ray Train's ``checkpoint_*`` folders (each with ``model/`` in our format,
``train_state.json`` and the strategy's state), and after the last step ``final/`` (our format) and,
if asked, ``official/model.pt`` (the release layout). ``storage`` is a local folder or a URI
(``s3://``, ``gs://``, ``pipelines.storage``): the workers' checkpoints go there through Ray Train, the
metrics through Ray Train's reports (``pipelines.train.run_log``), so no folder is shared between nodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import uni3d
from pipelines import faults
from pipelines.build.manifest import Manifest, read_manifest
from pipelines.evaluate.heldout import BuildKeys, make_heldout, read_heldout, read_keys
from pipelines.settings import ConfigError, MissingInput
from pipelines.storage import Location, is_uri, local_copy, local_init, local_output
from pipelines.train.config import RESUME_KEYS, TrainConfig, data_key
from pipelines.train.data import cached_units, file_units, shard_files
from pipelines.train.epochs import Unit
from pipelines.train.run_log import Progress, RunLog, hparam_metrics
from uni3d.hub import is_hub

REPORT_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # TrainConfig.report_poll_s


def worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's function per worker: ``pipelines.train.loop.train_loop``, imported in the worker.

    The training loop imports the model (torch, timm and torchvision, ~2 s of CPU). The driver only plans and
    starts the run, so it does not import it: in a sweep every trial is a driver.
    """
    from pipelines.train.loop import train_loop

    train_loop(config)


@dataclass
class RunPlan:
    """What a run will do, computed from the build before any worker starts."""

    num_train: int  # shapes trained on (held-out uids excluded)
    num_heldout: int  # shapes held out (all of them, labelled or not)
    steps_per_epoch: int
    total_steps: int


@dataclass
class PretrainResult:
    """A run that ended without an error (a failed run raises ``ray.train.TrainingFailedError`` from ``fit``)."""

    run_dir: str  # an absolute local path or a URI
    step: int  # the step the run stopped at
    total_steps: int
    metrics: dict[str, Any]  # the last reported metrics
    final: str | None  # <run>/final once the last step is done

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def _check_build(cfg: TrainConfig, manifest: Manifest) -> None:
    if cfg.embed_dim and cfg.embed_dim != manifest.embed_dim:
        raise ConfigError(
            f"{cfg.data} was built with teacher {manifest.teacher!r} (embed_dim {manifest.embed_dim}); a model with "
            f"embed_dim {cfg.embed_dim} cannot be trained on it: build with that model's teacher or drop embed_dim"
        )


@dataclass
class DataPrep:
    """What a run computes from its build before any worker starts: the shape counts, the labelled held-out
    split (in the object store) and, for a build read once (``cache_data``), its training rows as blocks in the
    object store. A sweep prepares it once for all trials that share it: one copy of the rows for every trial."""

    key: tuple  # data_key(cfg) of the runs it serves
    num_rows: int
    num_held: int
    heldout: Any  # ObjectRef of a HeldOut, or None
    why: str  # what the periodic zero-shot runs on, or why it does not
    heldout_info: dict[str, Any]  # {"sets": [ZeroShotSet.info(), ...]} or {}
    # the training rows read once, their blocks alive as long as this is (None: each worker reads the build's files)
    units: list[Unit] | None = None


def prepare_data(cfg: TrainConfig, manifest: Manifest | None = None) -> DataPrep:
    """Count the build and its held-out rows, check the held-out categories, and sample the held-out sets."""
    manifest = manifest or read_manifest(os.path.join(cfg.data, "manifest.json"))
    source = ray.data.read_parquet(os.path.join(cfg.data, "shards"), num_cpus=cfg.data_cpus)
    keys = read_keys(source, cfg.holdout_fraction, cfg.seed, cfg.holdout_categories)
    unknown = sorted(set(cfg.holdout_categories) - set(keys.class_names))
    if unknown:
        raise ConfigError(
            f"holdout_categories: {unknown} are not categories of {cfg.data}; its categories: "
            f"{', '.join(keys.class_names[:20])}{' …' if len(keys.class_names) > 20 else ''}"
        )
    ref, why, info = _heldout_ref(cfg, manifest, source, keys)
    prep = DataPrep(data_key(cfg), keys.num_rows, keys.held.num_rows, ref, why, info)
    if _read_once(cfg):  # epochs then re-deal blocks from the object store instead of reading the files again
        prep.units = cached_units(cfg)
    return prep


def plan_run(cfg: TrainConfig, prep: DataPrep) -> RunPlan:
    held = prep.num_held
    num_train = prep.num_rows - held
    per_epoch = (num_train // cfg.num_workers) // cfg.batch_size
    if per_epoch < 1:
        raise ConfigError(
            f"{cfg.data} has {num_train} training shapes ({held} held out), fewer than one step of "
            f"batch_size {cfg.batch_size} x num_workers {cfg.num_workers}: lower them or build more shapes"
        )
    return RunPlan(num_train, held, per_epoch, per_epoch * cfg.epochs)


def check_resume(run_dir: str | os.PathLike | Location, cfg: TrainConfig) -> None:
    """A re-run under an existing name must be the same run; say which fields differ."""
    run_dir = Location.of(run_dir)
    saved_file = run_dir / "config.json"
    if not saved_file.is_file():
        return
    saved = json.loads(saved_file.read_text())["train"]
    current = dataclasses.asdict(cfg)
    defaults = {  # fields added since the run began
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    was = {k: saved[k] if k in saved else defaults.get(k) for k in RESUME_KEYS}
    diff = {k: (was[k], current[k]) for k in RESUME_KEYS if was[k] != current[k]}
    if diff:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"run {run_dir} exists with other settings ({lines}); it cannot resume with them. "
            "Use another --name, or the saved settings (see its config.json)"
        )


def finished_run(run_dir: Location, cfg: TrainConfig) -> PretrainResult | None:
    """The result of a run that already took its last step (``final/`` written), or None.

    ``check_resume`` has made sure the run's data, split, workers and batch are the saved ones, so its steps per
    epoch are the saved plan's; only ``epochs`` may have changed, and then the run is not finished."""
    saved, final = run_dir / "config.json", run_dir / "final"
    if not (saved.is_file() and (final / "config.json").is_file()):
        return None
    plan = json.loads(saved.read_text())["plan"]
    total = plan["steps_per_epoch"] * cfg.epochs
    step = json.loads((final / "config.json").read_text()).get("meta", {}).get("step", 0)
    if total != plan["total_steps"] or step < total:
        return None
    return PretrainResult(str(run_dir), step, total, {}, str(final))


def _heldout_ref(
    cfg: TrainConfig, manifest: Manifest, ds: ray.data.Dataset, keys: BuildKeys
) -> tuple[Any, str, dict[str, Any]]:
    """The sampled held-out sets in the object store (or None), what they are (or why none), and their info."""
    if keys.held.num_rows == 0:
        return None, "nothing is held out (holdout_fraction 0, no holdout_categories)", {}
    table = read_heldout(
        ds, cfg.holdout_fraction, cfg.seed, cfg.eval_max_shapes, cfg.holdout_categories, cfg.data_cpus, keys
    )
    spec = cfg.eval_teacher or manifest.teacher
    try:
        teacher = uni3d.shared_teacher(spec)
    except Exception as exc:  # e.g. an open_clip teacher whose weights are not on this machine
        return None, f"text teacher {spec!r} is not available here ({exc}); set eval_teacher", {}
    held = make_heldout(table, keys.class_names, teacher, cfg.holdout_categories)
    if held is None:
        return None, f"the held-out split has {table.num_rows} labelled shapes, too few classes to classify", {}
    return ray.put(held), held.describe(), {"sets": [s.info() for s in held.sets]}


def format_metrics(m: dict[str, Any], total: int) -> str:
    text = (
        f"[pretrain] step {m['step']}/{total} epoch {m['epoch']} loss {m['loss']:.4f} acc_text {m['acc_text']:.1f}% "
        f"acc_image {m['acc_image']:.1f}% lr {m['lr']:.2e} scale {m['logit_scale']:.1f} "
        f"{m['samples_per_s']:.1f} samples/s data wait {100 * m['data_wait_frac']:.0f}%"
    )
    if m.get("nonfinite_total"):
        text += f" non-finite {m['nonfinite_total']}"
    if "zeroshot_top1" in m:
        text += f" | held-out zero-shot top1 {m['zeroshot_top1']:.1f}% top5 {m['zeroshot_top5']:.1f}%"
    if "unseen_top1" in m:
        text += f" | unseen categories top1 {m['unseen_top1']:.1f}% top5 {m['unseen_top5']:.1f}%"
    return text


def run_pretrain(
    cfg: TrainConfig,
    verbose: bool = True,
    callbacks: list[Any] | None = None,
    hparams: dict[str, Any] | None = None,
    prepared: DataPrep | None = None,
) -> PretrainResult:
    """Train on ``cfg.data`` with ``cfg.num_workers`` Ray Train workers (resuming ``cfg.name`` if it exists).

    ``callbacks`` are Ray Train callbacks (a sweep's Tune reporter); ``hparams`` go to the run's TensorBoard
    events for the HParams view; ``prepared`` is ``prepare_data`` done once for several runs."""
    manifest = read_manifest(os.path.join(cfg.data, "manifest.json"))
    _check_build(cfg, manifest)
    cfg = dataclasses.replace(cfg, embed_dim=manifest.embed_dim)
    init = uni3d.parse_init(cfg.init)
    if init.kind != "scratch" and not is_uri(init.path) and not is_hub(init.path):
        init = init.resolve()  # an absolute path: Ray Train workers run in another folder
    cfg = dataclasses.replace(cfg, init=str(init))
    run_dir = Location.of(cfg.storage) / cfg.name
    cfg = dataclasses.replace(cfg, storage=str(run_dir.parent))  # absolute: Ray Train's workers run elsewhere
    check_resume(run_dir, cfg)
    done = finished_run(run_dir, cfg)
    if done is not None:  # the same command again after the last step: nothing to start, nothing to fetch
        return done
    try:  # before any worker starts (a resumed run's workers build the model from it too, then load the checkpoint)
        with local_init(init) as here:  # a URI: a temporary copy (each worker makes its own)
            init_text = uni3d.check_init(here, uni3d.get_preset(cfg.model, embed_dim=cfg.embed_dim))
    except MissingInput as exc:  # e.g. a recipe's 2D weights on the hub, offline: say how to do without them
        raise MissingInput(f"init: {exc}; or --set init=timm:<a local copy>, or init=scratch") from None
    run_dir.mkdir()
    say = print if verbose else (lambda *a, **k: None)
    say(f"[pretrain] init: {init_text}")
    if (warning := text_groups_warning(cfg.data, manifest.schema_version)) is not None:
        print(warning)  # whatever the verbosity: this build trains with another text draw than the recipe's

    if prepared is None or prepared.key != data_key(cfg):
        prepared = prepare_data(cfg, manifest)
    plan = plan_run(cfg, prepared)
    heldout, why = prepared.heldout, prepared.why
    say(f"[pretrain] {plan.num_train} training shapes, {plan.steps_per_epoch} steps/epoch, {plan.total_steps} steps")
    say(f"[pretrain] periodic zero-shot: {why}" if heldout is None else f"[pretrain] periodic zero-shot on {why}")
    config = {"train": dataclasses.asdict(cfg), "plan": dataclasses.asdict(plan), "teacher": manifest.teacher}
    if prepared.heldout_info:
        config["heldout"] = prepared.heldout_info
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    queue = _progress_queue() if verbose else None  # reports, for the progress lines here
    run_log = RunLog(str(run_dir), cfg.tensorboard, hparams, queue, hparam_metrics(bool(cfg.holdout_categories)))

    units = prepared.units if prepared.units is not None else file_units(cfg)
    if sum(u.rows for u in units) != plan.num_train:
        raise RuntimeError(f"{cfg.data}: {sum(u.rows for u in units)} training rows read, {plan.num_train} counted")
    # Ray Train propagates this from the driver to its controller, which collects reports that often
    os.environ[REPORT_POLL_ENV] = str(cfg.report_poll_s)
    read_once = prepared.units is not None
    kind = f"{len({u.ref for u in units})} blocks in the object store" if read_once else "Parquet row groups"
    say(f"[pretrain] {len(units)} units of {kind}, dealt to the workers in a new order each epoch")
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "train": dataclasses.asdict(cfg),
            "teacher": manifest.teacher,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps,
            "heldout": heldout,
            "units": units,  # the object refs in it are owned by this driver, alive until fit returns
            "faults": faults.train_fault(cfg.name),  # tests only ($UNI3D_FAULTS): a rank that exits or holds at a step
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.worker_cpus}
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=[run_log, *(callbacks or [])],
        ),
    )
    progress = Progress(queue, lambda m: format_metrics(m, plan.total_steps)) if queue is not None else None
    if progress is not None:
        progress.start()
    try:
        result = trainer.fit()
    finally:
        if progress is not None:
            progress.stop.set()
            progress.join()
            ray.kill(queue.actor)
    return _finish(cfg, run_dir, plan, result)


def _progress_queue() -> Queue:
    """The queue of reports for the driver's progress lines, on the driver's own node: a queue on another node
    would end the run (Ray Train's controller puts to it) when that node is lost."""
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def _read_once(cfg: TrainConfig) -> bool:
    """``cache_data``: auto = when the build's decoded size is under a quarter of the free object store."""
    if cfg.cache_data != "auto":
        return cfg.cache_data == "true"
    budget = 0.25 * float(ray.available_resources().get("object_store_memory", 0))
    total = 0
    fs, paths = shard_files(cfg.data)
    for path in paths:
        meta = pq.read_metadata(path, filesystem=fs)
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))  # uncompressed
        if total > budget:
            return False
    return total > 0


def _finish(cfg: TrainConfig, run_dir: Location, plan: RunPlan, result: ray.train.Result) -> PretrainResult:
    """Copy the last checkpoint's model to ``final/`` (only the model: the strategy's state stays where it is)."""
    step, final = 0, None
    if result.checkpoint is not None:
        saved = Location(result.checkpoint.path, result.checkpoint.filesystem, result.checkpoint.path)
        step = json.loads((saved / "train_state.json").read_text())["step"]
        if step >= plan.total_steps:
            final = run_dir / "final"
            (saved / "model").copy_to(final)
    if final is not None and cfg.export_official:
        with local_copy(final) as folder, local_output(run_dir / "official") as out:
            uni3d.export_official(uni3d.load_checkpoint(folder), out / "model.pt")
    done = str(final) if final is not None else None
    return PretrainResult(str(run_dir), step, plan.total_steps, dict(result.metrics or {}), done)


def text_groups_warning(data: str, schema_version: int) -> str | None:
    """The one line a pretraining run prints for a build older than text groups (schema version 2); else None."""
    if schema_version >= 2:
        return None
    return (
        f"[pretrain] warning: {data} is a schema version {schema_version} build without text groups: each text "
        "counts as its own group (docs/dataset.md); rebuild for the recipe's draw"
    )

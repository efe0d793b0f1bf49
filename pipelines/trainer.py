"""The driver side of pretraining: plan the run, check a resumed run is the same run, start Ray Train,
print progress, and export the final model.

Layout of ``<storage>/<name>/``: ``config.json`` (the resolved config), ``metrics.jsonl``,
``tensorboard/``, Ray Train's ``checkpoint_*`` folders (each with ``model/`` in our format,
``train_state.json`` and the strategy's state), and after the last step ``final/`` (our format) and,
if asked, ``official/model.pt`` (the release layout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import uni3d
from pipelines.heldout import make_heldout, read_heldout
from pipelines.schema import Manifest, read_manifest
from pipelines.splits import drop_holdout, keep_holdout
from pipelines.training import RESUME_KEYS, TrainConfig, train_loop


@dataclass
class RunPlan:
    """What a run will do, computed from the build before any worker starts."""

    num_train: int  # shapes trained on (held-out uids excluded)
    num_heldout: int  # shapes held out (all of them, labelled or not)
    steps_per_epoch: int
    total_steps: int


@dataclass
class PretrainResult:
    run_dir: Path
    step: int  # the step the run stopped at
    total_steps: int
    metrics: dict[str, Any]  # the last reported metrics
    final: Path | None  # <run>/final once the last step is done
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.error is None and self.step >= self.total_steps


def _check_build(cfg: TrainConfig, manifest: Manifest) -> None:
    if cfg.embed_dim and cfg.embed_dim != manifest.embed_dim:
        raise ValueError(
            f"{cfg.data} was built with teacher {manifest.teacher!r} (embed_dim {manifest.embed_dim}); a model with "
            f"embed_dim {cfg.embed_dim} cannot be trained on it: build with that model's teacher or drop embed_dim"
        )


@dataclass
class DataPrep:
    """What a run computes from its build before any worker starts: the shape counts and the labelled
    held-out split (in the object store). A sweep prepares it once for all trials that share it."""

    key: tuple  # data_key(cfg) of the runs it serves
    num_rows: int
    num_held: int
    heldout: Any  # ObjectRef of a HeldOut, or None
    why: str  # what the periodic zero-shot runs on, or why it does not
    heldout_info: dict[str, Any]  # {"shapes": n, "classes": [...]} or {}


def data_key(cfg: TrainConfig) -> tuple:
    return (cfg.data, cfg.holdout_fraction, cfg.seed, cfg.eval_max_shapes, cfg.eval_teacher)


def prepare_data(cfg: TrainConfig, manifest: Manifest | None = None) -> DataPrep:
    manifest = manifest or read_manifest(os.path.join(cfg.data, "manifest.json"))
    source = ray.data.read_parquet(os.path.join(cfg.data, "shards"), num_cpus=cfg.data_cpus)
    uids = source.select_columns(["uid"])
    num_rows, held = uids.count(), 0
    if cfg.holdout_fraction > 0:
        fn_kwargs = {"fraction": cfg.holdout_fraction, "seed": cfg.seed}
        held = uids.map_batches(keep_holdout, batch_format="pyarrow", fn_kwargs=fn_kwargs, num_cpus=cfg.data_cpus)
        held = held.count()
    ref, why, info = _heldout_ref(cfg, manifest, source)
    return DataPrep(data_key(cfg), num_rows, held, ref, why, info)


def plan_run(cfg: TrainConfig, prep: DataPrep) -> RunPlan:
    held = prep.num_held
    num_train = prep.num_rows - held
    per_epoch = (num_train // cfg.num_workers) // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(
            f"{cfg.data} has {num_train} training shapes ({held} held out), fewer than one step of "
            f"batch_size {cfg.batch_size} x num_workers {cfg.num_workers}: lower them or build more shapes"
        )
    return RunPlan(num_train, held, per_epoch, per_epoch * cfg.epochs)


def check_resume(run_dir: Path, cfg: TrainConfig) -> None:
    """A re-run under an existing name must be the same run; say which fields differ."""
    saved_file = run_dir / "config.json"
    if not saved_file.exists():
        return
    saved = json.loads(saved_file.read_text())["train"]
    current = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # fields added since the run began
    diff = {k: (saved.get(k, defaults[k]), current[k]) for k in RESUME_KEYS if saved.get(k, defaults[k]) != current[k]}
    if diff:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"run {run_dir} exists with other settings ({lines}); it cannot resume with them. "
            "Use another --name, or the saved settings (see its config.json)"
        )


def _heldout_ref(cfg: TrainConfig, manifest: Manifest, ds: ray.data.Dataset) -> tuple[Any, str, dict[str, Any]]:
    """The labelled held-out split in the object store (or None), why, and its shapes and class names."""
    if cfg.holdout_fraction == 0:
        return None, "holdout_fraction is 0", {}
    table = read_heldout(ds, cfg.holdout_fraction, cfg.seed, cfg.eval_max_shapes, num_cpus=cfg.data_cpus)
    spec = cfg.eval_teacher or manifest.teacher
    try:
        teacher = uni3d.build_teacher(spec)
    except Exception as exc:  # e.g. an open_clip teacher whose weights are not on this machine
        return None, f"text teacher {spec!r} is not available here ({exc}); set eval_teacher", {}
    held = make_heldout(table, teacher)
    if held is None:
        return None, f"the held-out split has {table.num_rows} labelled shapes in fewer than two categories", {}
    why = f"{len(held)} held-out shapes in {len(held.class_names)} categories"
    return ray.put(held), why, {"shapes": len(held), "classes": held.class_names}


class _Tail(threading.Thread):
    """Prints each line rank 0 appends to metrics.jsonl while the run goes."""

    def __init__(self, path: Path, total: int) -> None:
        super().__init__(daemon=True)
        self.path, self.total = path, total
        self.offset = path.stat().st_size if path.exists() else 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.drain()
        self.drain()

    def drain(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            text = f.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]
        for line in lines:
            self.offset += len(line.encode())
            print(format_metrics(json.loads(line), self.total), flush=True)


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
    init = uni3d.parse_init(cfg.init).resolve()  # an absolute path: Ray Train workers run in another folder
    cfg = dataclasses.replace(cfg, init=str(init))
    init_text = uni3d.check_init(init, uni3d.get_preset(cfg.model, embed_dim=cfg.embed_dim))  # before any worker
    run_dir = Path(cfg.storage).resolve() / cfg.name
    check_resume(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    say(f"[pretrain] init: {init_text}")

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

    source = ray.data.read_parquet(os.path.join(cfg.data, "shards"), num_cpus=cfg.data_cpus)
    train = source.randomize_block_order(seed=cfg.seed)
    if cfg.holdout_fraction > 0:
        fn_kwargs = {"fraction": cfg.holdout_fraction, "seed": cfg.seed}
        train = train.map_batches(drop_holdout, batch_format="pyarrow", fn_kwargs=fn_kwargs, num_cpus=cfg.data_cpus)
    if _read_once(cfg):  # epochs then re-deal blocks from the object store instead of reading the files again
        train.context.execution_options.preserve_order = True  # blocks in the seeded order, whatever ends first
        train = train.materialize()
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # the same rows reach the same worker in the same order: exact resume
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "train": dataclasses.asdict(cfg),
            "teacher": manifest.teacher,
            "steps_per_epoch": plan.steps_per_epoch,
            "total_steps": plan.total_steps,
            "run_dir": str(run_dir),
            "heldout": heldout,
            "hparams": hparams or {},
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.worker_cpus}
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=callbacks or [],
        ),
        datasets={"train": train},
        dataset_config=DataConfig(execution_options=ingest),
    )
    tail = _Tail(run_dir / "metrics.jsonl", plan.total_steps)
    if verbose:
        tail.start()
    try:
        result = trainer.fit()
    finally:
        tail.stop.set()
        if verbose:
            tail.join()
    return _finish(cfg, run_dir, plan, result)


def _read_once(cfg: TrainConfig) -> bool:
    """``cache_data``: auto = when the build's decoded size is under a quarter of the free object store."""
    if cfg.cache_data != "auto":
        return cfg.cache_data == "true"
    budget = 0.25 * float(ray.available_resources().get("object_store_memory", 0))
    total = 0
    for path in sorted(Path(cfg.data, "shards").glob("*.parquet")):  # local builds; URIs are read as they stream
        meta = pq.read_metadata(path)
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))  # uncompressed
        if total > budget:
            return False
    return total > 0


def _finish(cfg: TrainConfig, run_dir: Path, plan: RunPlan, result: ray.train.Result) -> PretrainResult:
    step, final = 0, None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            step = json.loads((Path(folder) / "train_state.json").read_text())["step"]
            if step >= plan.total_steps:
                final = run_dir / "final"
                shutil.copytree(Path(folder) / "model", final, dirs_exist_ok=True)
    if final is not None and cfg.export_official:
        uni3d.export_official(uni3d.load_checkpoint(final), run_dir / "official" / "model.pt")
    return PretrainResult(run_dir, step, plan.total_steps, dict(result.metrics or {}), final, result.error)

"""What a pretraining run is: ``TrainConfig``, its recipes and its resolution from a job's flags.

Light on purpose (no torch, no Ray): the jobs build their ``--help`` and resolve their settings from it before
anything heavy is imported; ``pipelines.train.loop`` runs what it describes (docs/method.md §5–6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.settings import Layer, cli_layers, resolve
from pipelines.train.recipes import get_recipe

# Fields that fix what a run computes: a re-run under the same name must keep them to resume.
RESUME_KEYS = (
    "data",
    "model",
    "init",
    "patch_dropout",
    "drop_path_rate",
    "strategy",
    "zero_stage",
    "num_workers",
    "batch_size",
    "seed",
    "holdout_fraction",
    "holdout_categories",
)


@dataclass
class TrainConfig:
    data: str  # a build's output folder (jobs/build_dataset.py)
    storage: str = "runs"  # Ray Train storage path: checkpoints, metrics, TensorBoard
    name: str = "uni3d"  # the run's name; re-running the same name and storage resumes it
    recipe: str = "cpu"  # pipelines.train.recipes; fields set here or by --set override it
    model: str = "micro"  # uni3d preset
    init: str = "scratch"  # scratch | timm:<file> | timm:<arch>@<file> | run:<checkpoint> (uni3d.init)
    grad_checkpointing: bool = False
    patch_dropout: float = -1.0  # FLIP patch dropout of the point tokens; < 0: the preset's (0.5)
    drop_path_rate: float = -1.0  # stochastic depth over the ViT blocks; < 0: the preset's
    strategy: str = "deepspeed"  # deepspeed | ddp
    zero_stage: int = 1
    precision: str = "fp32"  # fp32 | bf16
    num_workers: int = 2
    worker_cpus: float = 0.5  # per training worker; leave CPUs for Ray Data's read tasks
    data_cpus: float = 1.0  # per Ray Data read/filter task of this run (lower it to pack sweeps' trials)
    use_gpu: bool = False
    batch_size: int = 16  # per worker
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.1
    layer_decay: float = 0.95
    warmup_steps: int = 10
    grad_clip: float = 5.0
    augment: bool = True
    shuffle_buffer: int = 256  # rows a worker shuffles together, on top of the new global order of each epoch
    cache_data: str = "auto"  # auto | true | false: read the build once into the object store (auto: if small)
    seed: int = 4096
    log_every: int = 10
    # seconds between the Train controller's collections of the workers' reports (Ray's own default is 2 s,
    # and a worker's next report waits for the last one to be collected: a report every step took 2 s a step)
    report_poll_s: float = 0.25
    checkpoint_every: int = 100  # steps; the last step always checkpoints
    keep_checkpoints: int = 2
    until_step: int = 0  # stop this invocation (with a checkpoint) at this step; 0 = run to the end
    max_failures: int = 1  # worker-group restarts from the last checkpoint
    max_nonfinite: int = 20  # consecutive non-finite losses before the run stops
    holdout_fraction: float = 0.05  # of uids (pipelines.build.splits), never trained on
    # whole categories never trained on (e.g. [chair, lamp]): the "unseen categories" zero-shot (unseen_top1)
    holdout_categories: list[str] = field(default_factory=list)
    eval_every: int = 100  # steps; 0 = only at the end; zero-shot on the labelled held-out split
    eval_max_shapes: int = 1024
    eval_batch_size: int = 64
    eval_teacher: str = ""  # text teacher for class names; default: the build's teacher
    tensorboard: bool = True
    export_official: bool = False  # also write <run>/official/model.pt in the release layout
    embed_dim: int = 0  # 0 = the build's teacher dimension

    def __post_init__(self) -> None:
        checks = {
            "strategy": self.strategy in ("deepspeed", "ddp"),
            "zero_stage": self.zero_stage in (1, 2, 3),
            "precision": self.precision in ("fp32", "bf16"),
            "num_workers": self.num_workers >= 1,
            "batch_size": self.batch_size >= 2,
            "epochs": self.epochs >= 1,
            "holdout_fraction": 0.0 <= self.holdout_fraction < 1.0,
            "log_every": self.log_every >= 1,
            "report_poll_s": 0 < self.report_poll_s <= 60,
            "checkpoint_every": self.checkpoint_every >= 1,
            "max_nonfinite": self.max_nonfinite >= 1,
            "until_step": self.until_step >= 0,
            "patch_dropout": self.patch_dropout < 1.0,
            "drop_path_rate": self.drop_path_rate < 1.0,
            "data_cpus": self.data_cpus > 0,
            "cache_data": self.cache_data in ("auto", "true", "false"),
            "lr": self.lr > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TrainConfig: invalid {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        from uni3d.init import parse_init  # here, not at the top: a job's --help reads the fields without torch

        parse_init(self.init)  # the form only; run_pretrain checks the file before workers start


def make_config(data: str, recipe: str = "cpu", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A recipe's config for ``data`` with field overrides on top, validated against the field types."""
    fields = {"data": data, "recipe": recipe, **(overrides or {})}
    return resolve(TrainConfig, [Layer(f"recipe {recipe}", get_recipe(recipe)), Layer("make_config", fields)])


def resolve_train_config(args: Any, flags: dict[str, Any]) -> TrainConfig:
    """A job's TrainConfig: the recipe (``--recipe``, else the ``--config`` file's ``recipe:``, else cpu), then
    the file, the job's flags and ``--set`` (``pipelines.settings``); ``data`` must be given somewhere."""
    layers = cli_layers(args, flags)
    named = [layer.values["recipe"] for layer in layers if isinstance(layer.values.get("recipe"), str)]
    recipe = str(named[-1]) if named else "cpu"
    layers.insert(0, Layer(f"recipe {recipe}", {**get_recipe(recipe), "recipe": recipe}))
    return resolve(TrainConfig, layers, {"data": "give --data BUILD (or data: in --config)"})


def model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The preset's fields this run changes (patch dropout, drop path), for ``uni3d.create_model``."""
    out: dict[str, Any] = {}
    if cfg.patch_dropout >= 0:
        out["patch_dropout"] = cfg.patch_dropout
    if cfg.drop_path_rate >= 0:
        out["drop_path_rate"] = cfg.drop_path_rate
    return out


def data_key(cfg: TrainConfig) -> tuple:
    """What a run's prepared data depend on: runs (a sweep's trials) with the same key share one preparation."""
    categories = tuple(sorted(cfg.holdout_categories))
    return (cfg.data, cfg.holdout_fraction, categories, cfg.seed, cfg.eval_max_shapes, cfg.eval_teacher, cfg.cache_data)

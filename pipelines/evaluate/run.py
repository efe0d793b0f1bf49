"""Zero-shot and few-shot evaluation of a checkpoint on Ray Data (docs/method.md §8).

Test shapes are embedded by ``num_workers`` Ray Data actors, each holding the model; the driver gathers
the ``(N, E)`` embeddings with their labels, so every metric is computed once over all samples (never an
average of per-batch numbers). Class names are embedded by the teacher in the checkpoint's embedding space
through the 64 templates. Results: JSON, a Markdown table and a confusion-matrix picture next to the
checkpoint (``<checkpoint>/eval/<set>.*``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

import uni3d
from pipelines.build.codec import decode_points_batch
from pipelines.build.manifest import read_manifest
from pipelines.build.plan import BlockPlan, bytes_per_shape, plan_blocks
from pipelines.build.run import object_store_budget
from pipelines.build.splits import SEEN_PART, UNSEEN_PART, keep_holdout, label_rows
from pipelines.build.stages import worker_identity
from pipelines.evaluate.config import EvalConfig
from pipelines.evaluate.sets import EvalSet, EvalSetError, load_lvis_points, read_benchmark
from pipelines.settings import ConfigError, MissingInput
from pipelines.storage import Location, hub_local, local_copy, local_output
from uni3d.fewshot import confusion_matrix, few_shot
from uni3d.hub import is_hub
from uni3d.zeroshot import per_class_accuracy, topk_accuracy, zero_shot_logits


class PointEmbedder:
    """A Ray Data actor: rows (``points`` bytes, ``path`` of an OpenShape file, or build ``xyz``/``rgb``) ->
    ``uid``, ``label``, ``embedding``."""

    def __init__(self, checkpoint: str, device: str = "auto") -> None:
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
        with local_copy(checkpoint) as path:  # a URI is copied to this node for the load
            self.model = uni3d.load_checkpoint(path).to(self.device).eval()
        self.worker = worker_identity()[0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        points = torch.from_numpy(_points(batch)).to(self.device)
        with torch.no_grad():
            emb = self.model.encode_pc(points).float().cpu().numpy()
        return pa.table(
            {
                "uid": batch.column("uid"),
                "label": batch.column("label"),
                "embedding": pa.array(list(emb), pa.list_(pa.float32(), emb.shape[1])),
                "worker": pa.array([self.worker] * len(emb), pa.string()),
            }
        )


def _points(batch: pa.Table) -> np.ndarray:
    if "points" in batch.column_names:
        return np.stack([np.frombuffer(b, np.float32).reshape(-1, 6) for b in batch.column("points").to_pylist()])
    if "path" in batch.column_names:
        return np.stack([load_lvis_points(p) for p in batch.column("path").to_pylist()])
    return decode_points_batch(batch)


def build_eval_set(path: str, cfg: EvalConfig) -> tuple[EvalSet, ray.data.Dataset, BlockPlan]:
    """A build folder's labelled rows (its held-out split, or all) as an eval set, its Ray Dataset in the
    planned blocks, and the plan."""
    manifest = read_manifest(os.path.join(path, "manifest.json"))  # a clear error if this is not a build
    if manifest.num_shapes == 0:  # every shape failed, or none was listed: no shard to read
        failed = ", ".join(f"{stage} {n}" for stage, n in sorted(manifest.failures.items())) or "none"
        raise EvalSetError(f"{path}: the build holds no shapes (failures by stage: {failed}); nothing to evaluate")
    ds = ray.data.read_parquet(os.path.join(path, "shards")).select_columns(
        ["uid", "category", "num_points", "xyz", "rgb"]
    )
    # one pass over the uid/category columns: the classifier covers every category of the build, as the held-out
    # zero-shot during training does (a category without a held-out shape is still a wrong answer the model may
    # give), and the split's labelled rows are taken from the same keys
    keys = pa.concat_tables(ray.get(ds.select_columns(["uid", "category"]).to_arrow_refs()))
    build_names = sorted(c for c in pc.unique(keys.column("category")).to_pylist() if c is not None)
    unseen: list[str] = []
    if cfg.split == "heldout":
        kwargs = holdout_params(cfg)
        unseen = kwargs["categories"]
        ds = ds.map_batches(keep_holdout, batch_format="pyarrow", fn_kwargs=kwargs)
        keys = keep_holdout(keys, **kwargs)
    elif cfg.split != "all":
        raise ConfigError(f"split must be heldout or all, got {cfg.split!r}")
    labelled = keys.filter(pc.is_valid(keys.column("category")))
    class_names = build_names
    if labelled.num_rows == 0 or len(class_names) < 2:
        raise EvalSetError(
            f"{path}: the {cfg.split} split has {labelled.num_rows} labelled shapes in "
            f"{len(class_names)} categories; zero-shot needs at least two"
        )
    items = label_rows(labelled, class_names)
    es = EvalSet(Location.of(path).name, class_names, items, unseen=[c for c in unseen if c in class_names])
    ds = ds.map_batches(label_rows, batch_format="pyarrow", fn_kwargs={"class_names": class_names})
    plan = plan_set(len(es), cfg, bytes_per_shape(manifest.num_points, 0, 0))
    # one block per shard file as read (a held-out split leaves a few rows of each): cut into the planned blocks
    # as they stream, as the build cuts its listing, so that every embedding actor gets its share
    return es, ds.repartition(target_num_rows_per_block=plan.rows_per_block, strict=True), plan


def plan_set(total: int, cfg: EvalConfig, per_shape: int) -> BlockPlan:
    """Rows per block of an evaluation set, as the build plans its shape workers' blocks: a divisor of
    ``batch_size`` that gives every embedding actor ``TASKS_PER_WORKER`` blocks (pipelines.build.plan)."""
    return plan_blocks(
        total,
        rows_per_shard=cfg.batch_size,
        shape_workers=cfg.num_workers,
        embed_workers=cfg.num_workers,
        embed_batch=cfg.batch_size,
        per_shape=per_shape,
        budget_bytes=object_store_budget(0),
    )


def benchmark_dataset(es: EvalSet, cfg: EvalConfig) -> tuple[ray.data.Dataset, BlockPlan]:
    """A benchmark set's rows (points, or paths of point files) in the planned blocks, one block per table slice,
    and the plan."""
    plan = plan_set(len(es), cfg, max(1, es.items.nbytes // max(1, len(es))))
    rows = plan.rows_per_block
    return ray.data.from_arrow([es.items.slice(i, rows) for i in range(0, len(es), rows)]), plan


def holdout_params(cfg: EvalConfig) -> dict[str, Any]:
    """The held-out split the checkpoint was pretrained with (recorded in its meta), unless set: its hashed
    fraction of uids and every shape of its ``holdout_categories``."""
    train: dict[str, Any] = {}
    if Path(cfg.checkpoint).is_dir():
        train = uni3d.read_checkpoint_config(cfg.checkpoint).get("meta", {}).get("train") or {}
    fraction = cfg.holdout_fraction if cfg.holdout_fraction >= 0 else float(train.get("holdout_fraction", 0.05))
    seed = cfg.holdout_seed if cfg.holdout_seed >= 0 else int(train.get("seed", 4096))
    categories = list(train.get("holdout_categories") or [])  # never trained on: part of the held-out split
    if fraction <= 0 and not categories:
        raise ConfigError(f"{cfg.checkpoint} was trained without a held-out split; evaluate with --set split=all")
    return {"fraction": fraction, "seed": seed, "categories": categories}


@dataclass
class Embedded:
    embeddings: np.ndarray  # (N, E) float32
    labels: np.ndarray
    uids: list[str]
    rows_by_worker: dict[str, int]  # embedding actor -> shapes it embedded
    ray_data: str  # Dataset.stats()


def embed(ds: ray.data.Dataset, cfg: EvalConfig, checkpoint: str, rows_per_block: int) -> Embedded:
    out = ds.map_batches(
        PointEmbedder,
        fn_constructor_kwargs={"checkpoint": checkpoint},
        batch_size=rows_per_block,  # one task per planned block: every actor gets blocks
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_workers),
        num_cpus=cfg.worker_cpus,
        num_gpus=1 if cfg.use_gpu else 0,
    )
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables(tables)
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    workers = dict(Counter(table.column("worker").to_pylist()))
    return Embedded(emb, table.column("label").to_numpy(), table.column("uid").to_pylist(), workers, out.stats())


@dataclass
class SetResult:
    name: str
    num_samples: int
    num_classes: int
    chance_top1: float
    top1: float
    top3: float
    top5: float
    mean_class_acc: float
    per_class: dict[str, float]
    few_shot: list[dict[str, Any]] = field(default_factory=list)
    # builds pretrained with holdout_categories: the same scores over the shapes of trained categories
    # (held out by uid) and over those of the unseen categories, every shape classified over all the names
    parts: dict[str, dict[str, float]] = field(default_factory=dict)


def part_scores(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    acc = topk_accuracy(logits[mask], labels[mask], (1, 3, 5)) if mask.any() else {1: 0.0, 3: 0.0, 5: 0.0}
    return {"samples": int(mask.sum()), "top1": acc[1], "top3": acc[3], "top5": acc[5]}


def score(es: EvalSet, emb: np.ndarray, labels: np.ndarray, classifier: torch.Tensor, cfg: EvalConfig):
    logits = zero_shot_logits(torch.from_numpy(emb), classifier)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    acc = topk_accuracy(logits, labels_t, (1, 3, 5))
    preds = logits.argmax(1)
    per_class = per_class_accuracy(preds, labels_t, len(es.class_names))
    present = ~torch.isnan(per_class)
    result = SetResult(
        name=es.name,
        num_samples=len(labels),
        num_classes=len(es.class_names),
        chance_top1=100.0 / len(es.class_names),
        top1=acc[1],
        top3=acc[3],
        top5=acc[5],
        mean_class_acc=float(per_class[present].mean()),
        per_class={n: float(a) for n, a, p in zip(es.class_names, per_class, present, strict=True) if p},
    )
    if es.unseen:
        unseen = torch.tensor([name in es.unseen for name in es.class_names])[labels_t]
        result.parts = {
            SEEN_PART: part_scores(logits, labels_t, ~unseen),
            UNSEEN_PART: part_scores(logits, labels_t, unseen),
        }
    if cfg.few_shot:
        result.few_shot = [asdict(r) for r in few_shot(emb, labels, cfg.shots, cfg.seeds)]
    return result, confusion_matrix(preds.numpy(), labels, len(es.class_names))


def write_reports(out: Path, result: SetResult, confusion: np.ndarray, class_names: list[str], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result.name}.json").write_text(json.dumps({**asdict(result), "meta": meta}, indent=2))
    lines = [
        f"# Zero-shot: {result.name}",
        "",
        f"checkpoint `{meta['checkpoint']}`, teacher `{meta['teacher']}`, 64 templates",
        "",
        "| samples | classes | top-1 | top-3 | top-5 | mean class acc. | chance top-1 |",
        "|---|---|---|---|---|---|---|",
        f"| {result.num_samples} | {result.num_classes} | {result.top1:.1f} | {result.top3:.1f} | {result.top5:.1f} "
        f"| {result.mean_class_acc:.1f} | {result.chance_top1:.1f} |",
    ]
    if result.parts:
        lines += [
            "",
            f"Split by what the checkpoint trained on (every shape classified over all {result.num_classes} names; "
            f"chance top-1 {result.chance_top1:.1f}%):",
            "",
            "| shapes | samples | top-1 | top-3 | top-5 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {p['samples']} | {p['top1']:.1f} | {p['top3']:.1f} | {p['top5']:.1f} |"
            for name, p in result.parts.items()
        ]
    if result.few_shot:
        lines += ["", *few_shot_lines(result.few_shot)]
    lines += ["", "| class | accuracy |", "|---|---|"]
    lines += [f"| {name} | {acc:.1f} |" for name, acc in result.per_class.items()]
    (out / f"{result.name}.md").write_text("\n".join(lines) + "\n")
    plot_confusion(out / f"{result.name}_confusion.png", confusion, class_names, result.name)


def few_shot_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The report's few-shot table, with the protocol and how ours differs from OpenShape's (``uni3d.fewshot``)."""
    seeds = len(rows[0]["runs"])
    lines = [
        "Few-shot linear probe, OpenShape's protocol (arXiv 2305.10764, §4.2): per class, k shapes drawn from this "
        "set train an L2 logistic regression (scikit-learn's C=1 objective, L-BFGS) on the frozen embeddings; the "
        f"set's other shapes of those classes are the test; mean ± std over {seeds} seeds. Classes with fewer than "
        "k shapes are left out (column 'left out'; OpenShape does not say how it treats them); the draws are ours.",
        "",
        "| shots | linear probe acc. (mean ± std over seeds) | classes | left out | test shapes |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shots']} | {r['mean']:.1f} ± {r['std']:.1f} | {r['classes']} | {r['skipped_classes']} "
            f"| {r['test_samples']} |"
        )
    return lines


def plot_confusion(path: Path, confusion: np.ndarray, class_names: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.25 * n, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_embeddings(teacher: Any, es: EvalSet, model_dim: int, teacher_name: str) -> torch.Tensor:
    classifier = uni3d.build_zero_shot_classifier(teacher, es.prompts)
    if classifier.shape[1] != model_dim:
        raise ConfigError(
            f"teacher {teacher_name!r} embeds class names in {classifier.shape[1]} dimensions but the checkpoint's "
            f"embeddings have {model_dim}: evaluate with the teacher the model was trained against"
        )
    return classifier


def resolve_teacher(cfg: EvalConfig) -> str:
    if cfg.teacher:
        return cfg.teacher
    path = Path(cfg.checkpoint)
    if path.is_dir():
        teacher = uni3d.read_checkpoint_config(path).get("meta", {}).get("teacher")
        if teacher:
            return str(teacher)
    raise ConfigError(
        f"{cfg.checkpoint} does not record its teacher: pass --teacher (official Uni3D files: "
        "openclip:EVA02-E-14-plus@/path/to/open_clip_pytorch_model.bin, only its text tower is loaded)"
    )


def run_evaluation(cfg: EvalConfig, log: Any = print) -> list[SetResult]:
    """Evaluate ``cfg.checkpoint`` (a local path or a URI) on each of ``cfg.sets``; reports go to ``cfg.out``
    (a local folder or a URI), by default ``<checkpoint>/eval``."""
    out = report_location(cfg)  # refuses a missing checkpoint
    where = cfg.checkpoint if is_hub(cfg.checkpoint) else str(Location.of(cfg.checkpoint))  # as the actors find it
    with local_copy(where) as local:  # the driver's reads (config, teacher, split); the actors load their own
        return _evaluate_sets(dataclasses.replace(cfg, checkpoint=str(local)), where, out, log)


def report_location(cfg: EvalConfig) -> Location:
    """Where the reports go: ``cfg.out``, else ``<checkpoint>/eval`` (next to a checkpoint file) when that folder
    can be written. Released checkpoints often sit on read-only volumes: then ``--out`` is asked for, as it is
    for a checkpoint on the Hugging Face Hub (fetched into the hub's cache here, or refused saying why)."""
    if is_hub(cfg.checkpoint):
        hub_local(cfg.checkpoint)
        if not cfg.out:
            raise ConfigError(f"{cfg.checkpoint} is on the Hugging Face Hub: give --out DIR for the reports")
        return Location.of(cfg.out)
    where = Location.of(cfg.checkpoint)
    if not where.exists():
        raise MissingInput(f"checkpoint {cfg.checkpoint} does not exist")
    if cfg.out:
        return Location.of(cfg.out)
    folder = where if where.is_dir() else where.parent
    if folder.local and not _writable(folder.path):
        raise ConfigError(f"the checkpoint's folder {folder.path} is not writable: give --out DIR for the reports")
    return folder / "eval"


def _writable(path: str) -> bool:
    """Whether a report folder can be made inside ``path``, or under it when ``path/eval`` exists."""
    target = os.path.join(path, "eval")
    return os.access(target if os.path.isdir(target) else path, os.W_OK | os.X_OK)


def _evaluate_sets(cfg: EvalConfig, checkpoint: str, out: Location, log: Any) -> list[SetResult]:
    model = uni3d.load_checkpoint(cfg.checkpoint)  # fails early, naming the file, if it is not a checkpoint
    teacher_name = resolve_teacher(cfg)
    spec = uni3d.parse_teacher(teacher_name, **({"text_only": True} if teacher_name.startswith("openclip:") else {}))
    teacher = uni3d.shared_teacher(spec)
    results = []
    for name in cfg.sets:
        if (Location.of(name) / "manifest.json").is_file():
            es, ds, plan = build_eval_set(name, cfg)
        else:
            es = read_benchmark(name, cfg.root)
            ds, plan = benchmark_dataset(es, cfg)
        classifier = class_embeddings(teacher, es, model.embed_dim, teacher_name)
        embedded = embed(ds, cfg, checkpoint, plan.rows_per_block)
        result, confusion = score(es, embedded.embeddings, embedded.labels, classifier, cfg)
        meta = {"checkpoint": checkpoint, "teacher": teacher_name}
        meta |= {"plan": plan.to_dict(), "rows_by_worker": embedded.rows_by_worker}
        with local_output(out) as folder:  # each set's reports land as soon as it is scored
            write_reports(folder, result, confusion, es.class_names, meta)
            (folder / f"{result.name}-ray-data.txt").write_text(embedded.ray_data)
        log(
            f"[evaluate] {es.name}: top-1 {result.top1:.1f}% top-3 {result.top3:.1f}% top-5 {result.top5:.1f}% "
            f"over {result.num_samples} shapes, {result.num_classes} classes "
            f"(chance {result.chance_top1:.1f}%) -> {out}"
        )
        for part, p in result.parts.items():
            log(f"[evaluate]   {part}: top-1 {p['top1']:.1f}% top-5 {p['top5']:.1f}% over {p['samples']} shapes")
        results.append(result)
    return results

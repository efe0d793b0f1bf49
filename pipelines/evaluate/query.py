"""Queries against a model or a gallery, in one process: "what is this mesh?", text/image/mesh -> 3D
retrieval, recall@k over a labelled gallery, and contact sheets of the results.

Query meshes are read and sampled like build shapes (any format the loader reads, normalised, Y up);
text and images are embedded by the teacher the model was trained against, so a checkpoint and a teacher
of different embedding sizes are refused with both sizes named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import uni3d
from pipelines.build.codec import decode_points_batch
from pipelines.evaluate.sets import MODELNET40_LABELS, SCANOBJECTNN_CLASSES
from pipelines.meshes.load import load_mesh
from pipelines.meshes.mesh import MeshError
from pipelines.meshes.sampling import sample_points
from pipelines.settings import ConfigError, MissingInput
from uni3d.retrieval import recall_at_k, search

# Benchmark class lists as the official Uni3D evaluation prompts them (its data/labels.json; see
# pipelines.evaluate.sets).
CLASS_LISTS = {"modelnet40": MODELNET40_LABELS, "scanobjectnn": SCANOBJECTNN_CLASSES}


def mesh_points(paths: Sequence[str | Path], num_points: int, up_axis: str = "y") -> np.ndarray:
    """A user's query mesh files -> ``(B, N, 6)`` float32 clouds; a file that cannot be read raises ``ConfigError``
    with the loader's message, which names the file (a job's one ``error:`` line)."""
    try:
        return np.stack([sample_points(load_mesh(p, up_axis=up_axis), num_points, seed=0).points for p in paths])
    except MeshError as err:
        raise ConfigError(str(err)) from err


def embed_points(model: uni3d.Uni3D, points: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval().encode_pc(torch.from_numpy(points)).float().numpy()


def parse_labels(labels: str = "", labels_file: str = "", classes: str = "") -> list[str]:
    """Candidate labels from a comma list, a file (one per line) or a benchmark's class names.

    Labels are prompted exactly as given: a file of Objaverse-LVIS names keeps their underscores ("Band_Aid"),
    as the official evaluation prompts them; ``classes`` gives a benchmark's names in the official spelling.
    """
    out: list[str] = []
    if labels:
        out += [x.strip() for x in labels.split(",") if x.strip()]
    if labels_file:
        if not Path(labels_file).is_file():
            raise MissingInput(f"labels file {labels_file} does not exist")
        out += [x.strip() for x in Path(labels_file).read_text().splitlines() if x.strip()]
    if classes:
        if classes not in CLASS_LISTS:
            raise ConfigError(f"unknown class list {classes!r}; lists: {sorted(CLASS_LISTS)} (or pass --labels-file)")
        out += CLASS_LISTS[classes]
    if not out:
        raise ConfigError("the label list is empty: pass --labels a,b,c, --labels-file or --classes modelnet40")
    return list(dict.fromkeys(out))


def check_dims(teacher: Any, model_dim: int, teacher_name: str) -> None:
    if teacher.embed_dim != model_dim:
        raise ConfigError(
            f"teacher {teacher_name!r} has {teacher.embed_dim}-d embeddings but the model's are {model_dim}-d: "
            "use the teacher the model was trained against"
        )


@dataclass
class Prediction:
    label: str
    cosine: float
    probability: float  # softmax over the candidates at the model's learned logit scale


def what_is_this(
    model: uni3d.Uni3D, teacher: Any, teacher_name: str, points: np.ndarray, labels: list[str], top_k: int = 5
) -> list[list[Prediction]]:
    """Per cloud, the ``top_k`` labels (64 templates per label, docs/method.md §8) with cosine and probability."""
    check_dims(teacher, model.embed_dim, teacher_name)
    classes = uni3d.build_zero_shot_classifier(teacher, labels)
    logits = uni3d.zero_shot_logits(torch.from_numpy(embed_points(model, points)), classes)  # cosines (B, C)
    probs = (logits * model.logit_scale.detach().exp()).softmax(dim=1)
    out = []
    for row, prow in zip(logits, probs, strict=True):
        order = row.argsort(descending=True)[:top_k]
        out.append([Prediction(labels[i], float(row[i]), float(prow[i])) for i in order])
    return out


def recall_report(embeddings: np.ndarray, categories: list[str | None], teacher: Any | None) -> dict[str, Any]:
    """3D->3D (each labelled shape against the others) and text->3D (class names) recall@1/5/10."""
    rows = [i for i, c in enumerate(categories) if c]
    labels = [categories[i] for i in rows]
    if len(set(labels)) < 2:
        raise ConfigError(f"recall needs a gallery with at least two categories, found {sorted(set(labels))}")
    emb = embeddings[rows]
    _, idx = search(emb, emb, 10, exclude=list(range(len(rows))))
    report: dict[str, Any] = {"labelled_shapes": len(rows), "3d_to_3d": recall_at_k(labels, labels, idx)}
    if teacher is not None:
        names = sorted(set(labels))
        _, tidx = search(uni3d.build_zero_shot_classifier(teacher, names), emb, 10)
        report["text_to_3d"] = recall_at_k(names, labels, tidx)
    return report


def contact_sheet(
    path: str | Path, query_title: str, query_points: np.ndarray | None, results: list[tuple[str, float, np.ndarray]]
) -> Path:
    """A PNG: the query (a cloud, or just its text) then the results, each a coloured point cloud."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results) + 1
    fig = plt.figure(figsize=(2.6 * n, 3.2))
    cells = [(f"query\n{query_title}", query_points)] + [(f"{t}\ncosine {s:.3f}", p) for t, s, p in results]
    for i, (title, points) in enumerate(cells):
        ax = fig.add_subplot(1, n, i + 1, projection="3d")
        if points is None:
            ax.text2D(0.5, 0.5, query_title, ha="center", va="center", fontsize=11, wrap=True, transform=ax.transAxes)
        else:
            sub = points[np.random.default_rng(0).permutation(len(points))[:2048]]
            ax.scatter(sub[:, 0], sub[:, 2], sub[:, 1], c=np.clip(sub[:, 3:], 0, 1), s=2, depthshade=False)
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)  # Y up
            ax.view_init(elev=20, azim=-60)
        ax.set_axis_off()
        ax.set_title(title, fontsize=8, y=0.95)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.85, wspace=0)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def gallery_points(table: Any, rows: Sequence[int]) -> list[np.ndarray]:
    """The stored clouds of gallery rows (one decode per row: they may differ in point count)."""
    return [decode_points_batch(table.slice(int(i), 1).select(["xyz", "rgb"]))[0] for i in rows]

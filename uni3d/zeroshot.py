"""Zero-shot classification maths: prompt templates, the text classifier, logits and accuracies (docs/method.md §8).

Follows the Uni3D zero-shot protocol (arXiv 2310.06773, official ``test_zeroshot_3d_core``): every class
name is written into the 64 official prompt templates (``uni3d/data/templates.txt``, the official
``templates.json["modelnet40_64"]`` verbatim, used for ModelNet40, ScanObjectNN and Objaverse-LVIS alike,
including its one template without a final full stop); the teacher's text embeddings of the 64 prompts
are L2-normalised, averaged and L2-normalised again. Logits are cosine similarities between point
embeddings and class embeddings; accuracy is top-1/3/5 over samples.

Class names go into the templates exactly as given, never cleaned here: the official evaluation prompts the
names of its ``data/labels.json``, which keeps Objaverse-LVIS's underscores ("Band_Aid") and spells
ModelNet40's shape names with spaces ("flower pot"); ``pipelines.evaluate.sets`` picks those names per benchmark.

Layout: the classifier is ``(C, E)``, one unit row per class (like a teacher's ``(n, E)`` output), and
logits are ``(N, C)``. Everything is torch; numpy inputs are converted.

Ties: a class ranks above the true class when its logit is larger, or equal with a lower class index,
exactly as ``argmax`` (first maximum) breaks ties. So top-1 accuracy always agrees with the predictions
``logits.argmax(1)`` fed to :func:`per_class_accuracy`, and results do not depend on the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EncodeText = Callable[[list[str]], Any]  # list of n strings -> (n, E) array or tensor

NUM_OFFICIAL_TEMPLATES = 64


def load_templates() -> list[str]:
    """The 64 official Uni3D prompt templates, each with one ``{}`` for the class name."""
    text = resources.files("uni3d").joinpath("data/templates.txt").read_text(encoding="utf-8")
    templates = [line for line in text.splitlines() if line.strip()]
    _check_templates(templates)
    if len(templates) != NUM_OFFICIAL_TEMPLATES:
        raise RuntimeError(f"uni3d/data/templates.txt holds {len(templates)} templates, expected 64")
    return templates


def _check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise ValueError("empty template list")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1 or t.count("{") != 1 or t.count("}") != 1:
            raise ValueError(f"a template must be a string with exactly one '{{}}' and no other braces: {t!r}")
    dup = sorted(t for t, n in Counter(templates).items() if n > 1)
    if dup:
        raise ValueError(f"duplicate templates: {dup}")


def _check_class_names(class_names: Sequence[str]) -> None:
    if len(class_names) == 0:
        raise ValueError("empty label list")
    bad = [c for c in class_names if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings, got {bad[:5]!r}")
    dup = sorted(c for c, n in Counter(class_names).items() if n > 1)
    if dup:
        raise ValueError(f"duplicate class names: {dup}")


def build_zero_shot_classifier(
    teacher_or_encode_text: Any,
    class_names: Sequence[str],
    templates: Sequence[str] | None = None,
) -> Tensor:
    """Class embeddings ``(C, E)`` float32 on the CPU, one unit-norm row per class (docs/method.md §8).

    ``teacher_or_encode_text`` is a :class:`uni3d.teachers.Teacher` or any function mapping a list of
    strings to an ``(n, E)`` array/tensor. All ``C * T`` prompts go to it in one call (the teacher batches
    internally); per class, the ``T`` prompt embeddings are L2-normalised, averaged and L2-normalised.
    ``templates`` defaults to the 64 official ones.
    """
    _check_class_names(class_names)
    templates = load_templates() if templates is None else list(templates)
    _check_templates(templates)
    encode: EncodeText = getattr(teacher_or_encode_text, "encode_text", teacher_or_encode_text)
    if not callable(encode):
        raise ValueError("expected a teacher or a function encoding a list of strings")
    prompts = [t.replace("{}", name) for name in class_names for t in templates]  # class-major
    emb = encode(prompts)
    emb = emb if isinstance(emb, Tensor) else torch.as_tensor(np.asarray(emb))
    return _average_prompts(emb, len(class_names), len(templates))


def _average_prompts(emb: Tensor, num_classes: int, num_templates: int) -> Tensor:
    if emb.ndim != 2 or emb.shape[0] != num_classes * num_templates:
        raise ValueError(f"encode_text returned shape {tuple(emb.shape)}, expected ({num_classes * num_templates}, E)")
    emb = F.normalize(emb.float().cpu(), dim=-1).view(num_classes, num_templates, -1)  # (C, T, E)
    return F.normalize(emb.mean(dim=1), dim=-1)  # (C, E)


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray | list | tuple):
        return torch.as_tensor(np.asarray(x))
    raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


def zero_shot_logits(point_emb: Any, class_emb: Any) -> Tensor:
    """Cosine similarities ``(N, C)`` in float32 between point embeddings ``(N, E)`` and classes ``(C, E)``.

    Both sides are L2-normalised, so unnormalised encoder outputs can be passed directly. The result
    lives on the point embeddings' device.
    """
    p, c = _as_tensor(point_emb, "point_emb"), _as_tensor(class_emb, "class_emb")
    if p.ndim != 2 or c.ndim != 2 or p.shape[1] != c.shape[1]:
        raise ValueError(f"expected (N, E) and (C, E) embeddings, got {tuple(p.shape)} and {tuple(c.shape)}")
    p = F.normalize(p.float(), dim=-1)
    c = F.normalize(c.float().to(p.device), dim=-1)
    return p @ c.T


def _check_logits_labels(logits: Any, labels: Any) -> tuple[Tensor, Tensor]:
    logits, labels = _as_tensor(logits, "logits"), _as_tensor(labels, "labels")
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    labels = labels.to(device=logits.device, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{labels.min()}, {labels.max()}]")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    return logits, labels


def true_class_rank(logits: Any, labels: Any) -> Tensor:
    """0-based rank ``(N,)`` of each sample's true class; ties go to the lower class index (as argmax)."""
    logits, labels = _check_logits_labels(logits, labels)
    true = logits.gather(1, labels[:, None])  # (N, 1)
    lower = torch.arange(logits.shape[1], device=logits.device)[None, :] < labels[:, None]  # (N, C)
    return ((logits > true) | ((logits == true) & lower)).sum(dim=1)


def topk_correct(logits: Any, labels: Any, ks: Sequence[int] = (1, 3, 5)) -> dict[int, int]:
    """Number of samples whose true class is among the top ``k``, per ``k``: exact counts to all-reduce."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    rank = true_class_rank(logits, labels)
    return {int(k): int((rank < k).sum()) for k in ks}


def topk_accuracy(logits: Any, labels: Any, ks: Sequence[int] = (1, 3, 5)) -> dict[int, float]:
    """Top-k accuracy in percent over samples, per ``k`` (a ``k`` >= the number of classes gives 100)."""
    correct = topk_correct(logits, labels, ks)
    num = _as_tensor(labels, "labels").shape[0]
    if num == 0:
        raise ValueError("no samples: accuracy is undefined (use topk_correct to sum counts across shards)")
    return {k: 100.0 * c / num for k, c in correct.items()}


def per_class_counts(preds: Any, labels: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(correct, total)``, each ``(num_classes,)`` int64 on the CPU: exact counts to all-reduce."""
    preds, labels = _as_tensor(preds, "preds").long().cpu(), _as_tensor(labels, "labels").long().cpu()
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(
            f"expected preds and labels of equal shape (N,), got {tuple(preds.shape)}, {tuple(labels.shape)}"
        )
    for name, x in (("preds", preds), ("labels", labels)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    total = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[preds == labels], minlength=num_classes)
    return correct, total


def per_class_accuracy(preds: Any, labels: Any, num_classes: int) -> Tensor:
    """Accuracy in percent per class ``(num_classes,)`` float64; NaN for classes with no samples.

    ``preds`` are predicted class indices (``logits.argmax(1)``); the mean class accuracy is
    ``per_class_accuracy(...).nanmean()``.
    """
    correct, total = per_class_counts(preds, labels, num_classes)
    return torch.where(total > 0, 100.0 * correct.double() / total.clamp(min=1), torch.nan)

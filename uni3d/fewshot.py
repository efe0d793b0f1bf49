"""Few-shot linear probe on frozen embeddings (OpenShape's protocol) and a confusion matrix.

For each number of shots ``k`` and each seed: ``k`` samples per class are drawn for training, every other
sample is a test sample, and a multinomial logistic regression (L2-penalised, the objective of scikit-learn's
``LogisticRegression(C=1)``) is fitted with L-BFGS on the L2-normalised embeddings. Classes with fewer than
``k + 1`` samples are left out of that ``k`` (and counted). Accuracies are in percent, mean ± std over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def confusion_matrix(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray, num_classes: int):
    """``(C, C)`` int64 counts, row = true class, column = predicted class."""
    preds, labels = np.asarray(preds, np.int64), np.asarray(labels, np.int64)
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in shape")
    if len(labels) and (min(preds.min(), labels.min()) < 0 or max(preds.max(), labels.max()) >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes})")
    return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(num_classes, -1)


def fit_logistic_regression(x: Tensor, y: Tensor, num_classes: int, c: float = 1.0, max_iter: int = 200) -> Tensor:
    """Weights ``(D + 1, C)`` (bias last) minimising ``sum CE + ||W||² / (2c)`` (bias not penalised)."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    w = torch.zeros(xb.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y, reduction="sum") + (w[:-1] ** 2).sum() / (2 * c)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


@dataclass
class FewShotResult:
    shots: int
    mean: float  # accuracy in percent over seeds
    std: float
    runs: list[float]
    classes: int  # classes with enough samples for this k
    skipped_classes: int


def few_shot(
    embeddings: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: int = 10,
    c: float = 1.0,
) -> list[FewShotResult]:
    x = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float64), dim=-1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings must be (N, E) with one label per row, got {tuple(x.shape)} and {len(y)} labels")
    results = []
    for k in shots:
        counts = torch.bincount(y)
        keep = torch.nonzero(counts > k).flatten()
        if len(keep) < 2:
            raise ValueError(f"{k}-shot needs at least two classes with more than {k} samples, found {len(keep)}")
        remap = torch.full((len(counts),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        rows = torch.nonzero(remap[y] >= 0).flatten()
        runs = []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            train = torch.cat([rows[y[rows] == c_][torch.randperm(int(counts[c_]), generator=g)[:k]] for c_ in keep])
            test = rows[~torch.isin(rows, train)]
            w = fit_logistic_regression(x[train], remap[y[train]], len(keep), c=c)
            logits = torch.cat([x[test], torch.ones(len(test), 1, dtype=x.dtype)], dim=1) @ w
            runs.append(100.0 * float((logits.argmax(1) == remap[y[test]]).double().mean()))
        arr = np.asarray(runs)
        results.append(FewShotResult(k, float(arr.mean()), float(arr.std()), runs, len(keep), len(counts) - len(keep)))
    return results

"""Few-shot linear probe on frozen embeddings (OpenShape's protocol) and a confusion matrix.

OpenShape (arXiv 2305.10764, §4.2 and Fig. 5) trains a linear classifier on frozen 3D embeddings with 1, 2,
4, 8 and 16 labelled shapes per class, on Objaverse-LVIS, ModelNet40 and ScanObjectNN, and reports the average
over 10 random seeds; Uni3D (arXiv 2310.06773) follows OpenShape's settings. OpenShape's authors give the rest
(github.com/Colin97/OpenShape_code, issue #17): the embeddings of all shapes of the *test* set are extracted,
``k`` shapes per category are drawn at random from that test set to train scikit-learn's ``LogisticRegression``
with the L-BFGS solver (as CLIP's linear probe), and the classifier is scored on the rest of the test set.

Here, for each ``k`` and each seed ``0 .. seeds - 1`` (:func:`draw_shots`, :func:`few_shot`):

- every class with at least ``k`` samples gives ``k`` random training samples, and every other sample of those
  classes is a test sample (a class with exactly ``k`` tests nothing but is still one of the probe's classes);
- the classifier minimises the objective of ``LogisticRegression(C=1)``: multinomial cross-entropy summed over
  the samples plus ``||W||² / 2``, bias not penalised, on the embeddings as the encoder returns them (neither
  OpenShape nor CLIP's probe normalises them), with L-BFGS (:func:`fit_logistic_regression`);
- accuracy is top-1 over the test samples, in percent; a result is the mean (and std) over the seeds.

Where the description is silent, what we do:

- a class with fewer than ``k`` samples cannot give ``k`` shots: it is left out of that ``k``, for training and
  testing, and counted (``skipped_classes``);
- L-BFGS runs up to 200 iterations (scikit-learn stops at ``max_iter``, 100 by default; theirs is not given);
- the draws are ours (a seeded torch generator), so single runs differ from theirs; only the mean compares.
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
    classes: int  # classes with at least ``shots`` samples: the probe's classes
    skipped_classes: int  # classes with fewer samples, left out
    test_samples: int  # per run: the samples of those classes not drawn for training


def draw_shots(labels: np.ndarray | Tensor, shots: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """One run's split of the set: ``(train, test, classes)``.

    ``train`` holds ``shots`` random row indices of every class with at least ``shots`` samples, ``test`` every
    other row of those classes (sorted), ``classes`` those class ids (sorted).
    """
    if shots < 1:
        raise ValueError(f"shots must be positive, got {shots}")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    classes = torch.nonzero(torch.bincount(y) >= shots).flatten()
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in classes:
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        train.append(rows[:shots])
        test.append(rows[shots:])
    empty = torch.zeros(0, dtype=torch.long)
    return torch.cat(train or [empty]), torch.cat(test or [empty]).sort().values, classes


def few_shot(
    embeddings: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: int = 10,
    c: float = 1.0,
) -> list[FewShotResult]:
    """OpenShape's few-shot linear probe (module docstring): per ``k`` in ``shots``, ``seeds`` runs."""
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)  # as the encoder returns them
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings must be (N, E) with one label per row, got {tuple(x.shape)} and {len(y)} labels")
    if seeds < 1:
        raise ValueError(f"seeds must be positive, got {seeds}")
    present = int((torch.bincount(y) > 0).sum())
    results = []
    for k in shots:
        runs = []
        for seed in range(seeds):
            train, test, classes = draw_shots(y, k, seed)
            if len(classes) < 2:
                raise ValueError(f"{k}-shot needs at least two classes with {k} or more samples, found {len(classes)}")
            if len(test) == 0:
                raise ValueError(f"{k}-shot leaves no sample to test: no class has more than {k} samples")
            remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
            remap[classes] = torch.arange(len(classes))
            w = fit_logistic_regression(x[train], remap[y[train]], len(classes), c=c)
            logits = torch.cat([x[test], torch.ones(len(test), 1, dtype=x.dtype)], dim=1) @ w
            runs.append(100.0 * float((logits.argmax(1) == remap[y[test]]).double().mean()))
        arr = np.asarray(runs)
        results.append(
            FewShotResult(k, float(arr.mean()), float(arr.std()), runs, len(classes), present - len(classes), len(test))
        )
    return results

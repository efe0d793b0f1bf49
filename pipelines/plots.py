"""Pictures of a run: training curves from ``metrics.jsonl`` and per-class accuracy bars."""

from __future__ import annotations

import json
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The run's metrics lines, the last one per step (a resumed run repeats some steps)."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        m = json.loads(line)
        by_step[m["step"]] = {**by_step.get(m["step"], {}), **m}
    return [by_step[s] for s in sorted(by_step)]


def training_curves(metrics_file: str | Path, out: str | Path, chance: float | None = None) -> Path:
    """Loss, point->text accuracy and held-out zero-shot top-1 against the step."""
    plt = _plt()
    log = read_metrics(metrics_file)
    steps = [m["step"] for m in log]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [m["loss"] for m in log])
    axes[0].set_title("contrastive loss")
    axes[1].plot(steps, [m["acc_text"] for m in log])
    axes[1].set_title("point->text accuracy in the batch (%)")
    evals = [m for m in log if "zeroshot_top1" in m]
    axes[2].plot([m["step"] for m in evals], [m["zeroshot_top1"] for m in evals], marker="o", label="top-1")
    axes[2].plot([m["step"] for m in evals], [m["zeroshot_top5"] for m in evals], marker=".", label="top-5")
    if chance is not None:
        axes[2].axhline(chance, color="grey", linestyle="--", label=f"chance {chance:.1f}%")
    axes[2].set_ylim(0, 100)
    axes[2].set_title("held-out zero-shot accuracy (%)")
    axes[2].legend(loc="lower right")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def per_class_bars(per_class: dict[str, float], out: str | Path, title: str, chance: float | None = None) -> Path:
    plt = _plt()
    names = sorted(per_class, key=lambda n: per_class[n])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    ax.barh(names, [per_class[n] for n in names], color="tab:blue")
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", label=f"chance {chance:.1f}%")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)

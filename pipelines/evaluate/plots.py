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
    """Loss, point->text accuracy and held-out zero-shot top-1/top-5 against the step (and those of the
    unseen categories when the run held some out)."""
    plt = _plt()
    log = read_metrics(metrics_file)
    steps = [m["step"] for m in log]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    axes[0].plot(steps, [m["loss"] for m in log])
    axes[0].set_title("contrastive loss")
    axes[1].plot(steps, [m["acc_text"] for m in log])
    axes[1].set_title("point->text accuracy in the batch (%)")
    evals = [m for m in log if "zeroshot_top1" in m]
    unseen = [m for m in log if "unseen_top1" in m]
    seen = " (held-out shapes, trained categories)" if unseen else ""
    axes[2].plot([m["step"] for m in evals], [m["zeroshot_top1"] for m in evals], marker="o", label=f"top-1{seen}")
    axes[2].plot([m["step"] for m in evals], [m["zeroshot_top5"] for m in evals], marker=".", label=f"top-5{seen}")
    if unseen:
        steps_u = [m["step"] for m in unseen]
        axes[2].plot(steps_u, [m["unseen_top1"] for m in unseen], marker="s", label="top-1, unseen categories")
        axes[2].plot(steps_u, [m["unseen_top5"] for m in unseen], marker="x", label="top-5, unseen categories")
    if chance is not None:
        axes[2].axhline(chance, color="grey", linestyle="--", label=f"chance {chance:.1f}%")
    axes[2].set_ylim(0, 100)
    axes[2].set_title("held-out zero-shot accuracy (%)")
    axes[2].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncol=2)
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

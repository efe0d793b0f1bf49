"""The 14 categories of procedural objects: how each is built from coloured trimesh primitives, and its caption.

Each category is assembled from boxes, cylinders, cones, ellipsoids, tori and surfaces of revolution with
randomised proportions, part counts and named colours, so that a caption can be written from the attributes
("a brown table with a round top and three legs"). Shapes are Y up, front towards +Z, in metres; categories
differ in silhouette and proportions so they are separable from point clouds alone.
``pipelines.sources.procedural`` turns a builder's parts into a labelled shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "orange": (1.0, 0.5, 0.05),
    "yellow": (0.95, 0.85, 0.1),
    "green": (0.15, 0.6, 0.2),
    "blue": (0.1, 0.3, 0.85),
    "purple": (0.5, 0.2, 0.7),
    "pink": (0.95, 0.5, 0.7),
    "brown": (0.5, 0.3, 0.12),
    "black": (0.08, 0.08, 0.08),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.5, 0.5, 0.5),
}
_ANY = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "black", "white", "grey")
_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_Y_UP = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # trimesh's +Z axis -> +Y
_Z_TO_X = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])  # +Z axis -> +X


@dataclass(frozen=True)
class Part:
    name: str
    color: str  # a PALETTE name
    vertices: np.ndarray  # (V, 3) float32, Y up
    faces: np.ndarray  # (F, 3) int64


class Builder:
    """Collects coloured parts; every primitive helper places a Y-up trimesh primitive."""

    def __init__(self) -> None:
        self.parts: list[Part] = []

    def add(self, name: str, color: str, mesh: trimesh.Trimesh, at: tuple[float, float, float]) -> None:
        mesh.apply_translation(at)
        faces = mesh.faces[mesh.area_faces > 1e-12]  # the poles of revolved profiles give slivers
        self.parts.append(Part(name, color, mesh.vertices.astype(np.float32), faces.astype(np.int64)))

    def box(self, name: str, color: str, size: tuple, at: tuple) -> None:
        self.add(name, color, trimesh.creation.box(extents=size), at)

    def cylinder(self, name: str, color: str, radius: float, height: float, at: tuple, axis: str = "y") -> None:
        mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=24)
        self.add(name, color, _orient(mesh, axis), at)

    def cone(self, name: str, color: str, radius: float, height: float, base: tuple) -> None:
        self.add(name, color, trimesh.creation.cone(radius, height, sections=24).apply_transform(_Y_UP), base)

    def ellipsoid(self, name: str, color: str, radii: tuple, at: tuple) -> None:
        self.add(name, color, trimesh.creation.icosphere(2).apply_scale(radii), at)

    def revolve(self, name: str, color: str, profile: list | np.ndarray, base: tuple) -> None:
        """Closed (radius, height) profile spun around the vertical axis through ``base``."""
        mesh = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=32)
        self.add(name, color, mesh.apply_transform(_Y_UP), base)


def _orient(mesh: trimesh.Trimesh, axis: str) -> trimesh.Trimesh:
    return mesh.apply_transform({"x": _Z_TO_X, "y": _Y_UP, "z": np.eye(4)}[axis])


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _table(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color, leg_color = _pick(rng, ("brown", "white", "black", "grey")), _pick(rng, ("brown", "black", "grey"))
    height, thick, leg_r = rng.uniform(0.7, 0.8), rng.uniform(0.03, 0.06), rng.uniform(0.02, 0.035)
    round_top = bool(rng.random() < 0.4)
    if round_top:
        radius, legs = rng.uniform(0.45, 0.7), int(rng.choice([3, 4]))
        b.cylinder("top", color, radius, thick, (0, height - thick / 2, 0))
        ang = 2 * np.pi * np.arange(legs) / legs
        feet = 0.75 * radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    else:
        w, d, legs = rng.uniform(1.0, 1.8), rng.uniform(0.6, 1.0), 4
        b.box("top", color, (w, thick, d), (0, height - thick / 2, 0))
        feet = np.array([[sx * (w / 2 - 0.08), sz * (d / 2 - 0.08)] for sx in (-1, 1) for sz in (-1, 1)])
    for i, (x, z) in enumerate(feet):
        b.cylinder(f"leg{i}", leg_color, leg_r, height - thick, (x, (height - thick) / 2, z))
    top = "round" if round_top else "rectangular"
    return {"color": color, "legs": legs, "top": top}, f"{_a(color)} table with {_a(top)} top and {_NUM[legs]} legs"


def _chair(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, _ANY + ("brown",))
    w, d, seat_h, back_h = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.5), rng.uniform(0.42, 0.5), rng.uniform(0.35, 0.7)
    b.box("seat", color, (w, 0.05, d), (0, seat_h, 0))
    for i, (sx, sz) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)]):
        b.cylinder(f"leg{i}", color, 0.022, seat_h, (sx * (w / 2 - 0.03), seat_h / 2, sz * (d / 2 - 0.03)))
    b.box("back", color, (w, back_h, 0.04), (0, seat_h + back_h / 2, -d / 2 + 0.02))
    arms = bool(rng.random() < 0.5)
    for sx in (-1, 1) if arms else ():
        b.box(f"arm{sx}", color, (0.05, 0.04, d), (sx * w / 2, seat_h + 0.22, 0))
        b.box(f"arm_post{sx}", color, (0.04, 0.22, 0.04), (sx * w / 2, seat_h + 0.11, d / 2 - 0.03))
    back = "tall" if back_h > 0.55 else "low"
    caption = f"{_a(color)} chair {'with' if arms else 'without'} armrests and {_a(back)} back"
    return {"color": color, "armrests": arms, "back": back}, caption


def _bottle(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color, cap = _pick(rng, ("green", "blue", "brown", "red", "white")), _pick(rng, ("white", "black", "red", "yellow"))
    r, body, shoulder = rng.uniform(0.035, 0.06), rng.uniform(0.15, 0.26), rng.uniform(0.03, 0.06)
    neck_r, neck_h = r * rng.uniform(0.25, 0.5), rng.uniform(0.05, 0.1)
    top = body + shoulder + neck_h
    b.revolve("body", color, [(0, 0), (r, 0), (r, body), (neck_r, body + shoulder), (neck_r, top), (0, top)], (0, 0, 0))
    b.cylinder("cap", cap, neck_r * 1.15, 0.02, (0, top + 0.01, 0))
    tall = "tall" if (top + 0.02) / (2 * r) > 3 else "short"
    neck = "narrow" if neck_r / r < 0.375 else "wide"
    return (
        {"color": color, "cap": cap, "neck": neck, "height": tall},
        f"{_a(tall)} {color} bottle with {_a(neck)} neck and {_a(cap)} cap",
    )


def _cup(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, _ANY)
    r, wall = rng.uniform(0.04, 0.055), 0.005
    h, saucer = 2 * r * rng.uniform(0.9, 1.4), bool(rng.random() < 0.4)
    y0 = 0.008 if saucer else 0.0
    b.revolve("body", color, [(0, 0), (r, 0), (r, h), (r - wall, h), (r - wall, wall), (0, wall)], (0, y0, 0))
    b.add("handle", color, trimesh.creation.torus(h * 0.28, wall * 1.4, 24, 10), (r + h * 0.12, y0 + h / 2, 0))
    if saucer:
        b.cylinder("saucer", color, r * 1.9, 0.008, (0, 0.004, 0))
    return {"color": color, "saucer": saucer}, f"{_a(color)} cup with a handle" + (" on a saucer" if saucer else "")


def _bowl(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, _ANY)
    radius, wall = rng.uniform(0.08, 0.15), 0.006
    depth = radius * rng.uniform(0.4, 0.7)
    t = np.linspace(0, np.pi / 2, 12)  # quarter ellipse from the bottom centre to the rim
    outer = np.stack([radius * np.sin(t), depth * (1 - np.cos(t))], 1)
    inner = np.stack([(radius - wall) * np.sin(t), wall + (depth - wall) * (1 - np.cos(t))], 1)[::-1]
    b.revolve("bowl", color, np.concatenate([outer, inner]), (0, 0, 0))
    shape = "deep" if depth / radius > 0.55 else "shallow"
    return {"color": color, "depth": shape}, f"{_a(shape)} {color} bowl"


def _lamp(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color, metal = _pick(rng, _ANY), _pick(rng, ("black", "grey", "white"))
    floor = bool(rng.random() < 0.5)
    pole = rng.uniform(1.2, 1.7) if floor else rng.uniform(0.45, 0.6)
    shade_r = rng.uniform(0.15, 0.25) if floor else rng.uniform(0.1, 0.14)
    shade_h, top_r, base_r = shade_r * rng.uniform(0.9, 1.3), shade_r * rng.uniform(0.55, 0.8), shade_r * 0.9
    b.cylinder("base", metal, base_r, 0.03, (0, 0.015, 0))
    b.cylinder("pole", metal, 0.012, pole, (0, pole / 2, 0))
    w = 0.006  # open lampshade: a thin frustum shell
    b.revolve(
        "shade",
        color,
        [(shade_r, 0), (top_r, shade_h), (top_r - w, shade_h), (shade_r - w, 0), (shade_r, 0)],
        (0, pole - shade_h * 0.6, 0),
    )
    kind = "floor" if floor else "desk"
    return {"color": color, "kind": kind, "stand": metal}, f"{_a(kind)} lamp with {_a(color)} shade on a {metal} stand"


def _bookshelf(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, ("brown", "white", "black"))
    w, h, d, t = rng.uniform(0.6, 1.2), rng.uniform(1.2, 2.0), rng.uniform(0.25, 0.4), 0.025
    shelves, books = int(rng.integers(2, 6)), bool(rng.random() < 0.5)
    for sx in (-1, 1):
        b.box(f"side{sx}", color, (t, h, d), (sx * (w - t) / 2, h / 2, 0))
    b.box("back", color, (w, h, t), (0, h / 2, -(d - t) / 2))
    levels = np.linspace(t / 2, h - t / 2, shelves + 2)  # bottom, inner shelves, top
    for i, y in enumerate(levels):
        b.box(f"board{i}", color, (w - 2 * t, t, d), (0, y, 0))
    for i, (lo, hi) in enumerate(zip(levels[:-1], levels[1:], strict=True)) if books else ():
        widths = rng.uniform(0.03, 0.06, size=int((w - 2 * t) / 0.07))
        xs = -w / 2 + t + np.cumsum(widths) - widths / 2
        for j, (x, bw) in enumerate(zip(xs, widths, strict=True)):
            bh = (hi - lo - t) * rng.uniform(0.6, 0.9)
            b.box(f"book{i}_{j}", _pick(rng, _ANY), (bw * 0.95, bh, d * 0.8), (x, lo + t / 2 + bh / 2, 0))
    caption = f"{_a(color)} bookshelf with {_NUM[shelves]} shelves" + (" full of books" if books else "")
    return {"color": color, "shelves": shelves, "books": books}, caption


def _bed(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color, frame = _pick(rng, _ANY), _pick(rng, ("brown", "white", "black"))
    w, length, frame_h, head_h = (
        rng.uniform(1.0, 1.8),
        rng.uniform(1.9, 2.2),
        rng.uniform(0.25, 0.35),
        rng.uniform(0.5, 1.0),
    )
    pillows = 2 if w > 1.3 else 1
    b.box("frame", frame, (w, frame_h, length), (0, frame_h / 2, 0))
    b.box("mattress", "white", (w * 0.96, 0.2, length * 0.96), (0, frame_h + 0.1, 0))
    b.box("blanket", color, (w * 0.98, 0.06, length * 0.65), (0, frame_h + 0.2, length * 0.155))
    b.box("headboard", frame, (w, frame_h + head_h, 0.06), (0, (frame_h + head_h) / 2, -length / 2))
    for i, x in enumerate(np.linspace(-w / 4, w / 4, pillows) if pillows == 2 else [0.0]):
        b.ellipsoid(f"pillow{i}", "white", (w / (2.5 * pillows), 0.07, 0.18), (x, frame_h + 0.25, -length / 2 + 0.3))
    return (
        {"color": color, "frame": frame, "pillows": pillows},
        f"a bed with {_a(color)} blanket, {_a(frame)} frame and {_NUM[pillows]} pillow{'s' * (pillows > 1)}",
    )


def _sofa(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, _ANY + ("brown",))
    w, d, back_h, arm_h = rng.uniform(1.6, 2.4), rng.uniform(0.8, 1.0), rng.uniform(0.4, 0.55), rng.uniform(0.15, 0.3)
    cushions = int(rng.integers(2, 4))
    b.box("base", color, (w, 0.3, d), (0, 0.25, 0))
    for sx in (-1, 1):
        b.box(f"arm{sx}", color, (0.2, 0.4 + arm_h, d), (sx * (w / 2 - 0.1), (0.4 + arm_h) / 2 + 0.1, 0))
        for sz in (-1, 1):
            b.cylinder(f"foot{sx}{sz}", "black", 0.03, 0.1, (sx * (w / 2 - 0.1), 0.05, sz * (d / 2 - 0.08)))
    b.box("back", color, (w, 0.4 + back_h, 0.2), (0, (0.4 + back_h) / 2 + 0.1, -d / 2 + 0.1))
    inner = (w - 0.4) / cushions
    for i in range(cushions):
        b.box(f"cushion{i}", color, (inner * 0.96, 0.12, d - 0.25), (-w / 2 + 0.2 + inner * (i + 0.5), 0.46, 0.1))
    return {"color": color, "cushions": cushions}, f"{_a(color)} sofa with {_NUM[cushions]} seat cushions"


def _car(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, _ANY)
    length, width, body_h, wheel_r = (
        rng.uniform(3.6, 4.8),
        rng.uniform(1.6, 2.0),
        rng.uniform(0.5, 0.7),
        rng.uniform(0.3, 0.38),
    )
    cab_l, cab_h, cab_x = length * rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), length * rng.uniform(-0.1, 0.05)
    base = wheel_r * 0.8
    b.box("body", color, (length, body_h, width), (0, base + body_h / 2, 0))
    b.box("cabin", color, (cab_l, cab_h, width * 0.9), (cab_x, base + body_h + cab_h / 2, 0))
    b.box("windows", "black", (cab_l * 0.9, cab_h * 0.6, width * 0.92), (cab_x, base + body_h + cab_h / 2, 0))
    for i, (sx, sz) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)]):
        b.cylinder(f"wheel{i}", "black", wheel_r, 0.25, (sx * length * 0.32, wheel_r, sz * width / 2), axis="z")
    roof = "low" if cab_h < 0.5 else "high"
    return {"color": color, "roof": roof}, f"{_a(color)} car with {_a(roof)} roof and four black wheels"


def _airplane(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color, wing_color = _pick(rng, ("white", "grey", "blue", "red", "yellow")), _pick(rng, ("white", "grey"))
    length, radius, span, chord = (
        rng.uniform(3.0, 4.0),
        rng.uniform(0.18, 0.25),
        rng.uniform(3.0, 4.0),
        rng.uniform(0.5, 0.8),
    )
    engines = int(rng.choice([2, 4]))
    y = 1.0  # fuselage axis height
    b.add(
        "fuselage",
        color,
        _orient(trimesh.creation.capsule(length - 2 * radius, radius, count=[16, 16]), "x"),
        (0, y, 0),
    )
    b.box("wings", wing_color, (chord, 0.05, span), (length * 0.05, y - radius * 0.3, 0))
    b.box("stabiliser", wing_color, (chord * 0.5, 0.04, span * 0.35), (-length * 0.42, y + radius * 0.2, 0))
    b.box("fin", color, (chord * 0.6, rng.uniform(0.5, 0.7), 0.04), (-length * 0.42, y + radius + 0.25, 0))
    for i, z in enumerate(span * np.array([-0.4, -0.22, 0.22, 0.4] if engines == 4 else [-0.25, 0.25])):
        b.cylinder(f"engine{i}", "grey", radius * 0.45, chord * 0.7, (length * 0.08, y - radius - 0.1, z), axis="x")
    return {"color": color, "engines": engines}, f"{_a(color)} airplane with {_NUM[engines]} engines under its wings"


def _tree(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, ("green", "green", "orange", "yellow", "pink"))
    trunk_h, trunk_r = rng.uniform(0.6, 1.2), rng.uniform(0.08, 0.15)
    b.cylinder("trunk", "brown", trunk_r, trunk_h, (0, trunk_h / 2, 0))
    pine, layers = bool(rng.random() < 0.5), int(rng.integers(2, 5))
    radius = rng.uniform(0.6, 0.9)
    for i in range(layers):
        shrink = 1 - 0.22 * i
        if pine:  # stacked cones, each narrower and higher
            b.cone(f"leaves{i}", color, radius * shrink, radius * 1.1, (0, trunk_h * 0.7 + i * radius * 0.55, 0))
        else:  # a vertical cluster of foliage balls
            r = radius * shrink * 0.8
            b.ellipsoid(f"leaves{i}", color, (r, r * 0.9, r), (0, trunk_h + r * 0.6 + i * radius * 0.6, 0))
    kind = "pine" if pine else "round"
    caption = f"{_a(color)} {kind} tree with {_NUM[layers]} layers of leaves"
    return {"color": color, "kind": kind, "layers": layers}, caption


def _mushroom(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color = _pick(rng, ("red", "brown", "orange", "yellow", "purple"))
    stem_r, stem_h, cap_r = rng.uniform(0.1, 0.18), rng.uniform(0.3, 0.55), rng.uniform(0.35, 0.6)
    cap_h = cap_r * rng.uniform(0.5, 0.8)
    b.revolve("stem", "white", [(0, 0), (stem_r * 1.2, 0), (stem_r, stem_h), (0, stem_h)], (0, 0, 0))
    t = np.linspace(0, np.pi / 2, 10)
    cap = np.concatenate([[[0.0, 0.0]], np.stack([cap_r * np.cos(t), cap_h * np.sin(t)], 1)])  # dome profile
    b.revolve("cap", color, cap, (0, stem_h * 0.95, 0))
    spots = int(rng.integers(5, 10)) if rng.random() < 0.6 else 0
    for i in range(spots):  # white spots on the cap surface (points on the ellipsoid)
        a, e = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 1.2)
        at = (cap_r * np.cos(e) * np.cos(a), stem_h * 0.95 + cap_h * np.sin(e), cap_r * np.cos(e) * np.sin(a))
        b.ellipsoid(f"spot{i}", "white", (cap_r * 0.12, cap_r * 0.06, cap_r * 0.12), at)
    caption = f"{_a(color)} mushroom with " + ("white spots" if spots else "a white stem")
    return {"color": color, "spots": spots}, caption


def _guitar(b: Builder, rng: np.random.Generator) -> tuple[dict, str]:
    color, neck = _pick(rng, ("brown", "red", "black", "white", "blue", "orange")), _pick(rng, ("brown", "black"))
    lower, upper, depth = rng.uniform(0.18, 0.22), rng.uniform(0.13, 0.16), rng.uniform(0.04, 0.06)
    neck_l = rng.uniform(0.45, 0.6)
    b.ellipsoid("lower_bout", color, (lower, lower * 1.1, depth), (0, lower * 1.1, 0))
    b.ellipsoid("upper_bout", color, (upper, upper, depth), (0, lower * 1.9 + upper * 0.6, 0))
    b.cylinder("sound_hole", "black", upper * 0.35, 0.01, (0, lower * 1.9, depth * 0.95), axis="z")
    top = lower * 1.9 + upper * 1.3
    b.box("neck", neck, (0.05, neck_l, 0.03), (0, top + neck_l / 2, 0))
    b.box("headstock", neck, (0.08, 0.16, 0.03), (0, top + neck_l + 0.08, 0))
    return {"color": color, "neck": neck}, f"{_a(color)} guitar with {_a(neck)} neck"


BUILDERS: dict[str, Callable[[Builder, np.random.Generator], tuple[dict, str]]] = {
    "table": _table,
    "chair": _chair,
    "bottle": _bottle,
    "cup": _cup,
    "bowl": _bowl,
    "lamp": _lamp,
    "bookshelf": _bookshelf,
    "bed": _bed,
    "sofa": _sofa,
    "car": _car,
    "airplane": _airplane,
    "tree": _tree,
    "mushroom": _mushroom,
    "guitar": _guitar,
}
CATEGORIES: tuple[str, ...] = tuple(BUILDERS)

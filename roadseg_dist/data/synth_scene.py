"""The synthetic street as data: a random layout, lighting and the objects in it (no pixels yet).

    make_street(rng, detail, light)  ->  Scene   ``make_scene`` (all 19 classes) or its ``coarsen``-ed
                                                 form, under a chosen ``light`` (``relight``)

A scene is a small world in metres: a straight road with lanes, sidewalks, buildings / vegetation /
fences along both sides, street furniture, pedestrians, traffic. ``synth_draw.render`` turns it into
an image and its label at any time ``t``; ``synth`` writes datasets and clips of it.
"""
from __future__ import annotations

import dataclasses

import numpy as np


# --- the world ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Thing:
    """One object in the world: ``kind`` picks its drawing, (x, z) its ground position in metres."""
    kind: str
    x: float
    z: float
    vx: float = 0.0          # own motion in m/s (added to the camera's apparent motion)
    vz: float = 0.0
    size: float = 1.0        # scale factor or a kind-specific dimension
    color: tuple = (128, 128, 128)
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Scene:
    horizon: float           # fraction of the image height
    focal: float             # focal length as a fraction of the image width
    cam_height: float
    cam_x: float
    yaw: float               # horizontal offset of the vanishing point, fraction of width
    speed: float             # camera forward speed, m/s (clips only)
    road_half: float
    lane_width: float
    walk_width: float
    light: str               # day | overcast | dusk (as drawn) | night | fog (``relight``)
    gain: float
    tint: np.ndarray
    colors: dict
    sides: list              # (side, z0, z1, kind, height, color)
    things: list
    coarse: bool = False     # large classes only (see ``coarsen``)


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _jitter(rng, rgb, amount=12):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


CAR_COLORS = [(200, 200, 205), (30, 30, 35), (150, 20, 25), (25, 50, 130), (120, 125, 130),
              (230, 230, 230), (60, 70, 60), (180, 140, 40)]
# Colours are chosen so classes stay apart: facades are warm, poles cool metal, riders wear hi-vis
# jackets and helmets that pedestrians never do.
FACADES = [(150, 88, 68), (190, 178, 155), (205, 200, 190), (160, 128, 98), (122, 96, 80)]
CLOTHES = [(40, 60, 150), (170, 30, 40), (40, 40, 45), (30, 110, 60), (210, 210, 215), (120, 60, 130)]
HI_VIS = [(235, 210, 40), (245, 130, 30), (120, 230, 60)]


def make_scene(rng: np.random.Generator) -> Scene:
    """Draw a random street: layout, lighting, and the objects in it (for z in -30..260 m)."""
    scene, lanes = _layout(rng)
    outer = scene.road_half + scene.walk_width
    for side in (-1, 1):
        _add_blocks(rng, scene, side, outer)
        _add_street_furniture(rng, scene, side, outer)
        _add_sidewalk_people(rng, scene, side)
    _add_traffic(rng, scene, lanes)
    # a rider near the right road edge, sometimes
    if rng.random() < 0.5:
        scene.things.append(Thing("rider", scene.road_half - 0.9, rng.uniform(8, 25), vz=rng.uniform(4, 6),
                                  color=_pick(rng, HI_VIS),
                                  extra={"bike": _pick(rng, [(25, 25, 25), (150, 20, 20)]),
                                         "phase": rng.uniform(0, 6.28)}))
    return scene


# The helpers below draw from ``rng`` in a fixed order: the same seed must keep giving the same
# dataset, byte for byte, so reorder nothing.

def _layout(rng: np.random.Generator) -> tuple[Scene, int]:
    """Lighting, lanes, camera and colours of an empty street; (scene, number of lanes)."""
    light = _pick(rng, ["day", "day", "day", "overcast", "dusk"])
    gain = {"day": rng.uniform(0.92, 1.08), "overcast": rng.uniform(0.8, 0.95),
            "dusk": rng.uniform(0.6, 0.8)}[light]
    tint = {"day": np.array([1.0, 1.0, 1.0]), "overcast": np.array([0.97, 1.0, 1.03]),
            "dusk": np.array([1.12, 0.95, 0.85])}[light] * rng.uniform(0.95, 1.05, 3)
    lanes = int(rng.integers(2, 5))
    lane_width = rng.uniform(3.2, 3.8)
    road_half = lanes * lane_width / 2
    walk_width = rng.uniform(2.5, 4.0)
    cam_lane = int(rng.integers(lanes // 2, lanes)) if lanes > 1 else 0
    cam_x = -road_half + (cam_lane + 0.5) * lane_width + rng.uniform(-0.3, 0.3)
    colors = {
        "road": _jitter(rng, (92, 90, 96), 10),
        "walk": _jitter(rng, (168, 160, 162), 12),
        "terrain": _jitter(rng, (128, 142, 72), 15),
        "vegetation": _jitter(rng, (58, 110, 40), 12),
        "marking": (235, 235, 225) if rng.random() < 0.8 else (230, 200, 60),
        "pole": _jitter(rng, (150, 158, 172), 8),
    }
    scene = Scene(horizon=rng.uniform(0.38, 0.5), focal=rng.uniform(0.8, 1.0),
                  cam_height=rng.uniform(1.35, 1.65), cam_x=cam_x, yaw=rng.uniform(-0.08, 0.08),
                  speed=rng.uniform(7.0, 12.0), road_half=road_half, lane_width=lane_width,
                  walk_width=walk_width, light=light, gain=gain, tint=tint, colors=colors,
                  sides=[], things=[])
    return scene, lanes


def _add_blocks(rng: np.random.Generator, scene: Scene, side: int, outer: float) -> None:
    """Buildings, vegetation and fences one after the other along one side of the street."""
    z = -30.0
    while z < 260:
        length = rng.uniform(10, 30)
        kind = _pick(rng, ["building", "building", "vegetation", "fence"])
        # vegetation stands back behind a grass verge; buildings nearly on the sidewalk
        setback = {"building": rng.uniform(0.0, 2.0), "vegetation": rng.uniform(2.0, 6.0), "fence": 0.2}[kind]
        height = {"building": rng.uniform(7, 22), "vegetation": rng.uniform(3, 8),
                  "fence": rng.uniform(1.5, 2.5)}[kind]
        color = {"building": _jitter(rng, _pick(rng, FACADES), 10),
                 "vegetation": _jitter(rng, scene.colors["vegetation"], 10),
                 "fence": _jitter(rng, _pick(rng, [(150, 120, 90), (135, 135, 140)]), 8)}[kind]
        scene.sides.append((side, z, z + length, kind, height, color, outer + setback))
        z += length


def _add_street_furniture(rng: np.random.Generator, scene: Scene, side: int, outer: float) -> None:
    """Trees, light poles, signs and plain poles along the sidewalk's outer edge."""
    z = rng.uniform(-25, 5)
    while z < 250:
        r = rng.random()
        x = side * (outer - rng.uniform(0.4, 0.9))
        if r < 0.35:
            scene.things.append(Thing("tree", x, z, size=rng.uniform(0.8, 1.3),
                                      color=_jitter(rng, scene.colors["vegetation"], 15)))
        elif r < 0.6:
            scene.things.append(Thing("light_pole", x, z, size=rng.uniform(5.0, 6.5),
                                      extra={"reach": rng.uniform(2.0, scene.road_half),
                                             "lamp": _pick(rng, [0, 1, 2])}))
        elif r < 0.85:
            scene.things.append(Thing("sign", x, z, size=rng.uniform(0.9, 1.2),
                                      extra={"shape": _pick(rng, ["round", "square", "diamond"])}))
        else:
            scene.things.append(Thing("pole", x, z, size=rng.uniform(6.0, 8.0)))
        z += rng.uniform(10, 25)


def _add_sidewalk_people(rng: np.random.Generator, scene: Scene, side: int) -> None:
    """Pedestrians walking and bicycles parked on one sidewalk."""
    for _ in range(int(rng.integers(0, 4))):
        x = side * (scene.road_half + rng.uniform(0.6, scene.walk_width - 0.6))
        if rng.random() < 0.75:
            scene.things.append(Thing("person", x, rng.uniform(4, 30), vz=rng.choice([-1.3, 1.3]),
                                      size=rng.uniform(1.6, 1.9), color=_pick(rng, CLOTHES),
                                      extra={"legs": _pick(rng, [(40, 40, 50), (60, 70, 110)]),
                                             "phase": rng.uniform(0, 6.28)}))
        else:
            scene.things.append(Thing("bicycle", x, rng.uniform(4, 25),
                                      color=_pick(rng, [(25, 25, 25), (150, 20, 20), (30, 60, 140)])))


def _add_traffic(rng: np.random.Generator, scene: Scene, lanes: int) -> None:
    """Cars and trucks in lanes (those left of the camera's lane may come towards it)."""
    for lane in range(lanes):
        x_lane = -scene.road_half + (lane + 0.5) * scene.lane_width
        oncoming = lanes > 2 and lane < lanes // 2
        z = rng.uniform(7, 20)
        while z < 160:
            truck = rng.random() < 0.2
            # traffic keeps about the camera's pace (never slower in its own lane, so no one is run over)
            own_lane = abs(x_lane - scene.cam_x) < scene.lane_width / 2
            vz = -rng.uniform(8, 14) if oncoming else scene.speed + rng.uniform(0 if own_lane else -2, 2)
            scene.things.append(Thing("truck" if truck else "car", x_lane + rng.uniform(-0.3, 0.3), z,
                                      vz=vz, color=_jitter(rng, _pick(rng, CAR_COLORS), 8),
                                      extra={"oncoming": oncoming}))
            z += rng.uniform(12, 45)


DETAILS = ("full", "coarse")
LIGHTS = ("any", "day", "overcast", "dusk", "night", "fog")  # any: as drawn at random (mostly day)
_LIGHTING = {  # light -> (gain range, tint): how bright and what colour the whole frame is
    "day": ((0.92, 1.08), (1.0, 1.0, 1.0)), "overcast": ((0.8, 0.95), (0.97, 1.0, 1.03)),
    "dusk": ((0.6, 0.8), (1.12, 0.95, 0.85)), "night": ((0.3, 0.42), (0.8, 0.9, 1.25)),
    "fog": ((0.95, 1.05), (1.0, 1.0, 1.02)),
}


def relight(scene: Scene, light: str, rng: np.random.Generator) -> Scene:
    """The same street under another light (``LIGHTS``): what differs between training scenes and
    the clips a model meets later. Its own ``rng``, so the street itself is the one the seed drew."""
    if light not in LIGHTS:
        raise ValueError(f"light must be one of {', '.join(LIGHTS)}, got {light!r}")
    if light != "any":
        (low, high), tint = _LIGHTING[light]
        scene.light, scene.gain = light, rng.uniform(low, high)
        scene.tint = np.array(tint) * rng.uniform(0.95, 1.05, 3)
    return scene


def coarsen(scene: Scene) -> Scene:
    """The ``coarse`` street: road, sidewalk, buildings, vegetation, sky, cars and trucks only.

    Thin and rare classes (poles, lights, signs, persons, riders, bicycles, fences, terrain) need far
    more training than a CPU smoke test has; coarse scenes let a tiny model reach a high mIoU quickly,
    so a short run can check that training really learns.
    """
    scene.things = [th for th in scene.things if th.kind in ("car", "truck")]
    scene.sides = [(side, z0, z1, "building" if kind == "fence" else kind, height, color,
                    scene.road_half + scene.walk_width)
                   for side, z0, z1, kind, height, color, _ in scene.sides]
    scene.colors["terrain"] = scene.colors["walk"]
    scene.coarse = True
    return scene


def make_street(rng: np.random.Generator, detail: str = "full", light: str = "any") -> Scene:
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    scene = make_scene(rng)
    scene = coarsen(scene) if detail == "coarse" else scene
    return relight(scene, light, np.random.default_rng(int(rng.integers(2 ** 31)))) if light != "any" else scene

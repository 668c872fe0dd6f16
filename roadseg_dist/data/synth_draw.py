"""Drawing a synthetic street: a pinhole camera 1.5 m above the road, polygons into image and label.

    render(scene, height, width, t, noise_seed)  ->  (rgb uint8 HxWx3, label uint8 HxW)

Every shape is a polygon filled into the RGB image and, with the same vertices, into the label mask,
so labels match what is drawn exactly. At time ``t`` the camera has driven ``scene.speed * t`` metres
and other vehicles and pedestrians have moved on their own. Thin objects are drawn wider than real
ones when far, so a small model at 64x96 can still learn them.
"""
from __future__ import annotations

import cv2
import numpy as np

from roadseg_dist import labels
from roadseg_dist.data.synth_scene import Scene, Thing

C = labels.CLASS_ID
NEAR, FAR = 1.0, 400.0       # metres: clipping planes of the camera
VISIBLE = {"car": 60.0, "truck": 70.0, "tree": 60.0, "pole": 40.0, "light_pole": 45.0, "sign": 35.0,
           "person": 30.0, "bicycle": 25.0, "rider": 30.0}   # metres
# An object smaller than this on screen is not drawn: (its size in metres, the fewest pixels it may span).
# Small images then show fewer, nearer objects instead of specks no model could learn.
MIN_PIXELS = {"car": (1.85, 9), "truck": (2.5, 9), "tree": (3.4, 8), "pole": (7.0, 12), "light_pole": (2.0, 12),
              "sign": (0.9, 5), "person": (1.75, 12), "bicycle": (1.7, 11), "rider": (2.1, 13)}
SUB = 16                     # cv2 sub-pixel precision (shift=4) so small far shapes keep their form


class Canvas:
    """An RGB float image and its label mask, filled with the same polygons."""

    def __init__(self, height: int, width: int, scene: Scene, t: float):
        self.h, self.w, self.scene, self.t = height, width, scene, t
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.label = np.full((height, width), labels.IGNORE_INDEX, np.uint8)
        self.f = scene.focal * width
        self.cx = width / 2 + scene.yaw * width + 0.6 * np.sin(0.7 * t) * width / 50
        self.cy = scene.horizon * height
        self.cam_z = scene.speed * t
        self.cam_x = scene.cam_x + 0.25 * np.sin(0.4 * t)

    def project(self, x, y, z):
        """World (x right, y up, z ahead; metres) -> pixel (u, v)."""
        z = np.maximum(np.asarray(z, np.float64) - self.cam_z, NEAR)
        u = self.cx + self.f * (np.asarray(x) - self.cam_x) / z
        v = self.cy + self.f * (self.scene.cam_height - np.asarray(y)) / z
        return np.stack(np.broadcast_arrays(u, v), -1)

    def scale(self, z) -> float:
        """Pixels per metre at depth z."""
        return self.f / max(z - self.cam_z, NEAR)

    def fill(self, polys, cls: int | None, color) -> None:
        """Fill pixel polygons into the image and (unless ``cls`` is None) the label mask."""
        pts = [np.round(np.asarray(p) * SUB).astype(np.int32) for p in polys]
        pts = [p for p in pts if len(p) >= 3 and np.abs(p).max() < 2 ** 24]
        if not pts:
            return
        cv2.fillPoly(self.rgb, pts, tuple(float(c) for c in color), cv2.LINE_8, 4)
        if cls is not None:
            cv2.fillPoly(self.label, pts, int(cls), cv2.LINE_8, 4)

    def ground_quad(self, x0, x1, z0, z1, cls, color):
        z0, z1 = max(z0, self.cam_z + NEAR), min(z1, self.cam_z + FAR)
        if z1 <= z0:
            return
        self.fill([self.project([x0, x1, x1, x0], 0, [z0, z0, z1, z1])], cls, color)

    def billboard(self, x, z, shapes, cls, color):
        """Polygons given in metres in a plane facing the camera at (x, z): (dx, y) per vertex."""
        if z - self.cam_z < 2.0 or z - self.cam_z > FAR:
            return
        s = self.scale(z)
        base = self.project(x, 0.0, z)
        polys = [base + np.asarray(p) * [s, -s] for p in shapes]
        self.fill(polys, cls, color)


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _disc(cx, cy, r, n=14):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], -1)


def _shade(color, k):
    return tuple(min(255.0, c * k) for c in color)


def draw_sky_and_ground(cv: Canvas) -> None:
    s = cv.scene
    top, bottom = {"day": ((62, 118, 196), (172, 202, 232)), "overcast": ((150, 156, 166), (204, 206, 210)),
                   "dusk": ((58, 66, 128), (236, 160, 112)), "night": ((8, 10, 28), (40, 44, 70)),
                   "fog": ((196, 198, 200), (214, 215, 216))}[s.light]
    ramp = np.clip(np.arange(cv.h, dtype=np.float32) / max(cv.cy, 1), 0, 1)[:, None, None]
    cv.rgb[:] = np.asarray(top, np.float32) * (1 - ramp) + np.asarray(bottom, np.float32) * ramp
    cv.label[:] = C["sky"]
    horizon = int(np.ceil(cv.cy))
    cv.rgb[horizon:] = s.colors["terrain"]
    cv.label[horizon:] = C["sidewalk"] if s.coarse else C["terrain"]
    outer = s.road_half + s.walk_width
    for side in (-1, 1):
        cv.ground_quad(side * s.road_half, side * outer, -50, FAR + cv.cam_z, C["sidewalk"], s.colors["walk"])
        # the curb: a darker strip, still sidewalk
        cv.ground_quad(side * s.road_half, side * (s.road_half + 0.25), -50, FAR + cv.cam_z, None,
                       _shade(s.colors["walk"], 0.8))
    cv.ground_quad(-s.road_half, s.road_half, -50, FAR + cv.cam_z, C["road"], s.colors["road"])
    # lane markings belong to the road class (as in BDD100K's sem_seg labels)
    lanes = int(round(2 * s.road_half / s.lane_width))
    period, dash = 9.0, 3.0
    first = np.floor(cv.cam_z / period) * period
    for k in range(1, lanes):
        x = -s.road_half + k * s.lane_width
        solid = lanes > 2 and k == lanes // 2
        if solid:
            cv.ground_quad(x - 0.1, x + 0.1, -50, FAR + cv.cam_z, C["road"], s.colors["marking"])
            continue
        for z in np.arange(first, first + 120, period):
            cv.ground_quad(x - 0.08, x + 0.08, z, z + dash, C["road"], s.colors["marking"])
    for side in (-1, 1):  # edge lines
        x = side * (s.road_half - 0.3)
        cv.ground_quad(x - 0.07, x + 0.07, -50, FAR + cv.cam_z, C["road"], s.colors["marking"])


def draw_sides(cv: Canvas) -> None:
    """Facades, vegetation masses and fences along both sides, far to near."""
    items = sorted(cv.scene.sides, key=lambda it: -it[1])
    for side, z0, z1, kind, height, color, x in items:
        z0c, z1c = max(z0, cv.cam_z + NEAR), min(z1, cv.cam_z + FAR)
        if z1c <= z0c:
            continue
        x = side * x
        if kind == "building":
            face = cv.project([x, x, x, x], [0, height, height, 0], [z0c, z0c, z1c, z1c])
            cv.fill([face], C["building"], color)
            # windows: a grid on the facade, image only (windows are part of the building class)
            win = _shade(color, 0.45) if cv.scene.light not in ("dusk", "night") else (200, 180, 110)
            polys = []
            for y in np.arange(2.5, height - 1.0, 3.0):
                for z in np.arange(z0 + 1.0, z1 - 1.5, 3.0):
                    if z < z0c or z + 1.4 > z1c:
                        continue
                    polys.append(cv.project([x] * 4, [y, y + 1.6, y + 1.6, y], [z, z, z + 1.4, z + 1.4]))
            cv.fill(polys, None, win)
        elif kind == "vegetation":
            n = max(2, int((z1c - z0c) / 2.0))
            zs = np.linspace(z0c, z1c, n)
            tops = height * (0.8 + 0.2 * np.sin(zs * 1.7 + side))
            poly = np.concatenate([cv.project(x, tops, zs), cv.project(x, 0.0, zs[::-1])])
            cv.fill([poly], C["vegetation"], color)
        else:  # fence: posts and rails are drawn in a darker tone; the whole band is labelled fence
            face = cv.project([x, x, x, x], [0, height, height, 0], [z0c, z0c, z1c, z1c])
            cv.fill([face], C["fence"], color)
            dark = _shade(color, 0.7)
            posts = [cv.project([x] * 4, [0, height, height, 0], [z, z, z + 0.15, z + 0.15])
                     for z in np.arange(z0c, z1c - 0.15, 2.0)]
            rails = [cv.project([x] * 4, [y, y + 0.12, y + 0.12, y], [z0c, z0c, z1c, z1c])
                     for y in (0.3 * height, 0.85 * height)]
            cv.fill(posts + rails, None, dark)


def thing_position(thing: Thing, t: float) -> tuple[float, float]:
    return thing.x + thing.vx * t, thing.z + thing.vz * t


def at_least(cv: Canvas, z: float, metres: float, pixels: float) -> float:
    """``metres`` widened so it spans at least ``pixels`` at depth z: thin things stay learnable when small."""
    return max(metres, pixels / cv.scale(z))


def draw_thing(cv: Canvas, th: Thing, t: float) -> None:
    x, z = thing_position(th, t)
    s = cv.scene
    pole = s.colors["pole"]
    if th.kind == "tree":
        k = th.size
        trunk = at_least(cv, z, 0.25, 1.5)
        cv.billboard(x, z, [_rect(-trunk, 0, trunk, 2.6 * k)], C["vegetation"], (84, 62, 40))
        crown = [_disc(0, 3.6 * k, 1.7 * k), _disc(-0.8 * k, 3.0 * k, 1.1 * k), _disc(0.8 * k, 3.1 * k, 1.2 * k)]
        cv.billboard(x, z, crown, C["vegetation"], th.color)
        cv.billboard(x, z, [_disc(-0.4 * k, 4.1 * k, 0.6 * k)], None, _shade(th.color, 1.25))
    elif th.kind == "pole":
        r = at_least(cv, z, 0.2, 1.5)
        cv.billboard(x, z, [_rect(-r, 0, r, th.size)], C["pole"], pole)
    elif th.kind == "light_pole":
        h = th.size
        side = -np.sign(x) or 1.0
        reach = th.extra["reach"]
        r, arm = at_least(cv, z, 0.2, 1.5), at_least(cv, z, 0.3, 2.5)
        cv.billboard(x, z, [_rect(-r, 0, r, h), _rect(min(0, side * reach), h - arm, max(0, side * reach), h)],
                     C["pole"], pole)
        # the light hangs from the end of the arm: a big dark housing with one lit lamp
        half = at_least(cv, z, 0.4, 2.5)
        k = half / 0.4
        box = _rect(side * reach - half, h - 2.1 * k, side * reach + half, h - 0.1)
        cv.billboard(x, z, [box], C["traffic light"], (38, 38, 40))
        lamp = th.extra["lamp"]
        lamp_color = [(250, 60, 40), (250, 190, 40), (60, 240, 120)][lamp]
        cy = h - 0.1 - (0.4 + lamp * 0.65) * k
        cv.billboard(x, z, [_disc(side * reach, cy, 0.25 * k, 10)], C["traffic light"], lamp_color)
    elif th.kind == "sign":
        k = th.size
        r = at_least(cv, z, 0.12, 1.2)
        cv.billboard(x, z, [_rect(-r, 0, r, 2.2)], C["pole"], pole)
        shape = th.extra["shape"]
        if shape == "round":
            cv.billboard(x, z, [_disc(0, 2.2 + 0.5 * k, 0.5 * k)], C["traffic sign"], (200, 30, 30))
            cv.billboard(x, z, [_disc(0, 2.2 + 0.5 * k, 0.33 * k)], C["traffic sign"], (235, 235, 235))
        elif shape == "square":
            cv.billboard(x, z, [_rect(-0.45 * k, 2.2, 0.45 * k, 2.2 + 0.9 * k)], C["traffic sign"], (30, 80, 170))
            cv.billboard(x, z, [_rect(-0.1 * k, 2.2 + 0.15 * k, 0.1 * k, 2.2 + 0.75 * k)], C["traffic sign"],
                         (235, 235, 235))
        else:
            d = 0.55 * k
            cv.billboard(x, z, [[(0, 2.2), (d, 2.2 + d), (0, 2.2 + 2 * d), (-d, 2.2 + d)]],
                         C["traffic sign"], (235, 200, 30))
    elif th.kind == "person":
        height = th.size
        draw_person(cv, x, z, height, th.color, th.extra["legs"], th.extra["phase"] + 3 * t, C["person"])
    elif th.kind == "bicycle":
        draw_bicycle(cv, x, z, th.color)
    elif th.kind == "rider":
        k = 1.0
        draw_bicycle(cv, x, z, th.extra["bike"], k)
        draw_person(cv, x, z, 1.7 * k, th.color, (40, 40, 50), th.extra["phase"] + 5 * t, C["rider"], seated=True,
                    hair=(240, 240, 240))  # a white helmet
    elif th.kind in ("car", "truck"):
        draw_vehicle(cv, x, z, th)


def draw_person(cv, x, z, height, shirt, legs, phase, cls, seated=False, hair=(40, 30, 25)):
    k = height / 1.75
    lift = 0.45 * k if seated else 0.0
    swing = 0.15 * k * np.sin(phase) * (0 if seated else 1)
    parts_legs = [[(-0.2 * k, lift), (-0.03 * k, lift), (0.0, 0.9 * k + lift), (-0.22 * k + swing, 0.9 * k + lift)],
                  [(0.03 * k, lift), (0.2 * k, lift), (0.22 * k - swing, 0.9 * k + lift), (0.0, 0.9 * k + lift)]]
    torso = _rect(-0.25 * k, 0.85 * k + lift, 0.25 * k, 1.5 * k + lift)
    arms = [_rect(-0.34 * k, 0.95 * k + lift, -0.22 * k, 1.45 * k + lift),
            _rect(0.22 * k, 0.95 * k + lift, 0.34 * k, 1.45 * k + lift)]
    cv.billboard(x, z, parts_legs, cls, legs)
    cv.billboard(x, z, [torso] + arms, cls, shirt)
    cv.billboard(x, z, [_disc(0, 1.62 * k + lift, 0.14 * k, 10)], cls, (196, 150, 120))
    cv.billboard(x, z, [_rect(-0.15 * k, 1.66 * k + lift, 0.15 * k, 1.8 * k + lift)], cls, hair)


def draw_bicycle(cv, x, z, color, k=1.0):
    wheels = [_disc(-0.55 * k, 0.35 * k, 0.35 * k), _disc(0.55 * k, 0.35 * k, 0.35 * k)]
    cv.billboard(x, z, wheels, C["bicycle"], (30, 30, 30))
    cv.billboard(x, z, [_disc(-0.55 * k, 0.35 * k, 0.2 * k), _disc(0.55 * k, 0.35 * k, 0.2 * k)], C["bicycle"],
                 (95, 95, 100))
    frame = [[(-0.55 * k, 0.35 * k), (0.0, 0.4 * k), (0.45 * k, 0.85 * k), (-0.15 * k, 0.85 * k)],
             _rect(0.4 * k, 0.35 * k, 0.6 * k, 1.0 * k), _rect(-0.3 * k, 0.85 * k, -0.05 * k, 0.95 * k)]
    cv.billboard(x, z, frame, C["bicycle"], color)


def draw_vehicle(cv, x, z, th):
    truck = th.kind == "truck"
    cls = C["truck"] if truck else C["car"]
    w, h, length = (2.5, 3.3, 9.0) if truck else (1.85, 1.5, 4.5)
    body = th.color
    zr = z  # the face nearest the camera
    if zr - cv.cam_z < 2.0 or zr - cv.cam_z > FAR:
        return
    # the visible side face, between the near face and the far end
    if abs(x - cv.cam_x) > w / 2:
        xs = x - np.sign(x - cv.cam_x) * w / 2
        side = cv.project([xs] * 4, [0.25, h, h, 0.25], [zr, zr, zr + length, zr + length])
        cv.fill([side], cls, _shade(body, 0.75))
        wheel_z = (zr + 0.9, zr + length - 0.9)
        cv.fill([cv.project([xs] * 4, [0, 0.65, 0.65, 0], [wz - 0.35, wz - 0.35, wz + 0.35, wz + 0.35])
                 for wz in wheel_z], cls, (22, 22, 24))
    if truck:
        cargo = _rect(-w / 2, 0.4, w / 2, h)
        cv.billboard(x, zr, [cargo], cls, body)
        cv.billboard(x, zr, [_rect(-w / 2, 0.4, w / 2, 0.75)], cls, (45, 45, 48))
        cv.billboard(x, zr, [_rect(-w / 2 + 0.1, 0.0, -w / 2 + 0.55, 0.5), _rect(w / 2 - 0.55, 0.0, w / 2 - 0.1, 0.5)],
                     cls, (22, 22, 24))
        return
    lower = _rect(-w / 2, 0.25, w / 2, 0.95)
    cabin = [(-w / 2 + 0.1, 0.95), (w / 2 - 0.1, 0.95), (w / 2 - 0.3, h), (-w / 2 + 0.3, h)]
    cv.billboard(x, zr, [lower, cabin], cls, body)
    glass = [(-w / 2 + 0.22, 1.0), (w / 2 - 0.22, 1.0), (w / 2 - 0.38, h - 0.08), (-w / 2 + 0.38, h - 0.08)]
    cv.billboard(x, zr, [glass], cls, (40, 48, 60))
    tyres = [_rect(-w / 2 + 0.05, 0.0, -w / 2 + 0.45, 0.35), _rect(w / 2 - 0.45, 0.0, w / 2 - 0.05, 0.35)]
    cv.billboard(x, zr, tyres, cls, (20, 20, 22))
    lamp = (250, 245, 220) if th.extra.get("oncoming") else (200, 20, 20)
    cv.billboard(x, zr, [_rect(-w / 2 + 0.05, 0.7, -w / 2 + 0.4, 0.88), _rect(w / 2 - 0.4, 0.7, w / 2 - 0.05, 0.88)],
                 cls, lamp)
    cv.billboard(x, zr, [_rect(-0.3, 0.45, 0.3, 0.6)], cls, (230, 230, 220))  # number plate


# Texture: per-class noise amplitude, so surfaces are not flat colour (sky smooth, foliage rough).
_NOISE = np.full(256, 4.0, np.float32)
for _name, _amp in {"road": 5, "sidewalk": 4, "building": 4, "vegetation": 10, "terrain": 8, "sky": 2,
                    "fence": 4}.items():
    _NOISE[C[_name]] = _amp


def render(scene: Scene, height: int, width: int, t: float = 0.0, noise_seed: int = 0):
    """Render ``scene`` at time ``t`` (seconds): (rgb uint8 HxWx3, label uint8 HxW)."""
    cv = Canvas(height, width, scene, t)
    draw_sky_and_ground(cv)
    draw_sides(cv)
    # far objects would be a few pixels of noise: street furniture and traffic end at a visible range
    things = [th for th in scene.things if thing_position(th, t)[1] - cv.cam_z < VISIBLE[th.kind]
              and MIN_PIXELS[th.kind][0] * cv.scale(thing_position(th, t)[1]) >= MIN_PIXELS[th.kind][1]]
    things.sort(key=lambda th: -thing_position(th, t)[1])
    for th in things:
        draw_thing(cv, th, t)
    rng = np.random.default_rng(noise_seed)
    rgb = cv.rgb
    # low-frequency shading (patches of light and shadow) plus per-class grain
    low = cv2.resize(rng.normal(0, 1, (4, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    rgb = rgb * (1 + 0.04 * low[..., None])
    rgb = rgb + rng.normal(0, 1, (height, width, 1)).astype(np.float32) * _NOISE[cv.label][..., None]
    # vignette and lighting
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    rgb = rgb * (1 - 0.25 * r2)[..., None] * scene.gain * scene.tint.astype(np.float32)
    if scene.light == "fog":  # everything washed towards the fog's grey: little contrast left
        rgb = 0.45 * rgb + 0.55 * 205.0
    if min(height, width) >= 120:  # soften the polygon edges like a real lens does
        rgb = cv2.GaussianBlur(rgb, (3, 3), 0.6)
    return np.clip(rgb, 0, 255).astype(np.uint8), cv.label

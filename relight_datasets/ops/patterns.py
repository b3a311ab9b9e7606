"""Procedural shadow patterns: the shadow an occluder (blinds, a window, leaves, a fence...) casts on a subject.

A pattern is a float32 tensor shaped ``1 x 1 x H x W`` with values in [0, 1]: 1 = fully in shadow, 0 = lit. It is
unblurred; the caller blurs it and applies an opacity.

Coordinates. Pixel centres map to normalised image coordinates ``x, y`` (the short side spans [-1, 1], the long side
proportionally more; ``y`` points down). These are translated, scaled and rotated into *pattern coordinates*
``u, v``: ``x' = (x - t_x) / scale``, ``y' = (y - t_y) / scale``, ``u = cos(r) x' + sin(r) y'``,
``v = -sin(r) x' + cos(r) y'``, where ``r = rotation_deg`` (clockwise on screen, since ``y`` points down), ``t_x, t_y``
are ``translate`` times the image width and height (in normalised units) and ``scale > 1`` magnifies the pattern.
Each family draws its primitives in ``u, v``; lengths and frequencies in params are in pattern units. Edges are
anti-aliased analytically with a one-pixel box filter, so a pattern rendered at two resolutions agrees up to sampling.

Randomness. Everything is drawn from the ``torch.Generator`` given to :func:`render_pattern`. Families with many
primitives (noise tables, Voronoi sites, leaves) store a derived integer ``seed`` in their params and expand it with a
private generator, so :func:`render_pattern_from_params` re-renders any drawn pattern exactly from its params.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import rng

PATTERN_FAMILIES: tuple[str, ...] = (
    "venetian_blinds",
    "window_frame",
    "perlin_noise",
    "voronoi",
    "lattice",
    "curtain_folds",
    "fence",
    "foliage",
    "clouds",
    "screen",
)

_TABLE_SIZE = 128
"""Side of the random tables (noise gradients, Voronoi sites, leaves); they repeat every this many lattice cells."""

_MAX_TRANSLATE = 0.25
"""Largest translation drawn, as a fraction of the image size along each axis."""


# ----------------------------------------------------------------------------------------------------------------
# Random draws and the coordinate frame
# ----------------------------------------------------------------------------------------------------------------


class _Draw:
    """Scalar draws from one generator, returned as plain Python numbers (so params stay JSON-serialisable)."""

    def __init__(self, generator: torch.Generator) -> None:
        self._generator = generator

    def uniform(self, low: float, high: float) -> float:
        """One float from ``[low, high)``."""
        return rng.uniform(self._generator, low, high)

    def log_uniform(self, low: float, high: float) -> float:
        """One float from ``[low, high)`` whose logarithm is uniform."""
        return math.exp(self.uniform(math.log(low), math.log(high)))

    def integer(self, low: int, high: int) -> int:
        """One integer from ``[low, high]`` (both ends included)."""
        return rng.randint(self._generator, low, high)

    def chance(self, p: float) -> bool:
        """True with probability ``p``."""
        return self.uniform(0.0, 1.0) < p

    def seed(self) -> int:
        """A seed for a private generator (families whose primitives are too many to list in params)."""
        return self.integer(0, 2**31 - 2)


def _private_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (never the global one)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


@dataclass(frozen=True)
class _Frame:
    """Pattern coordinates ``u, v`` of every pixel centre (``H x W`` float32) and the pixel size in pattern units.

    ``affine`` maps pattern coordinates back to pixels: ``col = a[0] + a[1] u + a[2] v``, ``row = a[3] + a[4] u +
    a[5] v`` (pixel centres at integers).
    """

    u: torch.Tensor
    v: torch.Tensor
    pixel: float
    affine: tuple[float, float, float, float, float, float]

    @property
    def device(self) -> torch.device:
        return self.u.device

    def to_pixel(self, us: list[float], vs: list[float]) -> tuple[list[float], list[float]]:
        """Pixel ``(columns, rows)`` of points given in pattern coordinates."""
        a = self.affine
        points = list(zip(us, vs, strict=True))
        return [a[0] + a[1] * u + a[2] * v for u, v in points], [a[3] + a[4] * u + a[5] * v for u, v in points]


def _make_frame(
    height: int, width: int, rotation_deg: float, scale: float, translate: list[float], device: torch.device | str
) -> _Frame:
    """Map pixel centres to pattern coordinates (see the module docstring for the convention)."""
    short = min(height, width)
    shift_x, shift_y = translate[0] * 2.0 * width / short, translate[1] * 2.0 * height / short
    xs = (torch.arange(width, device=device, dtype=torch.float32) + (0.5 - width / 2)) * (2.0 / short)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + (0.5 - height / 2)) * (2.0 / short)
    xs = (xs - shift_x) / scale
    ys = (ys - shift_y) / scale
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    u = c * xs[None, :] + s * ys[:, None]
    v = c * ys[:, None] - s * xs[None, :]
    k = short / 2 * scale  # pixels per pattern unit
    affine = (
        short / 2 * shift_x + width / 2 - 0.5,
        k * c,
        -k * s,
        short / 2 * shift_y + height / 2 - 0.5,
        k * s,
        k * c,
    )
    return _Frame(u=u, v=v, pixel=2.0 / (short * scale), affine=affine)


# ----------------------------------------------------------------------------------------------------------------
# Anti-aliased primitives (all lengths in pattern units; ``pixel`` is the box-filter width)
# ----------------------------------------------------------------------------------------------------------------


def _coverage_from_sdf(sdf: torch.Tensor, pixel: float) -> torch.Tensor:
    """Pixel coverage from a signed distance (pattern units, positive inside the shadow), linear over one pixel."""
    return (0.5 + sdf / pixel).clamp(0.0, 1.0)


def _band(x: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor, pixel: float) -> torch.Tensor:
    """Exact fraction of the interval ``[x - pixel/2, x + pixel/2]`` that lies inside ``[low, high]``."""
    half = pixel / 2
    inside = torch.clamp(x + half, max=high) - torch.clamp(x - half, min=low)
    return (inside / pixel).clamp(0.0, 1.0)


def _stripes(x: torch.Tensor, period: float, duty: float, pixel: float) -> torch.Tensor:
    """Exact box-filtered coverage of the stripes ``frac(x / period) < duty`` (stripe ``k`` spans ``[kP, (k+duty)P)``).

    Uses the closed-form integral of the square wave, so the mean is ``duty`` whatever the pixel size (no aliasing).
    """

    def integral(t: torch.Tensor) -> torch.Tensor:  # length of shadow in [0, t], in periods
        q = t / period
        k = torch.floor(q)
        return k * duty + torch.clamp(q - k, max=duty)

    half = pixel / 2
    return ((integral(x + half) - integral(x - half)) * (period / pixel)).clamp(0.0, 1.0)


def _union(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Coverage of the union of two independent shadow layers."""
    return 1.0 - (1.0 - a) * (1.0 - b)


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------------------------


def _wrap(x: torch.Tensor, period: int) -> torch.Tensor:
    """``x mod period`` for float tensors holding integers."""
    return x - period * torch.floor(x / period)


def _corner_table(gradients: torch.Tensor) -> torch.Tensor:
    """``2 x G x G`` periodic gradients -> ``8 x G^2``: for every cell the gradients at its four corners (``(i, j)``,
    ``(i+1, j)``, ``(i, j+1)``, ``(i+1, j+1)``, x then y), so one lookup per point fetches all of them."""
    right = torch.roll(gradients, -1, dims=2)
    below = torch.roll(gradients, -1, dims=1)
    diagonal = torch.roll(right, -1, dims=1)
    return torch.cat([gradients, right, below, diagonal]).reshape(8, -1)


def _gradient_noise(x: torch.Tensor, y: torch.Tensor, corners: torch.Tensor, g: int) -> torch.Tensor:
    """Perlin gradient noise at ``(x, y)`` (lattice units, same shape; both are overwritten) with period ``g``.

    ``corners`` comes from :func:`_corner_table`. Returns values roughly in [-0.7, 0.7], zero on lattice points.
    Written with in-place operations: at 512 x 512 fresh allocations (page faults) cost more than the arithmetic.
    """
    shape = x.shape
    x, y = x.reshape(-1), y.reshape(-1)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x.sub_(x0), y.sub_(y0)  # position inside the cell, [0, 1)
    flat = _wrap(y0, g).mul_(g).add_(_wrap(x0, g)).long()
    gx00, gy00, gx10, gy10, gx01, gy01, gx11, gy11 = corners.index_select(1, flat)
    fx1, fy1 = fx - 1, fy - 1
    n00 = gx00.mul_(fx).addcmul_(gy00, fy)  # dot products with the offsets to each corner
    n10 = gx10.mul_(fx1).addcmul_(gy10, fy)
    n01 = gx01.mul_(fx).addcmul_(gy01, fy1)
    n11 = gx11.mul_(fx1).addcmul_(gy11, fy1)
    wx = (fx * 6).sub_(15).mul_(fx).add_(10).mul_(fx).mul_(fx).mul_(fx)  # quintic fade 6t^5 - 15t^4 + 10t^3
    wy = (fy * 6).sub_(15).mul_(fy).add_(10).mul_(fy).mul_(fy).mul_(fy)
    top = n00.lerp_(n10, wx)
    bottom = n01.lerp_(n11, wx)
    return top.lerp_(bottom, wy).reshape(shape)


def _fbm(frame: _Frame, seed: int, octaves: int, base_frequency: float, persistence: float, lacunarity: float):
    """Fractal sum of ``octaves`` gradient-noise octaves (``H x W``), normalised by the total amplitude.

    ``base_frequency`` is in lattice cells per pattern unit; every octave gets its own random rotation and offset so
    lattice axes do not line up across octaves.
    """
    generator = _private_generator(seed)
    g = _TABLE_SIZE
    angles = torch.rand(1, g, g, generator=generator, device="cpu", dtype=torch.float64) * (2 * math.pi)
    corners = _corner_table(torch.cat([torch.cos(angles), torch.sin(angles)]))
    corners = corners.to(device=frame.device, dtype=torch.float32)
    octave_angles = torch.rand(octaves, generator=generator, device="cpu", dtype=torch.float64) * (2 * math.pi)
    offsets = torch.rand(octaves, 2, generator=generator, device="cpu", dtype=torch.float64) * g
    octave_angles, offsets = octave_angles.tolist(), offsets.tolist()
    total = torch.zeros_like(frame.u)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        frequency = base_frequency * lacunarity**octave
        c, s = math.cos(octave_angles[octave]) * frequency, math.sin(octave_angles[octave]) * frequency
        x = (frame.u * c).add_(frame.v, alpha=-s).add_(offsets[octave][0])
        y = (frame.u * s).add_(frame.v, alpha=c).add_(offsets[octave][1])
        total.add_(_gradient_noise(x, y, corners, g), alpha=amplitude)
        norm += amplitude
        amplitude *= persistence
    return total.div_(norm)


def _soft_threshold(field: torch.Tensor, coverage: float, softness: float) -> torch.Tensor:
    """Smooth step of ``field`` at its ``1 - coverage`` quantile, so about ``coverage`` of the pixels are in shadow.

    ``softness`` is the half-width of the transition in units of the field's standard deviation.
    """
    flat = field.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 65536)]  # the quantile of a regular subsample is plenty accurate
    threshold = torch.quantile(sample, 1.0 - coverage)
    half_width = softness * field.std() + 1e-6
    return _smoothstep(0.5 + (field - threshold) / (2 * half_width))


_NEIGHBOURS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _cell_base(
    qx: torch.Tensor, qy: torch.Tensor, g: int, wrap: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lattice cell of each point ``(qx, qy)`` (cell units, ``H x W``) and its flat index in a bordered table.

    With ``wrap`` cell indices are taken modulo ``g``; without it they are clamped to the table (points outside it
    then see cells at its edge, which are far away, so distance-based shapes ignore them). Returns ``(bx, by, base)``:
    the cell's integer coordinates (float, ``H x W``) and the flat index (long, ``H x W``) into a ``(g+2)^2`` table
    from :func:`_bordered_table`.
    """
    bx, by = torch.floor(qx), torch.floor(qy)
    if wrap:
        ix, iy = _wrap(bx, g), _wrap(by, g)
    else:
        ix, iy = bx.clamp(0, g - 1), by.clamp(0, g - 1)
    return bx, by, ((iy + 1) * (g + 2) + (ix + 1)).long()


def _gather_cells(
    table: torch.Tensor, base: torch.Tensor, g: int, neighbours: list[tuple[int, int]] = _NEIGHBOURS
) -> torch.Tensor:
    """Values (``C x N x H x W``) of the cells at ``neighbours`` offsets from the cells ``base`` (``H x W``) in a
    bordered ``C x (g+2)^2`` table (offsets of at most one cell)."""
    row = g + 2
    offsets = torch.tensor([dy * row + dx for dx, dy in neighbours], device=base.device, dtype=base.dtype)
    flat = (base.reshape(1, -1) + offsets[:, None]).reshape(-1)
    return table.index_select(1, flat).reshape(table.shape[0], len(neighbours), *base.shape)


def _bordered_table(values: torch.Tensor, wrap: bool) -> torch.Tensor:
    """``C x g x g`` per-cell values -> ``C x (g+2)^2`` with a one-cell border, periodic (``wrap``) or edge-repeated.

    Values that are positions relative to their cell stay valid in the border either way.
    """
    if wrap:
        padded = torch.cat([values[:, -1:], values, values[:, :1]], dim=1)
        padded = torch.cat([padded[:, :, -1:], padded, padded[:, :, :1]], dim=2)
    else:
        padded = torch.cat([values[:, :1], values, values[:, -1:]], dim=1)
        padded = torch.cat([padded[:, :, :1], padded, padded[:, :, -1:]], dim=2)
    return padded.reshape(values.shape[0], -1)


# ----------------------------------------------------------------------------------------------------------------
# Families. ``_draw_<family>(draw, scale)`` returns the family-specific params; ``_render_<family>(frame, params)``
# returns the ``H x W`` pattern from them.
# ----------------------------------------------------------------------------------------------------------------


def _draw_venetian_blinds(draw: _Draw, scale: float) -> dict:
    slats = draw.integer(5, 16)
    return {"num_slats": slats, "period": 2.0 / (scale * slats), "duty_cycle": draw.uniform(0.3, 0.65)}


def _render_venetian_blinds(frame: _Frame, p: dict) -> torch.Tensor:
    """Slats parallel to the ``u`` axis: shadow where ``frac(v / period) < duty_cycle``.

    ``num_slats`` (informational) is the number of slats across the image's short side.
    """
    return _stripes(frame.v, p["period"], p["duty_cycle"], frame.pixel)


def _draw_window_frame(draw: _Draw, scale: float) -> dict:
    columns, rows = draw.integer(1, 3), draw.integer(1, 3)
    pane_width, pane_height = draw.uniform(0.45, 0.95), draw.uniform(0.5, 1.1)
    outer_wall = draw.chance(0.5)
    if outer_wall:  # the whole window must span most of the image, or the wall's shadow would cover nearly all of it
        pane_width = max(pane_width, 1.4 / (scale * columns))
        pane_height = max(pane_height, 1.6 / (scale * rows))
    return {
        "columns": columns,
        "rows": rows,
        "pane_width": pane_width,
        "pane_height": pane_height,
        "bar_width": draw.uniform(0.04, 0.12),
        "shear": draw.uniform(-0.35, 0.35),
        "outer_wall": outer_wall,
    }


def _render_window_frame(frame: _Frame, p: dict) -> torch.Tensor:
    """Mullions and muntins of a ``columns x rows`` window, bars centred on the pane edges; the light patch is sheared
    by ``shear`` (``u += shear * v``). With ``outer_wall`` everything outside the window is in shadow; without it the
    bar grid repeats (a wall of windows)."""
    u = frame.u + p["shear"] * frame.v
    half_w, half_h = p["columns"] * p["pane_width"] / 2, p["rows"] * p["pane_height"] / 2
    bar = p["bar_width"]
    vertical = _stripes(u + half_w + bar / 2, p["pane_width"], bar / p["pane_width"], frame.pixel)
    horizontal = _stripes(frame.v + half_h + bar / 2, p["pane_height"], bar / p["pane_height"], frame.pixel)
    pattern = _union(vertical, horizontal)
    if p["outer_wall"]:
        inside = _band(u, -half_w, half_w, frame.pixel) * _band(frame.v, -half_h, half_h, frame.pixel)
        pattern = _union(pattern, 1.0 - inside)
    return pattern


def _draw_perlin_noise(draw: _Draw, scale: float) -> dict:
    base = draw.uniform(1.5, 4.0)
    octaves = min(draw.integer(3, 5), 1 + int(math.log2(48.0 / base)))  # finest octave <= 48 cells per unit
    return {
        "seed": draw.seed(),
        "octaves": octaves,
        "base_frequency": base,
        "persistence": draw.uniform(0.4, 0.65),
        "lacunarity": 2.0,
        "coverage": draw.uniform(0.3, 0.6),
        "softness": draw.uniform(0.03, 0.25),
    }


def _render_perlin_noise(frame: _Frame, p: dict) -> torch.Tensor:
    """fBm gradient noise (``base_frequency`` cells per pattern unit), softly thresholded to about ``coverage``."""
    field = _fbm(frame, p["seed"], p["octaves"], p["base_frequency"], p["persistence"], p["lacunarity"])
    return _soft_threshold(field, p["coverage"], p["softness"])


def _draw_clouds(draw: _Draw, scale: float) -> dict:
    return {
        "seed": draw.seed(),
        "octaves": draw.integer(3, 5),
        "base_frequency": draw.uniform(0.45, 0.9),
        "persistence": draw.uniform(0.4, 0.55),
        "lacunarity": 2.0,
        "coverage": draw.uniform(0.25, 0.6),
        "softness": draw.uniform(0.35, 0.8),
    }


def _render_clouds(frame: _Frame, p: dict) -> torch.Tensor:
    """Low-frequency fBm with a wide soft threshold: a few large blobs with soft edges."""
    return _render_perlin_noise(frame, p)


def _draw_voronoi(draw: _Draw, scale: float) -> dict:
    return {
        "seed": draw.seed(),
        "cell_size": draw.uniform(0.22, 0.5),
        "jitter": draw.uniform(0.5, 0.9),
        "mode": "borders" if draw.chance(0.5) else "cells",
        "border_width": draw.uniform(0.08, 0.22),
        "fill_fraction": draw.uniform(0.35, 0.6),
    }


def _render_voronoi(frame: _Frame, p: dict) -> torch.Tensor:
    """Voronoi cells of one jittered site per lattice cell (``cell_size`` pattern units, sites within ``jitter``).

    ``mode == "borders"``: shadow on the cell borders, ``border_width`` (fraction of ``cell_size``) thick.
    ``mode == "cells"``: a random ``fill_fraction`` of the cells is in shadow.
    """
    generator = _private_generator(p["seed"])
    g = _TABLE_SIZE
    jitter = torch.rand(2, g, g, generator=generator, device="cpu", dtype=torch.float32) - 0.5
    sites = 0.5 + p["jitter"] * jitter  # site in its cell, cell units
    shaded = (torch.rand(1, g, g, generator=generator, device="cpu", dtype=torch.float32) < p["fill_fraction"]).float()
    table = _bordered_table(torch.cat([sites, shaded]), wrap=True).to(frame.device)
    size = p["cell_size"]
    qx, qy = frame.u / size, frame.v / size
    bx, by, base = _cell_base(qx, qy, g, wrap=True)
    # Pass 1: the 9 candidate sites (cell units), one neighbour cell at a time, and the nearest one. In-place
    # operations throughout: at 512 x 512 fresh allocations (page faults) cost more than the arithmetic.
    candidates = []
    best_d2 = torch.full_like(qx, math.inf)
    best_x, best_y, best_shade = torch.zeros_like(qx), torch.zeros_like(qx), torch.zeros_like(qx)
    for dx, dy in _NEIGHBOURS:
        sx, sy, shade = _gather_cells(table, base, g, [(dx, dy)])[:, 0]
        sx.add_(bx).add_(dx)
        sy.add_(by).add_(dy)
        d2 = (sx - qx).square_().add_((sy - qy).square_())
        candidates.append((sx, sy, d2, shade))
        closer = d2 < best_d2
        for best, value in ((best_d2, d2), (best_x, sx), (best_y, sy), (best_shade, shade)):
            torch.where(closer, value, best, out=best)
    # Pass 2: distance to the cell border = distance to the closest bisector between the nearest site and another.
    distance = torch.full_like(qx, math.inf)
    for sx, sy, d2, shade in candidates:
        separation = (sx - best_x).square_().add_((sy - best_y).square_()).sqrt_()
        ignore = separation < 1e-6  # the nearest site itself
        if p["mode"] == "cells":
            ignore |= shade == best_shade  # borders between two cells of the same shade are invisible
        to_bisector = d2.sub_(best_d2).div_(separation.mul_(2).clamp_(min=1e-6)).masked_fill_(ignore, math.inf)
        torch.minimum(distance, to_bisector, out=distance)
    distance = distance * size
    if p["mode"] == "cells":
        sdf = torch.where(best_shade > 0.5, distance, -distance)
    else:
        sdf = p["border_width"] * size / 2 - distance
    return _coverage_from_sdf(sdf, frame.pixel)


def _draw_lattice(draw: _Draw, scale: float) -> dict:
    return {
        "period": draw.uniform(0.2, 0.45),
        "bar_fraction": draw.uniform(0.12, 0.3),
        "crossing_angle_deg": draw.uniform(60.0, 120.0),
        "phase": draw.uniform(0.0, 1.0),
    }


def _render_lattice(frame: _Frame, p: dict) -> torch.Tensor:
    """Trellis: two families of bars at ``+-crossing_angle_deg / 2`` from the ``u`` axis, ``period`` apart,
    ``bar_fraction`` of the period thick; ``phase`` (periods) shifts the second family."""
    half = math.radians(p["crossing_angle_deg"]) / 2
    period, duty = p["period"], p["bar_fraction"]
    layers = []
    for sign, phase in ((1.0, 0.0), (-1.0, p["phase"])):
        normal_u, normal_v = -math.sin(sign * half), math.cos(sign * half)  # normal of a bar along angle sign*half
        across = frame.u * normal_u + frame.v * normal_v
        layers.append(_stripes(across + (phase + duty / 2) * period, period, duty, frame.pixel))
    return _union(layers[0], layers[1])


def _draw_curtain_folds(draw: _Draw, scale: float) -> dict:
    frequency = draw.uniform(1.0, 3.0)
    modulation_frequency = draw.uniform(0.15, 0.6)
    return {
        "fold_frequency": frequency,
        "modulation_frequency": modulation_frequency,
        "modulation_depth": min(draw.uniform(0.5, 2.5), 0.6 * frequency / modulation_frequency),
        "second_ratio": draw.uniform(1.5, 2.5),
        "second_amplitude": draw.uniform(0.2, 0.5),
        "taper": draw.uniform(-0.2, 0.2),
        "phases": [draw.uniform(0.0, 2 * math.pi) for _ in range(3)],
        "contrast": draw.uniform(1.0, 1.4),
        "gamma": draw.log_uniform(0.6, 1.6),
    }


def _render_curtain_folds(frame: _Frame, p: dict) -> torch.Tensor:
    """Smooth vertical folds (along ``v``): a frequency-modulated sinusoid in ``u`` (``fold_frequency`` folds per
    pattern unit, its phase wobbling by ``modulation_depth`` radians at ``modulation_frequency``) plus a weaker
    harmonic; ``taper`` makes the folds fan out along ``v``. Values span [0, 1] continuously."""
    two_pi = 2 * math.pi
    phase_fold, phase_mod, phase_second = p["phases"]
    uu = frame.u * (1.0 + p["taper"] * frame.v)
    wobble = p["modulation_depth"] * torch.sin(two_pi * p["modulation_frequency"] * uu + phase_mod)
    fold = torch.sin(two_pi * p["fold_frequency"] * uu + wobble + phase_fold)
    ratio = p["second_ratio"]
    second = torch.sin(two_pi * p["fold_frequency"] * ratio * uu + ratio * wobble + phase_second)
    folds = (fold + p["second_amplitude"] * second) / (1.0 + p["second_amplitude"])
    return _smoothstep(0.5 + 0.5 * p["contrast"] * folds) ** p["gamma"]


def _draw_fence(draw: _Draw, scale: float) -> dict:
    if draw.chance(0.5):
        rails = [draw.uniform(-0.2, 0.6)]
    else:
        first = draw.uniform(-0.5, 0.2)
        rails = [first, first + draw.uniform(0.4, 0.9)]
    has_top = draw.chance(0.5)
    return {
        "picket_period": draw.uniform(0.18, 0.45),
        "picket_fraction": draw.uniform(0.35, 0.7),
        "rails": rails,
        "rail_width": draw.uniform(0.05, 0.14),
        "has_top": has_top,
        "top": min(rails) - draw.uniform(0.25, 0.6),
        "tip_height": draw.uniform(0.0, 0.15),
    }


def _render_fence(frame: _Frame, p: dict) -> torch.Tensor:
    """Pickets along ``v`` (centred on ``u = k * picket_period``, ``picket_fraction`` of the period wide) and
    horizontal rails at the ``v`` positions in ``rails``. With ``has_top`` the pickets end at ``v = top`` (smaller
    ``v`` is up) with pointed tips ``tip_height`` tall."""
    period, duty = p["picket_period"], p["picket_fraction"]
    pickets = _stripes(frame.u + duty * period / 2, period, duty, frame.pixel)
    if p["has_top"]:
        off_axis = (frame.u - period * torch.round(frame.u / period)).abs() / (duty * period / 2)
        edge = p["top"] - p["tip_height"] * (1.0 - off_axis.clamp(max=1.0))
        pickets = pickets * _band(frame.v, edge, math.inf, frame.pixel)
    pattern = pickets
    half = p["rail_width"] / 2
    for rail in p["rails"]:
        pattern = _union(pattern, _band(frame.v, rail - half, rail + half, frame.pixel))
    return pattern


def _draw_screen(draw: _Draw, scale: float) -> dict:
    return {"mesh_period": draw.uniform(0.025, 0.06), "wire_fraction": draw.uniform(0.15, 0.35)}


def _render_screen(frame: _Frame, p: dict) -> torch.Tensor:
    """Insect screen: two orthogonal families of wires, ``mesh_period`` apart, ``wire_fraction`` of it thick."""
    period, duty = p["mesh_period"], p["wire_fraction"]
    return _union(_stripes(frame.u, period, duty, frame.pixel), _stripes(frame.v, period, duty, frame.pixel))


def _draw_foliage(draw: _Draw, scale: float) -> dict:
    return {
        "seed": draw.seed(),
        "num_branches": draw.integer(2, 4),
        "leaf_size": draw.uniform(0.07, 0.12),
        "branch_width": draw.uniform(0.025, 0.055),
        "leaf_density": draw.uniform(0.7, 0.95),
        "cluster_radius": draw.uniform(0.25, 0.45),
    }


_LEAF_ASPECT = 0.45
"""Semi-minor / semi-major axis of a leaf."""


def _foliage_skeleton(p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch segments and leaf clusters drawn from ``p["seed"]`` (pattern units, float32 on the CPU).

    Returns ``segments`` (``S x 6``: start xy, end xy, half-width at start and at end) and ``clusters`` (``K x 3``:
    centre xy, radius). Each branch enters from a circle of radius 1.7 heading roughly through the centre, in three
    wobbling steps, and grows twigs; clusters sit along the inner steps and at twig and branch ends.
    """
    draw = _Draw(_private_generator(p["seed"]))
    half_width, radius = p["branch_width"] / 2, p["cluster_radius"]
    segments: list[list[float]] = []
    clusters: list[list[float]] = []
    for _ in range(p["num_branches"]):
        angle = draw.uniform(0.0, 2 * math.pi)
        x, y = 1.7 * math.cos(angle), 1.7 * math.sin(angle)
        heading = math.atan2(draw.uniform(-0.5, 0.5) - y, draw.uniform(-0.5, 0.5) - x)
        step = draw.uniform(0.55, 0.8)
        for k in range(3):
            heading += draw.uniform(-0.35, 0.35)
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            w0, w1 = half_width * (1 - 0.25 * k), half_width * (1 - 0.25 * (k + 1))
            segments.append([x, y, nx, ny, w0, w1])
            if k >= 1:
                t = draw.uniform(0.2, 1.0)
                clusters.append([x + t * (nx - x), y + t * (ny - y), radius * draw.uniform(0.7, 1.1)])
                if draw.chance(0.8):  # a twig from the middle of this step
                    side = 1.0 if draw.chance(0.5) else -1.0
                    twig_heading = heading + side * draw.uniform(0.5, 1.0)
                    length = draw.uniform(0.2, 0.45)
                    mx, my = (x + nx) / 2, (y + ny) / 2
                    tx, ty = mx + length * math.cos(twig_heading), my + length * math.sin(twig_heading)
                    segments.append([mx, my, tx, ty, 0.6 * w1, 0.3 * w1])
                    clusters.append([tx, ty, radius * draw.uniform(0.6, 1.0)])
            x, y = nx, ny
        clusters.append([x, y, radius * draw.uniform(0.8, 1.2)])
    return (torch.tensor(segments, device="cpu", dtype=torch.float32),
            torch.tensor(clusters, device="cpu", dtype=torch.float32))


def _render_foliage(frame: _Frame, p: dict) -> torch.Tensor:
    """Branches (tapered segments) carrying clusters of leaf ellipses.

    Leaves sit one per lattice cell (cells ``1.2 * leaf_size`` wide, semi-major axis up to ``leaf_size``), present in
    a ``leaf_density`` fraction of the cells near a cluster centre and pointing away from it; each pixel only looks
    at the leaves of its 3 x 3 neighbouring cells.
    """
    segments, clusters = _foliage_skeleton(p)
    generator = _private_generator(p["seed"] + 1)
    g = _TABLE_SIZE
    cell = 1.2 * p["leaf_size"]

    # Leaf table (g x g cells centred on the pattern origin): centre, orientation, axes; absent leaves are moved far.
    index = torch.arange(g, device="cpu", dtype=torch.float32) - g // 2
    jitter = 0.5 + 0.7 * (torch.rand(2, g, g, generator=generator, device="cpu", dtype=torch.float32) - 0.5)
    centre_x = (index[None, :] + jitter[0]) * cell
    centre_y = (index[:, None] + jitter[1]) * cell
    to_x = centre_x[..., None] - clusters[:, 0]
    to_y = centre_y[..., None] - clusters[:, 1]
    reach = torch.sqrt(to_x**2 + to_y**2) / clusters[:, 2]
    closeness, nearest = reach.min(dim=-1, keepdim=True)
    random = torch.rand(4, g, g, generator=generator, device="cpu", dtype=torch.float32)
    present = (closeness[..., 0] < 1.0 - 0.35 * random[0]) & (random[1] < p["leaf_density"])
    angle = torch.atan2(to_y.gather(-1, nearest), to_x.gather(-1, nearest))[..., 0] + 1.2 * (random[2] - 0.5)
    semi_major = p["leaf_size"] * (0.75 + 0.25 * random[3])
    far = torch.full_like(centre_x, 1e4)
    leaves = torch.stack(
        [
            torch.where(present, centre_x, far),
            torch.where(present, centre_y, far),
            torch.cos(angle) / semi_major,
            torch.sin(angle) / semi_major,
        ]
    )
    table = _bordered_table(leaves, wrap=False).to(frame.device)
    u, v = frame.u, frame.v
    _, _, base = _cell_base(u / cell + g // 2, v / cell + g // 2, g, wrap=False)
    ellipse = torch.full_like(u, math.inf)  # squared normalised radius in the nearest leaf: 1 on its outline
    for neighbour in _NEIGHBOURS:  # one cell at a time, in place: keeps temporaries few and H x W
        lx, ly, major_x, major_y = _gather_cells(table, base, g, [neighbour])[:, 0]
        dx, dy = lx.neg_().add_(u), ly.neg_().add_(v)  # offset from the leaf centre
        along = (dx * major_x).addcmul_(dy, major_y)  # in semi-major axes
        across = dy.mul_(major_x).sub_(dx.mul_(major_y)).mul_(1.0 / _LEAF_ASPECT)  # in semi-minor axes
        torch.minimum(ellipse, along.square_().add_(across.square_()), out=ellipse)
    ellipse = torch.sqrt(ellipse)
    sdf = (1.0 - ellipse) * (_LEAF_ASPECT * 0.875 * p["leaf_size"])  # approximate distance, for anti-aliasing

    # Branches: tapered segments, each evaluated only inside its bounding box in pixels.
    height, width = u.shape
    for ax, ay, bx, by, w0, w1 in segments.tolist():
        cols, rows = frame.to_pixel([ax, bx], [ay, by])
        margin = max(w0, w1) / frame.pixel + 2
        c0, c1 = max(0, math.floor(min(cols) - margin)), min(width, math.ceil(max(cols) + margin) + 1)
        r0, r1 = max(0, math.floor(min(rows) - margin)), min(height, math.ceil(max(rows) + margin) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        px, py = u[r0:r1, c0:c1] - ax, v[r0:r1, c0:c1] - ay
        ex, ey = bx - ax, by - ay
        t = ((px * ex + py * ey) / max(ex * ex + ey * ey, 1e-12)).clamp(0.0, 1.0)
        rx, ry = px - t * ex, py - t * ey
        branch = w0 + t * (w1 - w0) - torch.sqrt(rx * rx + ry * ry)
        sdf[r0:r1, c0:c1] = torch.maximum(sdf[r0:r1, c0:c1], branch)
    return _coverage_from_sdf(sdf, frame.pixel)


_Renderer = Callable[[_Frame, dict], torch.Tensor]
_Drawer = Callable[[_Draw, float], dict]

_FAMILIES: dict[str, tuple[_Drawer, _Renderer, tuple[float, float]]] = {
    # family: (draw params, render, rotation range in degrees: any angle, or near upright where the name implies it)
    "venetian_blinds": (_draw_venetian_blinds, _render_venetian_blinds, (0.0, 360.0)),
    "window_frame": (_draw_window_frame, _render_window_frame, (0.0, 360.0)),
    "perlin_noise": (_draw_perlin_noise, _render_perlin_noise, (0.0, 360.0)),
    "voronoi": (_draw_voronoi, _render_voronoi, (0.0, 360.0)),
    "lattice": (_draw_lattice, _render_lattice, (-20.0, 20.0)),  # bars stay diagonal in the image
    "curtain_folds": (_draw_curtain_folds, _render_curtain_folds, (-30.0, 30.0)),
    "fence": (_draw_fence, _render_fence, (-30.0, 30.0)),
    "foliage": (_draw_foliage, _render_foliage, (0.0, 360.0)),
    "clouds": (_draw_clouds, _render_clouds, (0.0, 360.0)),
    "screen": (_draw_screen, _render_screen, (0.0, 360.0)),
}
assert tuple(_FAMILIES) == PATTERN_FAMILIES


def _check_family(family: str) -> None:
    if family not in _FAMILIES:
        raise ValueError(f"unknown pattern family {family!r}; valid families: {', '.join(PATTERN_FAMILIES)}")


def render_pattern_from_params(
    params: dict, height: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Render the pattern described by ``params`` (as returned by :func:`render_pattern`) at ``height x width``.

    Returns a float32 tensor shaped ``1 x 1 x height x width`` with values in [0, 1] (1 = shadow). Deterministic:
    the same params give the same pattern, and the pattern does not depend on the resolution beyond sampling.
    """
    family = params["family"]
    _check_family(family)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    frame = _make_frame(height, width, params["rotation_deg"], params["scale"], params["translate"], device)
    pattern = _FAMILIES[family][1](frame, params)
    return pattern.to(torch.float32).clamp(0.0, 1.0).reshape(1, 1, height, width)


def render_pattern(
    family: str, height: int, width: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, dict]:
    """Draw a random shadow pattern of ``family`` and render it at ``height x width``.

    Returns ``(pattern, params)``: ``pattern`` is float32 ``1 x 1 x height x width`` in [0, 1] (1 = fully in shadow,
    0 = lit), unblurred; ``params`` is a JSON-serialisable dict with ``family``, ``rotation_deg`` (degrees in
    [0, 360)), ``scale`` (magnification of the pattern), ``translate`` (``[tx, ty]``, fractions of the image width
    and height) and the family's own parameters (see the module docstring for the frame). All random numbers come
    from ``generator``, a CPU generator (e.g. :func:`relight_datasets.rng.row_generator`: the same draws on every
    machine); the same generator state gives the same output, rendered on ``device``. Raises
    ``ValueError`` for an unknown family.
    """
    _check_family(family)
    drawer, _, (rotation_low, rotation_high) = _FAMILIES[family]
    draw = _Draw(generator)
    params: dict = {
        "family": family,
        "rotation_deg": draw.uniform(rotation_low, rotation_high) % 360.0,
        "scale": draw.log_uniform(0.75, 1.35),
        "translate": [draw.uniform(-_MAX_TRANSLATE, _MAX_TRANSLATE), draw.uniform(-_MAX_TRANSLATE, _MAX_TRANSLATE)],
    }
    params.update(drawer(draw, params["scale"]))
    return render_pattern_from_params(params, height, width, device), params

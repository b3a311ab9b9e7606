"""Environment light as small equirectangular radiance maps: procedural skies and rooms, or a user's HDR files.

Maps are ``MAP_HEIGHT x MAP_WIDTH x 3`` float64 CPU tensors of linear radiance in the layout of
:func:`relight_datasets.ops.sh.equirect_directions` (row 0 straight up, +y); they only feed a second-order SH
projection, for which this resolution is ample. Directions are in the image frame (x right, y up, z towards the
camera). A sun or a window is *not* drawn into its map: it is a separate directional light that casts shadows.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .color import kelvin_to_rgb
from .sh import equirect_directions

MAP_HEIGHT, MAP_WIDTH = 32, 64
ENVIRONMENT_MAP_SUFFIXES = (".hdr", ".exr")


def _directions() -> torch.Tensor:
    return equirect_directions(MAP_HEIGHT, MAP_WIDTH)[0]


def _color(kelvin: float) -> torch.Tensor:
    return torch.tensor(kelvin_to_rgb(kelvin), device="cpu", dtype=torch.float64)


def _glow(directions: torch.Tensor, towards: tuple[float, float, float], width: float) -> torch.Tensor:
    """``exp((cos(angle to towards) - 1) / width)``: 1 at ``towards``, falling off over about ``sqrt(2 width)``
    radians (``H x W``)."""
    axis = torch.tensor(towards, device="cpu", dtype=torch.float64)
    return torch.exp(((directions @ axis) - 1.0) / width)


def _ground(directions: torch.Tensor, sky: torch.Tensor, ground_albedo: float, ground_kelvin: float,
            sun_height: float) -> torch.Tensor:
    """Radiance of the ground below the horizon: its albedo times the sky's mean radiance, brighter with a higher
    sun (``sun_height``: the sun direction's y, 0 without a sun)."""
    above = (directions[..., 1] > 0).double()[..., None]
    mean_sky = (sky * above).sum(dim=(0, 1)) / above.sum().clamp_min(1.0)
    bounce = ground_albedo * (1.0 + 3.0 * max(sun_height, 0.0)) * mean_sky * _color(ground_kelvin)
    return (1 - above) * bounce


def clear_sky(sun: tuple[float, float, float], sky_kelvin: float, ground_albedo: float,
              ground_kelvin: float) -> torch.Tensor:
    """A clear day without its sun: a sky of ``sky_kelvin`` that whitens towards the horizon and glows around the
    ``sun`` direction, over a ground of ``ground_albedo`` lit by both."""
    directions = _directions()
    up = directions[..., 1].clamp_min(0)
    blue, white = _color(sky_kelvin), _color(6500.0)
    horizon = (1 - up)[..., None] ** 3
    sky = (0.6 * blue * (1 - horizon) + 0.9 * white * horizon) * (directions[..., 1:2] > 0)
    sky = sky + 1.5 * _glow(directions, sun, 0.08)[..., None] * white * (directions[..., 1:2] > 0)
    return sky + _ground(directions, sky, ground_albedo, ground_kelvin, sun[1])


def overcast_sky(sky_kelvin: float, ground_albedo: float, ground_kelvin: float) -> torch.Tensor:
    """The CIE standard overcast sky: radiance ``(1 + 2 cos(zenith angle)) / 3`` of ``sky_kelvin``, over a ground
    of ``ground_albedo``."""
    directions = _directions()
    up = directions[..., 1]
    sky = ((1 + 2 * up.clamp_min(0)) / 3)[..., None] * _color(sky_kelvin) * (up[..., None] > 0)
    return sky + _ground(directions, sky, ground_albedo, ground_kelvin, 0.0)


def room(kelvin: float, ceiling_gain: float) -> torch.Tensor:
    """Light bounced around a room of ``kelvin``: the ceiling ``ceiling_gain`` times as bright as the floor."""
    directions = _directions()
    height = (directions[..., 1:2] + 1) / 2  # 0 at the floor, 1 at the ceiling
    return (1 + (ceiling_gain - 1) * height) * _color(kelvin)


def indoor(window: tuple[float, float, float], window_kelvin: float, wall_kelvin: float,
           lamps: list[tuple[float, float, float]], lamp_kelvin: float) -> torch.Tensor:
    """A room lit by a window (the key light, drawn separately) and ``lamps``: walls of ``wall_kelvin`` brightest
    near the window, the window's sky glow and small bright practical lamps of ``lamp_kelvin``."""
    directions = _directions()
    walls = room(wall_kelvin, 1.3) * 0.5
    walls = walls + 0.6 * _glow(directions, window, 1.0)[..., None] * _color(window_kelvin)
    sky = 2.0 * _glow(directions, window, 0.02)[..., None] * _color(window_kelvin)
    lamp_light = sum((6.0 * _glow(directions, lamp, 0.01)[..., None] for lamp in lamps),
                     torch.zeros_like(walls)) * _color(lamp_kelvin)
    return walls + sky + lamp_light


def environment_maps_in(folder: str | Path) -> list[Path]:
    """The ``.hdr`` / ``.exr`` files in ``folder`` (sorted), or ValueError with a one-line reason."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"degradation.light.environment_maps: {path} is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in ENVIRONMENT_MAP_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"degradation.light.environment_maps: no .hdr or .exr files in {path}")
    return files


def load_environment_map(path: str) -> torch.Tensor:
    """An equirectangular HDR file (Radiance ``.hdr`` or OpenEXR ``.exr``, row 0 looking up) as a ``MAP_HEIGHT x
    MAP_WIDTH x 3`` linear radiance map (float64, CPU), area-averaged so the sun's energy is kept; each file is read
    once per process. ValueError with a one-line reason for a file that is not such a map."""
    return _read_environment_map(str(path)).clone()


@functools.lru_cache(maxsize=256)
def _read_environment_map(path: str) -> torch.Tensor:
    if path.lower().endswith(".exr"):
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    try:
        data = cv2.imread(path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as error:
        raise ValueError(f"environment map {path}: cannot be read ({str(error).strip().splitlines()[-1]})") from None
    if data is None or data.ndim != 3 or data.shape[2] < 3:
        raise ValueError(f"environment map {path}: not a readable RGB .hdr/.exr image")
    height, width = data.shape[:2]
    if width < 2 or abs(width / height - 2) > 0.1:
        raise ValueError(f"environment map {path}: {width}x{height} is not equirectangular (2:1)")
    rgb = np.ascontiguousarray(data[..., 2::-1], dtype=np.float32)
    if not np.isfinite(rgb).all() or (rgb < 0).any():
        raise ValueError(f"environment map {path}: holds negative or non-finite values")
    small = cv2.resize(rgb, (MAP_WIDTH, MAP_HEIGHT), interpolation=cv2.INTER_AREA)
    if small.max() <= 0:
        raise ValueError(f"environment map {path}: is black")
    return torch.from_numpy(small).to(device="cpu", dtype=torch.float64)

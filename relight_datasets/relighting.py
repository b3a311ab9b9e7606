"""The one relighting recipe, shared by the build and the training transforms.

:func:`draw_light` draws a row's new light up front into an immutable :class:`DrawnLight`: a *setup* (one, two or
three distant lights, a sunny or overcast sky, a room with a window, or a user's HDR environment map), each light's
direction, colour temperature, intensity and size, the environment light as second-order spherical harmonics, a
shadow pattern and a specular highlight. :func:`relight` is a pure batched function that puts the albedo under
that light in *linear* light (``degraded``), composites the result over the background (``composite``) and describes
it (the lighting labels). The build's relight stage and :class:`~relight_datasets.transforms.RelightOnTheFly` /
:class:`~relight_datasets.transforms.RelightBatch` all call it, so a stored row and its on-the-fly regeneration
cannot drift apart.

The light model, per pixel with normal ``n`` and albedo ``a`` (linear):
``radiance = exposure * (a * (E_env(n) * AO + sum_i c_i I_i max(0, n . l_i) V_i P_i) + specular)``, where
``E_env`` is the environment's SH irradiance, ``AO`` the height field's ambient occlusion, ``V_i`` the shadow the
height field casts for light ``i`` (a penumbra from the light's angular size), ``P_i`` the shadow pattern (the key
light's only) and ``exposure`` keeps the person's mean luminance that of the photo.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import DEGRADATION_TYPES, LIGHT_SETUPS, BuildConfig, PatternConfig
from .ops import environments, sh
from .ops.color import kelvin_to_rgb, kelvin_word, linear_to_srgb, luminance, srgb_to_linear
from .ops.composite import background_plate, composite, feathered_alpha
from .ops.filters import gaussian_blur, kernel_size_to_sigma
from .ops.lighting import describe_direction, light_direction, phong_specular
from .ops.normals import decode_normals, unit_vectors
from .ops.patterns import render_pattern
from .ops.shadows import ambient_occlusion, cast_shadows, displace, height_from_normals
from .rng import choice, randint, uniform

DEGRADATION_STREAM = "degradation"
"""Name of the per-row random stream the light is drawn from (:func:`relight_datasets.rng.row_generator`)."""
SHADOW_WORKING_SIZE = 256
"""Long side (pixels) at which the height field, cast shadows, occlusion and shadow patterns are computed before
upsampling; they are smooth at that scale."""
OCCLUSION_SCALES = (0.01, 0.03, 0.08)
"""Ambient-occlusion neighbourhoods, as fractions of the image's long side."""
EXPOSURE_RANGE = (0.125, 8.0)
"""Bounds of the exposure that keeps the person's mean luminance (three stops either way)."""
LIGHT_ROLES = ("key", "fill", "rim")
"""The light slots of the label columns, in order; a setup without a light leaves its slot at zero."""
SUN_KELVIN, SUN_RADIUS_DEG = (4800.0, 5800.0), 0.27
CLEAR_SKY_KELVIN, OVERCAST_KELVIN = (9000.0, 15000.0), (6500.0, 8000.0)
GROUND_ALBEDO, GROUND_KELVIN = (0.1, 0.35), (3500.0, 6500.0)
WINDOW_KELVIN, WINDOW_RADIUS_DEG = (5500.0, 7500.0), (8.0, 15.0)
WALL_KELVIN, LAMP_KELVIN = (3000.0, 4500.0), (2700.0, 3200.0)
FILL_RADIUS_DEG, RIM_ELEVATION_DEG = 15.0, (-35.0, -10.0)  # a rim light 100-125 degrees from the camera

OCCLUDER_DISTANCE = {"foliage": 4.0, "perlin_noise": 2.0}
"""How much farther than a blind, a fence or a window frame a pattern's occluder stands (leaves overhead): its
shadow's edges blur that much more under the same light."""

LABEL_SHAPES: dict[str, tuple[int, ...] | None] = {
    "degradation_type": None,
    "light_setup": None,
    "light_direction": (3,),
    "ambient": (),
    "light_directions": (len(LIGHT_ROLES), 3),
    "light_colors": (len(LIGHT_ROLES), 3),
    "light_kelvin": (len(LIGHT_ROLES),),
    "light_intensities": (len(LIGHT_ROLES),),
    "sh_irradiance": (3 * sh.SH_COEFFICIENTS,),
    "exposure": (),
    "shadow_pattern": None,
    "specular_intensity": (),
    "degradation_params": None,
    "instruction": None,
}
"""The per-row lighting labels :func:`relight` returns, named as the dataset's columns: the shape of each numeric
one (float32), None for text. The schema of the stored columns is built from this."""
LABEL_COLUMNS = tuple(LABEL_SHAPES)

_PATTERN_WORDS = {
    "venetian_blinds": "striped shadows from venetian blinds",
    "window_frame": "the shadow of a window frame",
    "perlin_noise": "mottled shadows",
    "voronoi": "a cellular shadow pattern",
    "lattice": "criss-cross shadows from a lattice",
    "curtain_folds": "soft shadows from curtain folds",
    "fence": "the shadow of a fence",
    "foliage": "dappled shadows from foliage",
    "clouds": "soft cloud shadows",
    "screen": "a fine mesh shadow from a screen",
}


@dataclass(frozen=True)
class ShadowPattern:
    """A drawn shadow pattern: its family, blur kernel (pixels at ``reference_resolution``), opacity and softness.
    The pattern's geometry (rotation, scale, ...) is rendered from ``generator_state``, the row generator's state
    after the draw, so the same record always renders the same pattern."""

    family: str
    blur_kernel_px: int
    opacity: float
    softness: float
    generator_state: bytes = field(repr=False)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator in the recorded state."""
        state = torch.tensor(list(self.generator_state), device="cpu", dtype=torch.uint8)
        return torch.Generator(device="cpu").set_state(state)


@dataclass(frozen=True)
class Specular:
    """A drawn Phong highlight: ``intensity`` (of the light it reflects) and ``shininess`` (exponent)."""

    intensity: float
    shininess: float


@dataclass(frozen=True)
class Light:
    """One distant light: its ``role`` (:data:`LIGHT_ROLES`), direction (degrees, see
    :mod:`relight_datasets.ops.lighting`; a negative elevation is behind the person), colour temperature and tint,
    ``intensity`` (irradiance it gives a surface facing it, before exposure) and angular radius."""

    role: str
    elevation_deg: float
    azimuth_deg: float
    kelvin: float
    tint: float
    intensity: float
    radius_deg: float

    @property
    def direction(self) -> tuple[float, float, float]:
        """Unit vector towards the light (x right, y up, z towards the camera)."""
        return light_direction(self.elevation_deg, self.azimuth_deg)

    @property
    def color(self) -> tuple[float, float, float]:
        """Linear RGB of the light (luminance 1)."""
        return kelvin_to_rgb(self.kelvin, self.tint)


@dataclass(frozen=True)
class DrawnLight:
    """Everything drawn for one row's new lighting. ``lights``: the distant lights, the key first (none for an
    overcast sky or an environment map); ``environment_sh``: the environment's irradiance coefficients (27,
    channel-major, :mod:`relight_datasets.ops.sh`), scaled so its luminance on a camera-facing surface is
    ``ambient``; ``environment``: what the environment was drawn from."""

    degradation_type: str
    setup: str
    ambient: float
    lights: tuple[Light, ...]
    environment_sh: tuple[float, ...] = field(repr=False)
    environment: dict = field(default_factory=dict)
    pattern: ShadowPattern | None = None
    specular: Specular | None = None

    @property
    def key(self) -> Light | None:
        return next((light for light in self.lights if light.role == "key"), None)

    @property
    def direction(self) -> tuple[float, float, float]:
        """The key light's direction, else where the environment's light comes from most."""
        if self.key is not None:
            return self.key.direction
        coefficients = torch.tensor(self.environment_sh, device="cpu", dtype=torch.float64).view(3, -1)
        return tuple(sh.dominant_direction(coefficients).tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Drawing


def _draw_pattern(generator: torch.Generator, cfg: PatternConfig) -> tuple[str, int, float] | None:
    """``(family, blur kernel, opacity)``, or None when the row gets no pattern."""
    if not cfg.families or uniform(generator, 0.0, 1.0) >= cfg.probability:
        return None
    low, high = cfg.blur_kernel_px
    family = choice(generator, list(cfg.families))
    kernel = 2 * randint(generator, math.ceil((low - 1) / 2), math.floor((high - 1) / 2)) + 1
    return family, kernel, uniform(generator, *cfg.opacity)


@functools.lru_cache(maxsize=16)
def _environment_maps(folder: str) -> tuple:
    """The maps of ``folder`` (:func:`~relight_datasets.ops.environments.environment_maps_in`), listed once per
    process rather than once per row."""
    return tuple(environments.environment_maps_in(folder))


def _upper(elevation: float, azimuth: float) -> tuple[float, float]:
    """The same light mirrored above the horizon (y >= 0), for suns and windows."""
    return elevation, azimuth if math.sin(math.radians(azimuth)) >= 0 else (360.0 - azimuth) % 360.0


def _draw_setup(config: BuildConfig, generator: torch.Generator, setup: str, elevation: float, azimuth: float,
                ambient: float) -> tuple[float, list[Light], torch.Tensor, dict]:
    """The lights and the environment's irradiance coefficients (``3 x 9``, unnormalised) of one setup."""
    cfg = config.degradation.light

    def tint() -> float:
        return uniform(generator, -cfg.tint, cfg.tint)

    key_strength = 1.0 - ambient
    if setup in ("single", "two_point", "three_point"):
        key = Light("key", elevation, azimuth, uniform(generator, *cfg.key_kelvin), tint(), key_strength,
                    uniform(generator, *cfg.key_radius_deg))
        lights = [key]
        room_kelvin, ceiling = uniform(generator, *cfg.fill_kelvin), uniform(generator, 1.0, 2.0)
        if setup != "single":
            fill_azimuth = (180.0 - azimuth + uniform(generator, -25.0, 25.0)) % 360.0  # the other side
            lights.append(Light("fill", uniform(generator, 10.0, 45.0), fill_azimuth,
                                uniform(generator, *cfg.fill_kelvin), tint(),
                                key_strength * uniform(generator, *cfg.fill_ratio), FILL_RADIUS_DEG))
        if setup == "three_point":
            rim_azimuth = (180.0 - azimuth + uniform(generator, -50.0, 50.0)) % 360.0
            lights.append(Light("rim", uniform(generator, *RIM_ELEVATION_DEG), rim_azimuth,
                                uniform(generator, *cfg.rim_kelvin), tint(),
                                key_strength * uniform(generator, *cfg.rim_ratio), uniform(generator, 2.0, 6.0)))
        return ambient, lights, sh.project_radiance(environments.room(room_kelvin, ceiling)), {
            "kind": "room", "kelvin": room_kelvin, "ceiling_gain": ceiling}
    if setup == "outdoor":
        elevation, azimuth = _upper(elevation, azimuth)
        sun = Light("key", elevation, azimuth, uniform(generator, *SUN_KELVIN), 0.0, key_strength, SUN_RADIUS_DEG)
        sky = {"kind": "clear_sky", "sky_kelvin": uniform(generator, *CLEAR_SKY_KELVIN),
               "ground_albedo": uniform(generator, *GROUND_ALBEDO), "ground_kelvin": uniform(generator, *GROUND_KELVIN)}
        radiance = environments.clear_sky(sun.direction, sky["sky_kelvin"], sky["ground_albedo"], sky["ground_kelvin"])
        return ambient, [sun], sh.project_radiance(radiance), sky
    if setup == "overcast":
        sky = {"kind": "overcast_sky", "sky_kelvin": uniform(generator, *OVERCAST_KELVIN),
               "ground_albedo": uniform(generator, *GROUND_ALBEDO), "ground_kelvin": uniform(generator, *GROUND_KELVIN)}
        radiance = environments.overcast_sky(sky["sky_kelvin"], sky["ground_albedo"], sky["ground_kelvin"])
        return 1.0, [], sh.project_radiance(radiance), sky
    if setup == "indoor":
        elevation, azimuth = _upper(elevation, azimuth)
        window = Light("key", elevation, azimuth, uniform(generator, *WINDOW_KELVIN), 0.0, key_strength,
                       uniform(generator, *WINDOW_RADIUS_DEG))
        lamps = [light_direction(uniform(generator, -30.0, 30.0), uniform(generator, 20.0, 160.0))
                 for _ in range(randint(generator, 0, 2))]
        room_params = {"kind": "indoor", "wall_kelvin": uniform(generator, *WALL_KELVIN),
                       "lamp_kelvin": uniform(generator, *LAMP_KELVIN), "lamps": [list(lamp) for lamp in lamps]}
        radiance = environments.indoor(window.direction, window.kelvin, room_params["wall_kelvin"], lamps,
                                       room_params["lamp_kelvin"])
        return ambient, [window], sh.project_radiance(radiance), room_params
    if setup == "environment_map":
        files = _environment_maps(cfg.environment_maps)
        path = choice(generator, files)
        yaw = uniform(generator, 0.0, 360.0)
        radiance = environments.load_environment_map(str(path))
        record = {"kind": "environment_map", "file": path.name, "yaw_deg": yaw}
        return 1.0, [], sh.project_radiance(radiance, yaw), record
    raise ValueError(f"unknown light setup {setup!r} (valid: {', '.join(LIGHT_SETUPS)})")


def _normalised(coefficients: torch.Tensor, ambient: float) -> tuple[float, ...]:
    """Coefficients scaled so the luminance of ``E(+z)`` (a surface facing the camera) is ``ambient``."""
    facing = sh.sh_basis(torch.tensor((0.0, 0.0, 1.0), device="cpu", dtype=torch.float64))
    rgb = coefficients @ facing
    luma = float(rgb @ torch.tensor((0.2126, 0.7152, 0.0722), device="cpu", dtype=torch.float64))
    return tuple((coefficients * (ambient / max(luma, 1e-9))).flatten().tolist())


def draw_light(config: BuildConfig, generator: torch.Generator) -> DrawnLight:
    """Draw a degradation type and a light setup (by the configured weights) and all their parameters."""
    deg = config.degradation
    types = [t for t in DEGRADATION_TYPES if deg.weights.get(t, 0) > 0]
    kind = choice(generator, types, [deg.weights[t] for t in types])
    setups = [s for s in LIGHT_SETUPS if deg.light.setups.get(s, 0) > 0]
    setup = choice(generator, setups, [deg.light.setups[s] for s in setups])
    elevation = uniform(generator, *deg.light.elevation_deg)
    azimuth = uniform(generator, *deg.light.azimuth_deg) % 360
    shading = {"soft_shading": deg.soft_shading, "hard_shadow": deg.hard_shadow, "specular": deg.specular}[kind]
    ambient, lights, coefficients, environment = _draw_setup(config, generator, setup, elevation, azimuth,
                                                             uniform(generator, *shading.ambient))
    common = dict(degradation_type=kind, setup=setup, ambient=ambient, lights=tuple(lights),
                  environment_sh=_normalised(coefficients, ambient), environment=environment)
    if kind == "specular":
        specular = Specular(uniform(generator, *deg.specular.intensity), uniform(generator, *deg.specular.shininess))
        return DrawnLight(**common, specular=specular)
    drawn = _draw_pattern(generator, shading.pattern)
    if drawn is None or not lights:  # a pattern blocks the key light: nothing to block without one
        return DrawnLight(**common)
    state = generator.get_state().numpy().tobytes()
    return DrawnLight(**common, pattern=ShadowPattern(*drawn, shading.pattern.softness, state))


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Working:
    """The batch at the working size (``SHADOW_WORKING_SIZE``): unit normals, mask, linear albedo and image, and the
    height field integrated from the normals (all ``B x C x h x w``)."""

    normals: torch.Tensor
    mask: torch.Tensor
    albedo: torch.Tensor
    image: torch.Tensor
    height: torch.Tensor


def _working(normals: torch.Tensor, mask: torch.Tensor, albedo: torch.Tensor, image: torch.Tensor) -> _Working:
    """``image`` is sRGB-encoded (it is linearised after the reduction: only its mean luminance is used)."""
    height, width = normals.shape[-2:]
    shrink = min(1.0, SHADOW_WORKING_SIZE / max(height, width))
    size = (max(8, round(height * shrink)), max(8, round(width * shrink)))

    def small(tensor: torch.Tensor) -> torch.Tensor:
        return F.interpolate(tensor, size=size, mode="area") if shrink < 1 else tensor

    small_normals, small_mask = unit_vectors(small(normals)), small(mask)
    return _Working(small_normals, small_mask, small(albedo), srgb_to_linear(small(image)),
                    height_from_normals(small_normals, small_mask))


def _to_full(small: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if small.shape[-2:] == like.shape[-2:]:
        return small.to(like.dtype)
    return F.interpolate(small, size=like.shape[-2:], mode="bilinear", align_corners=False).to(like.dtype)


def pattern_shadow(pattern: ShadowPattern, height: torch.Tensor, mask: torch.Tensor, key: Light, image_side: int,
                   reference_resolution: int) -> tuple[torch.Tensor, dict]:
    """The share of the key light a shadow pattern lets through (``1 x 1 x h x w``, at the working size of
    ``height`` / ``mask``, ``1 x 1 x h x w``) and the pattern's parameters.

    The pattern lies in a plane between the light and the person: it is projected along the light onto the height
    field (a raised nose takes the pattern from further towards the light) and its edges soften with the distance
    from the occluder (the highest point of the person is nearest: 0.6 times the blur there, 1.4 times at the
    lowest). The blur grows with the key light's size: the drawn kernel (given at ``reference_resolution`` for an image
    of long side ``image_side``) times ``0.5 + radius_deg / 2``, so a sun casts crisp patterns and a window soft ones,
    and times the family's :data:`OCCLUDER_DISTANCE` (sunlight through leaves overhead makes soft dapples)."""
    radius_deg, direction = key.radius_deg, key.direction
    rows, cols = height.shape[-2:]
    sharp, geometry = render_pattern(pattern.family, rows, cols, pattern.generator(), height.device)
    sharp = sharp.to(height.dtype)
    params = {"family": pattern.family, "blur_kernel_px": pattern.blur_kernel_px, "opacity": pattern.opacity,
              "blend_softness": pattern.softness, **{k: v for k, v in geometry.items() if k != "family"}}
    softness = pattern.softness
    distance_factor = OCCLUDER_DISTANCE.get(pattern.family, 1.0)
    kernel = pattern.blur_kernel_px * image_side / reference_resolution * (0.5 + radius_deg / 2) * distance_factor
    sigma = kernel_size_to_sigma(kernel) * max(rows, cols) / image_side
    inside = mask > 0.5
    top = torch.where(inside, height, -torch.inf).amax()
    bottom = torch.where(inside, height, torch.inf).amin()
    if not bool(inside.any()):
        top = bottom = height.mean()
    distance = ((top - height) / (top - bottom).clamp_min(1e-6)).clamp(0, 1)
    lx, ly, lz = direction
    reach = 0.25 * max(rows, cols)
    relative = (height - height[inside].mean() if bool(inside.any()) else height - height.mean())
    shift = torch.cat([-relative * (lx / max(lz, 0.35)), relative * (ly / max(lz, 0.35))], dim=1).clamp(-reach, reach)
    near, far = (displace(gaussian_blur(sharp, sigma * f), shift) for f in (0.6, 1.4))
    blurred = torch.lerp(near, far, distance)
    coverage = softness * blurred + (1 - softness) * displace(sharp, shift) if softness > 0 else blurred
    return 1 - pattern.opacity * coverage.clamp(0, 1), params


def _per_row(values: list, like: torch.Tensor, shape: tuple[int, ...] = ()) -> torch.Tensor:
    return torch.tensor(values, device=like.device, dtype=like.dtype).view(-1, *shape)


def _exposure(work: _Working, env_coefficients: torch.Tensor, slots: list[tuple[torch.Tensor, torch.Tensor]]
              ) -> torch.Tensor:
    """Per row (``B``, float64, rounded to 6 decimals): the factor that gives the relit person, before shadows, the
    mean luminance of the photo's person, within :data:`EXPOSURE_RANGE`; computed at the working size."""
    light = sh.irradiance(env_coefficients, work.normals)
    for strength, direction in slots:
        light = light + strength * (work.normals * direction).sum(dim=1, keepdim=True).clamp_min(0)
    weight = work.mask.double()
    # float64 sums, rounded: a float32 sum depends on how the reduction is split
    target = (luminance(work.image).double() * weight).sum(dim=(1, 2, 3))
    model = (luminance(work.albedo * light).double() * weight).sum(dim=(1, 2, 3))
    return torch.round((target / model.clamp_min(1e-9)).clamp(*EXPOSURE_RANGE), decimals=6)


def relit_foreground(albedo: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                     lights: list[DrawnLight], config: BuildConfig) -> tuple[torch.Tensor, list[dict]]:
    """The albedo under the drawn lights, in linear light, inside the mask (0 outside); see the module docstring.

    ``albedo``: linear ``B x 3 x H x W``; ``image``: the photo, sRGB-encoded; ``normals``: unit ``B x 3 x H x W``;
    ``mask``: binary
    ``B x 1 x H x W``. What varies slowly across the image (height field, cast shadows, occlusion, patterns,
    exposure) is computed at :data:`SHADOW_WORKING_SIZE` and upsampled. Returns the linear radiance (clipped to
    [0, 1]) and per row the rendering's own values: ``exposure``, the light's irradiance coefficients after exposure
    (``sh_irradiance``) and the pattern's parameters (``pattern``, None without one)."""
    cfg = config.degradation.light
    batch = albedo.shape[0]
    side = max(albedo.shape[-2:])
    work = _working(normals, mask, albedo, image)
    env_coefficients = _per_row([list(light.environment_sh) for light in lights], normals, (3, sh.SH_COEFFICIENTS))
    slot_count = max(len(light.lights) for light in lights)
    slots = []
    for slot in range(slot_count):
        members = [light.lights[slot] if slot < len(light.lights) else None for light in lights]
        strength = _per_row([[c * m.intensity for c in m.color] if m else [0.0] * 3 for m in members], normals,
                            (3, 1, 1))
        direction = _per_row([m.direction if m else (0.0, 0.0, 1.0) for m in members], normals, (3, 1, 1))
        slots.append((members, strength, direction))
    exposure = _exposure(work, env_coefficients, [(strength, direction) for _, strength, direction in slots])
    scale = exposure.to(device=normals.device, dtype=normals.dtype).view(-1, 1, 1, 1)
    table = sh.irradiance_table(env_coefficients * scale.view(-1, 1, 1))
    environment = sh.irradiance_lookup(table, normals)
    if cfg.occlusion > 0:
        coarse = F.avg_pool2d(work.height, 2) if min(work.height.shape[-2:]) >= 16 else work.height
        occlusion = ambient_occlusion(coarse, tuple(s * max(coarse.shape[-2:]) for s in OCCLUSION_SCALES))
        environment *= _to_full(1 - cfg.occlusion * (1 - occlusion), environment)
    light_sum = environment
    specular = None
    patterns: list[dict | None] = [None] * batch
    shininess = [light.specular.shininess if light.specular else 1.0 for light in lights]
    specular_share = _per_row([light.specular.intensity if light.specular else 0.0 for light in lights], normals,
                              (1, 1, 1))
    for members, strength, direction in slots:
        shade = (normals * direction).sum(dim=1, keepdim=True).clamp_min_(0)
        through = None
        if cfg.cast_shadows:
            radii = _per_row([m.radius_deg if m else 0.0 for m in members], work.height)
            through = cast_shadows(work.height, direction.view(-1, 3).to(work.height.dtype), radii)
        for row, (member, light) in enumerate(zip(members, lights, strict=True)):
            if member is not None and member.role == "key" and light.pattern is not None:
                let_through, patterns[row] = pattern_shadow(light.pattern, work.height[row:row + 1],
                                                            work.mask[row:row + 1], member, side,
                                                            config.reference_resolution)
                through = through if through is not None else torch.ones_like(work.height)
                through[row:row + 1] = through[row:row + 1] * let_through
        if through is not None:
            shade *= _to_full(through, shade)
        light_sum = light_sum + (strength * scale) * shade
        if any(light.specular for light in lights):
            highlight = phong_specular(normals, direction.view(-1, 3), [1.0] * batch, shininess)
            if through is not None:
                highlight *= _to_full(through, highlight)
            term = (strength * scale * specular_share) * highlight
            specular = term if specular is None else specular + term
    radiance = albedo * light_sum
    if specular is not None:
        radiance += specular
    records = []
    for row, light in enumerate(lights):
        total = torch.tensor(light.environment_sh, device="cpu", dtype=torch.float64).view(3, -1)
        for member in light.lights:
            color = torch.tensor(member.color, device="cpu", dtype=torch.float64) * member.intensity
            total = total + sh.directional_irradiance_sh(
                torch.tensor(member.direction, device="cpu", dtype=torch.float64), color)
        records.append({"exposure": float(exposure[row]), "pattern": patterns[row],
                        "sh_irradiance": (total * float(exposure[row])).flatten().tolist()})
    return radiance.clamp_(0, 1).mul_(mask), records


# ---------------------------------------------------------------------------------------------------------------------
# Labels


def _shadow_words(ambient: float, key_radius: float | None) -> str:
    if key_radius is None:
        return "no distinct shadows"
    edge = "hard" if key_radius < 1.5 else "crisp" if key_radius < 5 else "soft"
    depth = "deep " if ambient < 0.3 else "" if ambient < 0.6 else "faint "
    return f"{depth}{edge} shadows"


def _light_phrase(light: dict, what: str) -> str:
    """E.g. ``"warm key light from the upper left"``; fill and rim lights name their side only."""
    colour = kelvin_word(light["kelvin"])
    colour = "" if colour == "neutral" else f"{colour} "
    side = "left" if math.cos(math.radians(light["azimuth_deg"])) < 0 else "right"
    if light["role"] == "rim":
        return f"{colour}{what} from behind on the {side}"
    if light["role"] == "fill":
        return f"{colour}{what} from the {side}"
    return f"{colour}{what} from {describe_direction(light['elevation_deg'], light['azimuth_deg'])}"


def lighting_instruction(setup: str, ambient: float, params: dict) -> str:
    """The new light in words, from the labels alone (so a mirrored row can be described again): e.g. ``"warm key
    light from the upper left, cool rim light from behind on the right, soft shadows"``."""
    lights = {light["role"]: light for light in params.get("lights", [])}
    key = lights.get("key")
    environment = params.get("environment", {})
    if setup == "outdoor":
        text = f"direct sunlight from {describe_direction(key['elevation_deg'], key['azimuth_deg'])} under a clear sky"
    elif setup == "overcast":
        text = "soft overcast daylight from above"
    elif setup == "indoor":
        text = _light_phrase(key, "window light")
        if environment.get("lamps"):
            text += ", warm lamps in the room"
    elif setup == "environment_map":
        direction = params.get("dominant_direction", (0.0, 0.0, 1.0))
        elevation = math.degrees(math.asin(max(-1.0, min(1.0, direction[2]))))
        text = (f"light from a captured environment, strongest from "
                f"{describe_direction(elevation, math.degrees(math.atan2(direction[1], direction[0])) % 360)}")
    else:
        text = _light_phrase(key, "key light" if setup != "single" else "light")
        if "fill" in lights:
            text += ", " + _light_phrase(lights["fill"], "fill light")
        if "rim" in lights:
            text += ", " + _light_phrase(lights["rim"], "rim light")
    text += ", " + _shadow_words(ambient, key["radius_deg"] if key else None)
    pattern = params.get("pattern")
    if pattern:
        text += f", with {_PATTERN_WORDS.get(pattern['family'], 'patterned shadows')}"
    if params.get("specular"):
        text += ", glossy highlights on the skin"
    return text


def light_labels(light: DrawnLight, record: dict) -> dict:
    """One row's lighting labels (:data:`LABEL_COLUMNS`) from its draw and its rendering's ``record``
    (:func:`relit_foreground`). ``degradation_params`` is the JSON of the drawn values the columns do not hold."""
    slots = {member.role: member for member in light.lights}
    directions, colors, kelvins, intensities = [], [], [], []
    for role in LIGHT_ROLES:
        member = slots.get(role)
        directions.append(list(member.direction) if member else [0.0, 0.0, 0.0])
        colors.append(list(member.color) if member else [0.0, 0.0, 0.0])
        kelvins.append(member.kelvin if member else 0.0)
        intensities.append(member.intensity * record["exposure"] if member else 0.0)
    specular = None if light.specular is None else {"intensity": light.specular.intensity,
                                                     "shininess": light.specular.shininess}
    params = {
        "lights": [{"role": m.role, "elevation_deg": m.elevation_deg, "azimuth_deg": m.azimuth_deg,
                    "kelvin": m.kelvin, "tint": m.tint, "radius_deg": m.radius_deg} for m in light.lights],
        "environment": light.environment, "pattern": record["pattern"], "specular": specular,
    }
    if light.key is None:
        params["dominant_direction"] = list(light.direction)
    return {
        "degradation_type": light.degradation_type,
        "light_setup": light.setup,
        "light_direction": list(light.direction),
        "ambient": light.ambient,
        "light_directions": directions,
        "light_colors": colors,
        "light_kelvin": kelvins,
        "light_intensities": intensities,
        "sh_irradiance": record["sh_irradiance"],
        "exposure": record["exposure"],
        "shadow_pattern": record["pattern"]["family"] if record["pattern"] else "",
        "specular_intensity": light.specular.intensity if light.specular else 0.0,
        "degradation_params": json.dumps(params, sort_keys=True),
        "instruction": lighting_instruction(light.setup, light.ambient, params),
    }


def quantize_to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round float images in [0, 1] to the 8-bit grid (``round(255 x) / 255``), staying a float tensor: exactly the
    values an 8-bit PNG of them decodes to."""
    return images.clamp(0, 1).mul_(255).round_().div_(255)  # one new tensor, the rest in place


def relight(albedo: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
            lights: list[DrawnLight], config: BuildConfig,
            quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Relight a batch: ``(degraded, composite, labels)``.

    ``albedo``, ``normals`` (RGB-encoded, :func:`~relight_datasets.ops.normals.encode_normals`) and ``image``:
    float ``B x 3 x H x W`` in [0, 1], sRGB-encoded; ``mask``: ``B x 1 x H x W`` (person where > 0.5); all on one
    device, any memory layout. ``lights``: one :class:`DrawnLight` per row. The light is applied in linear light
    (:func:`relit_foreground`); ``degraded`` (``B x 3 x H x W``, sRGB) is the albedo under it inside the mask and
    black outside; ``composite`` is ``degraded`` over the background plate (``config.recombination``) with the mask
    feathered inwards by ``feather_px`` (pixel sizes given at ``config.reference_resolution``). With ``quantize``
    both are rounded to the 8-bit grid as the build stores them (``degraded`` before it is composited); where the
    feathered alpha is 0 the composite is the background plate bit for bit. ``labels``: per row, a dict of
    :data:`LABEL_COLUMNS`.
    """
    albedo, normals, mask, image = (tensor.contiguous() for tensor in (albedo, normals, mask, image))
    binary = (mask > 0.5).to(albedo.dtype)
    radiance, records = relit_foreground(srgb_to_linear(albedo), decode_normals(normals), binary, image, lights,
                                         config)
    degraded = linear_to_srgb(radiance).clamp_(0, 1).mul_(binary)
    if quantize:
        degraded = quantize_to_8bit(degraded)
    scale = max(albedo.shape[-2:]) / config.reference_resolution
    alpha = feathered_alpha(mask, config.recombination.feather_px * scale)
    background = background_plate(image, config.recombination.background)
    result = composite(degraded, background, alpha)
    if quantize:
        result = torch.where(alpha > 0, quantize_to_8bit(result), background)
    labels = [light_labels(light, record) for light, record in zip(lights, records, strict=True)]
    return degraded, result, labels


def _as_list(value) -> list:
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


def _like(values: list, original):
    """``values`` in the form of ``original``: a tensor on its device and dtype, or a list."""
    if isinstance(original, torch.Tensor):
        return torch.tensor(values, device=original.device, dtype=original.dtype)
    return values


def mirror_labels(labels: dict) -> dict:
    """The lighting labels (any subset of :data:`LABEL_COLUMNS`, values as stored or as tensors) of the horizontally
    mirrored image: every x component and SH coefficient odd in x changes sign, azimuths ``a`` become ``180 - a``,
    and the instruction is written again from the mirrored labels (when ``light_setup``, ``ambient`` and
    ``degradation_params`` are given). Shadow-pattern parameters describe an already rendered pattern and stay."""
    out = dict(labels)
    if "light_direction" in labels:
        x, y, z = _as_list(labels["light_direction"])
        out["light_direction"] = _like([-x, y, z], labels["light_direction"])
    if "light_directions" in labels:
        out["light_directions"] = _like([[-x, y, z] for x, y, z in _as_list(labels["light_directions"])],
                                        labels["light_directions"])
    if "sh_irradiance" in labels:
        signs = sh.MIRROR_X_SIGNS * 3
        out["sh_irradiance"] = _like([s * c for s, c in zip(signs, _as_list(labels["sh_irradiance"]), strict=True)],
                                     labels["sh_irradiance"])
    if labels.get("degradation_params"):
        params = json.loads(labels["degradation_params"])
        for light in params.get("lights", []):
            light["azimuth_deg"] = (180.0 - light["azimuth_deg"]) % 360.0
        for lamp in params.get("environment", {}).get("lamps", []):
            lamp[0] = -lamp[0]
        if "dominant_direction" in params:
            params["dominant_direction"][0] = -params["dominant_direction"][0]
        out["degradation_params"] = json.dumps(params, sort_keys=True)
        if "instruction" in labels and "light_setup" in labels and "ambient" in labels:
            out["instruction"] = lighting_instruction(str(labels["light_setup"]), float(labels["ambient"]), params)
    return out

"""Typed build configuration, loaded from YAML presets shipped with the package.

A config is resolved in three layers: a preset (``mvp`` or ``full``), an optional user YAML file merged over it, and
``--set dotted.key=value`` overrides. Validation happens once, at start-up; any problem raises ``ConfigError`` with
a one-line message naming the offending key.

Pixel sizes (blur kernels, Retinex scales, feathering) are given for an image whose long side is
``reference_resolution`` pixels and scale with the actual image size, so a 512 px and a 1024 px build of the same
photo look alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

PRESETS = ("mvp", "full", "studio", "outdoor")
DEGRADATION_TYPES = ("soft_shading", "hard_shadow", "specular")
LIGHT_SETUPS = ("single", "two_point", "three_point", "outdoor", "overcast", "indoor", "environment_map")


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


Range = tuple[float, float]


@dataclass
class ClassicalSegmentationConfig:
    work_size: int = 128  # long side GrabCut runs at; the mask's edges are then snapped to the full-size image
    grabcut_iterations: int = 2


@dataclass
class SegmentationConfig:
    method: Literal["auto", "sam3", "sam2", "mediapipe", "classical"] = "auto"
    text_prompt: str = "person"
    min_coverage: float = 0.02
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    sam3_model: str = "facebook/sam3"
    sam2_model: str = "facebook/sam2.1-hiera-large"
    detector_model: str = "IDEA-Research/grounding-dino-tiny"
    detector_threshold: float = 0.3
    max_people: int = 4
    mediapipe_threshold: float = 0.75
    classical: ClassicalSegmentationConfig = field(default_factory=ClassicalSegmentationConfig)


@dataclass
class AlbedoConfig:
    method: Literal["retinex", "lab", "intrinsic", "auto"] = "retinex"
    intrinsic_model: str = "prs-eth/marigold-iid-appearance-v1-1"  # a MarigoldIntrinsicsPipeline checkpoint
    intrinsic_steps: int = 4  # denoising steps of the intrinsic model
    intrinsic_ensemble: int = 1  # predictions per image, combined by the pipeline (median)
    retinex_color: Literal["luminance", "channels"] = "luminance"
    retinex_scales: list[float] = field(default_factory=lambda: [50.0, 100.0, 200.0])
    robust_tau: float = 0.3  # log-intensity spread of one material: farther pixels hardly count in the surround
    robust_iterations: int = 3  # M-estimator rounds of the surround (0: the plain Gaussian surround of the seed)
    color_balance_percent: float = 1.0
    blend_range: Range = (0.15, 0.25)
    bilateral_diameter: int = 9
    bilateral_sigma_color: float = 75.0
    bilateral_sigma_space: float = 75.0


@dataclass
class NormalsConfig:
    method: Literal["auto", "face_mesh", "depth", "classical", "marigold"] = "auto"
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    normals_model: str = "prs-eth/marigold-normals-v1-1"  # a MarigoldNormalsPipeline checkpoint (method marigold)
    normals_steps: int = 4  # denoising steps of the normals model
    normals_ensemble: int = 1  # predictions per image, combined by the pipeline (closest to their mean)
    depth_relief: float = 0.5
    inflation_sigma: float = 0.12
    edge_tilt_deg: float = 70.0
    face_render_side: int = 256  # long side the face mesh is rendered at, then resized (0.07 deg mean from 512)
    face_smoothing: float = 0.01  # Gaussian smoothing of the rendered face normals, in face sizes (sqrt of its area)
    face_feather: float = 0.06  # width of the ease from face normals into body normals, in face sizes


@dataclass
class LightConfig:
    elevation_deg: Range = (10.0, 80.0)  # the key light's (sun's, window's), above the image plane
    azimuth_deg: Range = (0.0, 360.0)
    setups: dict[str, float] = field(default_factory=lambda: {"single": 1.0})  # weights over LIGHT_SETUPS
    key_kelvin: Range = (6500.0, 6500.0)  # colour temperatures of studio lights (suns and windows have their own)
    fill_kelvin: Range = (6500.0, 6500.0)  # the fill light's and the room's
    rim_kelvin: Range = (6500.0, 6500.0)
    tint: float = 0.0  # largest green (+) / magenta (-) tint of a studio light
    fill_ratio: Range = (0.2, 0.5)  # fill intensity / key intensity
    rim_ratio: Range = (0.5, 1.0)  # rim intensity / key intensity
    key_radius_deg: Range = (3.0, 8.0)  # angular radius of the key light: its shadows' penumbra
    environment_maps: str = ""  # folder of equirectangular .hdr / .exr maps for the environment_map setup
    cast_shadows: bool = True  # shadows the height field casts (nose, chin, hair)
    occlusion: float = 1.0  # strength of the ambient occlusion on the environment light (0 = none)


@dataclass
class PatternConfig:
    probability: float = 1.0
    families: list[str] = field(default_factory=lambda: ["clouds"])
    blur_kernel_px: Range = (21.0, 51.0)
    opacity: Range = (0.35, 0.6)
    softness: float = 0.0


@dataclass
class SoftShadingConfig:
    ambient: Range = (0.6, 0.85)
    pattern: PatternConfig = field(default_factory=PatternConfig)


@dataclass
class HardShadowConfig:
    ambient: Range = (0.6, 0.85)
    pattern: PatternConfig = field(
        default_factory=lambda: PatternConfig(
            probability=1.0, families=[], blur_kernel_px=(31.0, 111.0), opacity=(0.1, 0.3), softness=0.7
        )
    )


@dataclass
class SpecularConfig:
    ambient: Range = (0.6, 0.85)
    intensity: Range = (0.1, 0.5)
    shininess: Range = (10.0, 100.0)


@dataclass
class DegradationConfig:
    weights: dict[str, float] = field(
        default_factory=lambda: {"soft_shading": 0.8, "hard_shadow": 0.0, "specular": 0.0}
    )
    light: LightConfig = field(default_factory=LightConfig)
    soft_shading: SoftShadingConfig = field(default_factory=SoftShadingConfig)
    hard_shadow: HardShadowConfig = field(default_factory=HardShadowConfig)
    specular: SpecularConfig = field(default_factory=SpecularConfig)


@dataclass
class RecombinationConfig:
    background: Literal["original", "gray", "black"] = "original"
    feather_px: float = 3.0


@dataclass
class OutputConfig:
    dataset_version: str = "0.1.0"
    license: str = ""  # a Hub licence id; "" = the source's when known (FFHQ), else "unknown"
    preview_rows: int = 6
    png_codec: Literal["fpng", "zlib"] = "fpng"
    png_compress_level: int = 1
    image_format: Literal["png", "webp", "jpeg"] = "png"
    image_quality: int = 95
    layout: Literal["full", "compact"] = "full"  # compact: no degraded / composite (regenerate_pairs remakes them)


CAPTION_PROMPT = ("Describe this photo in one or two sentences: the person, the place or background, and the light "
                  "on the person (where it comes from, how hard or soft it is, its colour).")


@dataclass
class CaptionConfig:
    method: Literal["none", "vlm"] = "none"  # vlm: a vision-language model describes each composite
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # any AutoModelForImageTextToText checkpoint with a chat template
    prompt: str = CAPTION_PROMPT
    max_new_tokens: int = 96
    batch_size: int = 8  # images per generate call (bounds the VLM's memory)
    image_side: int = 448  # long side the composite is shrunk to before the VLM sees it (0: as stored)


@dataclass
class BuildConfig:
    seed: int = 0
    resolution: int = 1024
    reference_resolution: int = 1024
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    albedo: AlbedoConfig = field(default_factory=AlbedoConfig)
    normals: NormalsConfig = field(default_factory=NormalsConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    recombination: RecombinationConfig = field(default_factory=RecombinationConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for ranges), YAML/JSON friendly."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """16 hex digits identifying everything that changes the rows (the whole config, output options included)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------------
# Building a typed config from plain data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to ``annotation`` (a dataclass, Literal, Range, list, dict or scalar) or ConfigError."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{key}: expected a [low, high] pair, got {value!r}")
        low, high = (_coerce(v, float, f"{key}[{i}]") for i, v in enumerate(value))
        if low > high:
            raise ConfigError(f"{key}: low end {low} is above high end {high}")
        return (low, high)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(annotation)
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]} (valid keys here: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    return cls(**kwargs)


def _check_unit_range(key: str, value: Range | float, low: float = 0.0, high: float = 1.0) -> None:
    values = value if isinstance(value, tuple) else (value,)
    if any(not (low <= v <= high) for v in values):
        raise ConfigError(f"{key}: values must lie in [{low:g}, {high:g}], got {value!r}")


def _validate_light(light: LightConfig) -> None:
    unknown = sorted(set(light.setups) - set(LIGHT_SETUPS))
    if unknown:
        raise ConfigError(f"degradation.light.setups: unknown setup {unknown[0]} (valid: {', '.join(LIGHT_SETUPS)})")
    if any(weight < 0 for weight in light.setups.values()) or sum(light.setups.values()) <= 0:
        raise ConfigError("degradation.light.setups: weights must not be negative and at least one must be positive")
    for name in ("key_kelvin", "fill_kelvin", "rim_kelvin"):
        _check_unit_range(f"degradation.light.{name}", getattr(light, name), 1667.0, 25000.0)
    _check_unit_range("degradation.light.tint", light.tint, 0.0, 0.5)
    _check_unit_range("degradation.light.fill_ratio", light.fill_ratio, 0.0, 2.0)
    _check_unit_range("degradation.light.rim_ratio", light.rim_ratio, 0.0, 3.0)
    _check_unit_range("degradation.light.key_radius_deg", light.key_radius_deg, 0.0, 30.0)
    _check_unit_range("degradation.light.occlusion", light.occlusion)
    if light.setups.get("environment_map", 0) > 0:
        from .ops.environments import environment_maps_in

        if not light.environment_maps:
            raise ConfigError("degradation.light.environment_maps: the environment_map setup needs a folder of "
                              ".hdr / .exr maps")
        try:
            environment_maps_in(light.environment_maps)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _validate_caption(caption: CaptionConfig) -> None:
    if not caption.model.strip():
        raise ConfigError("caption.model: must name a Hub model id or a local folder")
    if not caption.prompt.strip():
        raise ConfigError("caption.prompt: must not be empty")
    if not 1 <= caption.max_new_tokens <= 1024:
        raise ConfigError(f"caption.max_new_tokens: must be 1 to 1024, got {caption.max_new_tokens}")
    if caption.batch_size < 1:
        raise ConfigError(f"caption.batch_size: must be at least 1, got {caption.batch_size}")
    if caption.image_side != 0 and caption.image_side < 28:
        raise ConfigError(f"caption.image_side: must be 0 (as stored) or at least 28 pixels, got {caption.image_side}")


def validate(config: BuildConfig) -> BuildConfig:
    """Range and consistency checks that types alone cannot express; returns ``config`` or raises ConfigError."""
    from .ops.patterns import PATTERN_FAMILIES

    if config.resolution < 16:
        raise ConfigError(f"resolution: must be at least 16 pixels, got {config.resolution}")
    if config.reference_resolution < 16:
        raise ConfigError(f"reference_resolution: must be at least 16 pixels, got {config.reference_resolution}")
    _check_unit_range("segmentation.min_coverage", config.segmentation.min_coverage)
    seg = config.segmentation
    for key in ("score_threshold", "mask_threshold", "detector_threshold", "mediapipe_threshold"):
        _check_unit_range(f"segmentation.{key}", getattr(seg, key))
    if seg.max_people < 1:
        raise ConfigError(f"segmentation.max_people: must be at least 1, got {seg.max_people}")
    if not seg.text_prompt.strip():
        raise ConfigError("segmentation.text_prompt: must not be empty")
    for key in ("segmentation.sam3_model", "segmentation.sam2_model", "normals.depth_model", "normals.normals_model",
                "albedo.intrinsic_model"):
        section, name = key.split(".")
        if not getattr(getattr(config, section), name).strip():
            raise ConfigError(f"{key}: must name a Hub model id or a local folder")
    for key in ("albedo.intrinsic_steps", "albedo.intrinsic_ensemble", "normals.normals_steps",
                "normals.normals_ensemble"):
        section, name = key.split(".")
        if not 1 <= getattr(getattr(config, section), name) <= 50:
            raise ConfigError(f"{key}: must be 1 to 50, got {getattr(getattr(config, section), name)}")
    _check_unit_range("normals.depth_relief", config.normals.depth_relief, 0.01, 4.0)
    _check_unit_range("normals.face_smoothing", config.normals.face_smoothing, 0.0, 0.2)
    _check_unit_range("normals.face_feather", config.normals.face_feather, 0.0, 0.5)
    if config.normals.face_render_side < 64:
        raise ConfigError("normals.face_render_side: must be at least 64")
    if config.segmentation.classical.work_size < 64:
        raise ConfigError("segmentation.classical.work_size: must be at least 64")
    if config.segmentation.classical.grabcut_iterations < 1:
        raise ConfigError("segmentation.classical.grabcut_iterations: must be at least 1")
    albedo = config.albedo
    if not albedo.retinex_scales or any(s <= 0 for s in albedo.retinex_scales):
        raise ConfigError(f"albedo.retinex_scales: need one or more positive sigmas, got {albedo.retinex_scales}")
    _check_unit_range("albedo.color_balance_percent", albedo.color_balance_percent, 0.0, 49.0)
    _check_unit_range("albedo.blend_range", albedo.blend_range)
    _check_unit_range("albedo.robust_tau", albedo.robust_tau, 0.01, 5.0)
    if not 0 <= albedo.robust_iterations <= 10:
        raise ConfigError(f"albedo.robust_iterations: must be 0 to 10, got {albedo.robust_iterations}")
    if albedo.bilateral_diameter < 1 or albedo.bilateral_diameter % 2 == 0:
        raise ConfigError(f"albedo.bilateral_diameter: must be a positive odd integer, got {albedo.bilateral_diameter}")
    _check_unit_range("normals.inflation_sigma", config.normals.inflation_sigma, 1e-3, 1.0)
    _check_unit_range("normals.edge_tilt_deg", config.normals.edge_tilt_deg, 0.0, 89.0)

    deg = config.degradation
    unknown = sorted(set(deg.weights) - set(DEGRADATION_TYPES))
    if unknown:
        raise ConfigError(f"degradation.weights: unknown type {unknown[0]} (valid: {', '.join(DEGRADATION_TYPES)})")
    for name, weight in deg.weights.items():
        if weight < 0:
            raise ConfigError(f"degradation.weights.{name}: must not be negative, got {weight}")
    if sum(deg.weights.values()) <= 0:
        raise ConfigError("degradation.weights: at least one weight must be positive")
    _check_unit_range("degradation.light.elevation_deg", deg.light.elevation_deg, 0.0, 90.0)
    _check_unit_range("degradation.light.azimuth_deg", deg.light.azimuth_deg, -360.0, 720.0)
    _validate_light(deg.light)
    _check_unit_range("degradation.soft_shading.ambient", deg.soft_shading.ambient)
    _check_unit_range("degradation.hard_shadow.ambient", deg.hard_shadow.ambient)
    _check_unit_range("degradation.specular.ambient", deg.specular.ambient)
    _check_unit_range("degradation.specular.intensity", deg.specular.intensity, 0.0, 4.0)
    if deg.specular.shininess[0] < 1:
        raise ConfigError(f"degradation.specular.shininess: must be at least 1, got {deg.specular.shininess}")
    for name, pattern in (("soft_shading", deg.soft_shading.pattern), ("hard_shadow", deg.hard_shadow.pattern)):
        key = f"degradation.{name}.pattern"
        _check_unit_range(f"{key}.probability", pattern.probability)
        _check_unit_range(f"{key}.opacity", pattern.opacity)
        _check_unit_range(f"{key}.softness", pattern.softness)
        if pattern.blur_kernel_px[0] < 1:
            raise ConfigError(f"{key}.blur_kernel_px: must be at least 1 pixel, got {pattern.blur_kernel_px}")
        bad = [f for f in pattern.families if f not in PATTERN_FAMILIES]
        if bad:
            raise ConfigError(f"{key}.families: unknown family {bad[0]} (valid: {', '.join(PATTERN_FAMILIES)})")
    if deg.hard_shadow.pattern.probability > 0 and deg.weights.get("hard_shadow", 0) > 0:
        if not deg.hard_shadow.pattern.families:
            raise ConfigError("degradation.hard_shadow.pattern.families: hard_shadow is enabled but has no families")
    if config.recombination.feather_px < 0:
        raise ConfigError(f"recombination.feather_px: must not be negative, got {config.recombination.feather_px}")
    _validate_caption(config.caption)
    out = config.output
    if out.preview_rows < 0:
        raise ConfigError(f"output.preview_rows: must not be negative, got {out.preview_rows}")
    _check_unit_range("output.png_compress_level", out.png_compress_level, 0, 9)
    _check_unit_range("output.image_quality", out.image_quality, 1, 100)
    if len(out.dataset_version.split(".")) != 3 or not all(p.isdigit() for p in out.dataset_version.split(".")):
        raise ConfigError(
            f"output.dataset_version: must be a semantic version MAJOR.MINOR.PATCH, got {out.dataset_version}"
        )
    return config


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("weights", "setups"):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _preset_data(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    text = resources.files("relight_datasets.presets").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    base = data.pop("extends", None)  # a preset may be written as changes to another
    return _merge(_preset_data(base), data) if base else data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], parsed value); the value is read as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({error.__class__.__name__})") from None
    return parts, value


def load_config(
    preset: str = "mvp", config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> BuildConfig:
    """Preset, then ``config_file`` merged over it, then ``key=value`` overrides; validated."""
    data = _preset_data(preset)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"--config {path}: the top level must be a mapping")
        data = _merge(data, user)
    for text in overrides:
        parts, value = parse_override(text)
        patch: dict[str, Any] = value
        for part in reversed(parts):
            patch = {part: patch}
        data = _merge(data, patch)
    return validate(_build(BuildConfig, data))


def config_from_dict(data: dict[str, Any]) -> BuildConfig:
    """A validated config from a plain dict, e.g. one recorded in a dataset card."""
    return validate(_build(BuildConfig, data))

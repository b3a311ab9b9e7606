"""The dataset schema (DESIGN section 2), declared once."""

from __future__ import annotations

from datasets import Features, Image, List, Value

from ..relighting import LABEL_SHAPES
from ..transforms.base import IMAGE_COLUMNS

METHOD_COLUMNS = ("segmentation_method", "normals_method", "albedo_method", "degradation_type", "light_setup")


def _label_feature(shape: tuple[int, ...] | None):
    """A lighting label's feature: text, a float32 scalar, or (nested) fixed-length float32 lists."""
    if shape is None:
        return Value("string")
    feature = Value("float32")
    for length in reversed(shape):
        feature = List(feature, length=length)
    return feature


FEATURES = Features(
    {
        "image_id": Value("string"),
        "source": Value("string"),
        **{name: Image() for name in IMAGE_COLUMNS},
        "segmentation_method": Value("string"),
        "segmentation_score": Value("float32"),
        "mask_coverage": Value("float32"),
        "normals_method": Value("string"),
        "albedo_method": Value("string"),
        "albedo_blend_ratio": Value("float32"),
        **{name: _label_feature(shape) for name, shape in LABEL_SHAPES.items()},
        "caption": Value("string"),
        "seed": Value("int64"),
    }
)
"""Columns of every row of a ``full`` build. ``degradation_params`` is a JSON object of the drawn values no other
column holds (each light's angles, size and tint, the environment, the pattern's geometry, the specular exponent)."""

LAYOUTS = ("full", "compact")
REGENERATED_COLUMNS = ("degraded", "composite")
"""What a ``compact`` build leaves out: :func:`relight_datasets.regenerate_pairs` remakes them bit for bit."""


def features_for(layout: str) -> Features:
    """The stored columns of a build with ``output.layout`` = ``layout`` (``full`` or ``compact``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (valid: {', '.join(LAYOUTS)})")
    dropped = REGENERATED_COLUMNS if layout == "compact" else ()
    return Features({name: feature for name, feature in FEATURES.items() if name not in dropped})

COLUMN_DESCRIPTIONS = {
    "image_id": "stable id of the source image (path relative to the source folder, or split/row index)",
    "source": "where the row came from: `folder` or `csv` (local; the path is not recorded), or the Hub source",
    "input": "the source photo, RGB, long side at most the build resolution",
    "mask": "person mask, mode L, 255 = person",
    "albedo": "lighting removed from the person (black outside the mask)",
    "degraded": "the albedo under the new light (black outside the mask)",
    "composite": "the relit person over the background: the training target pair of `input`",
    "normals": "surface normals, RGB = (n + 1) / 2 with x right, y up, z towards the camera",
    "segmentation_method": "what produced the mask",
    "segmentation_score": "segmenter confidence in [0, 1]",
    "mask_coverage": "fraction of the image inside the mask",
    "normals_method": "what produced the normals",
    "albedo_method": "retinex, lab or intrinsic (a Marigold intrinsic-image model)",
    "albedo_blend_ratio": "fraction of the original image blended back into the albedo",
    "degradation_type": "soft_shading, hard_shadow (a shadow pattern blocks the key light) or specular",
    "light_setup": "single, two_point, three_point, outdoor (sun and sky), overcast, indoor (window and lamps) or "
                   "environment_map",
    "light_direction": "unit vector towards the key light (x right, y up, z towards the camera); without a key "
                       "light, where the environment's light comes from most",
    "ambient": "share of the environment light on a camera-facing surface (the key light has 1 - ambient)",
    "light_directions": "3 x 3: unit vectors towards the key, fill and rim lights (zeros where absent)",
    "light_colors": "3 x 3: linear RGB of the key, fill and rim lights (luminance 1; zeros where absent)",
    "light_kelvin": "colour temperatures of the key, fill and rim lights in kelvin (0 where absent)",
    "light_intensities": "irradiance of the key, fill and rim lights on a surface facing them, after exposure",
    "sh_irradiance": "27 = 3 x 9: second-order spherical-harmonics irradiance of all the light, linear RGB after "
                     "exposure, channel-major (docs/gallery.md gives the basis)",
    "exposure": "factor that keeps the person's mean luminance that of the photo",
    "shadow_pattern": "family of the shadow pattern on the key light, empty without one",
    "specular_intensity": "strength of the specular highlight (0 without one)",
    "degradation_params": "JSON: each light's angles, size and tint, the environment, pattern geometry, specular",
    "instruction": "plain-language description of the new light",
    "caption": "what a vision-language model says of the composite (the person, the scene, the light); empty when "
               "the build ran without captions",
    "seed": "global build seed; per-row randomness derives from (seed, image_id)",
}

"""The dataset schema (DESIGN section 2), declared once."""

from __future__ import annotations

from datasets import Features, Image, List, Value

from ..transforms.base import IMAGE_COLUMNS

METHOD_COLUMNS = ("segmentation_method", "normals_method", "albedo_method", "degradation_type")

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
        "degradation_type": Value("string"),
        "light_direction": List(Value("float32"), length=3),
        "ambient": Value("float32"),
        "degradation_params": Value("string"),
        "instruction": Value("string"),
        "seed": Value("int64"),
    }
)
"""Columns of every row of a ``full`` build. ``degradation_params`` is a JSON object (its keys depend on the
degradation type)."""

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
    "albedo_method": "retinex or lab",
    "albedo_blend_ratio": "fraction of the original image blended back into the albedo",
    "degradation_type": "soft_shading, hard_shadow or specular",
    "light_direction": "unit vector towards the light (x right, y up, z towards the camera)",
    "ambient": "ambient term of the Lambertian shading",
    "degradation_params": "JSON: elevation/azimuth in degrees, shadow pattern and specular parameters",
    "instruction": "plain-language description of the new light",
    "seed": "global build seed; per-row randomness derives from (seed, image_id)",
}

"""Stage 4 (text): a lighting instruction describing each row's new light, derived from its parameters."""

from __future__ import annotations

import json
import math

from ..ops.lighting import describe_direction
from .base import Stage

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


def lighting_instruction(degradation_type: str, light: list[float], ambient: float, params: dict) -> str:
    """E.g. ``"soft light from the upper left, gentle shadows, with soft cloud shadows"``."""
    x, y, z = light
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, z))))
    azimuth = math.degrees(math.atan2(y, x)) % 360
    quality = "soft" if degradation_type == "soft_shading" else "directional"
    shadows = "very gentle shadows" if ambient >= 0.78 else "gentle shadows" if ambient >= 0.6 else "deep shadows"
    text = f"{quality} light from {describe_direction(elevation, azimuth)}, {shadows}"
    pattern = params.get("pattern")
    if pattern:
        text += f", with {_PATTERN_WORDS.get(pattern['family'], 'patterned shadows')}"
    if params.get("specular"):
        text += ", glossy highlights on the skin"
    return text


class InstructionStage(Stage):
    """``instruction``: plain-language description of the new light (from ``degradation_type``, ``light_direction``,
    ``ambient`` and ``degradation_params``)."""

    name = "instruction"
    outputs = ("instruction",)

    def process(self, batch, rows, outputs, skip, rank):
        for row in rows:
            outputs["instruction"][row] = lighting_instruction(
                batch["degradation_type"][row], batch["light_direction"][row], batch["ambient"][row],
                json.loads(batch["degradation_params"][row]),
            )

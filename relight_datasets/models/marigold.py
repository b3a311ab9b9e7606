"""Marigold (``diffusers``) dense predictors: intrinsic image decomposition for the albedo, and surface normals.

Each takes a batch of equal-sized ``B x 3 x H x W`` uint8 images on the pipeline's device and runs it through one
pipeline call (every denoising step sees the whole batch and its ensemble members), at the checkpoint's processing
resolution, resized back to ``H x W``. The starting noise of each row is drawn from that row's own
generator (``generators``: one CPU generator per row and ensemble member, row-major), so a row's prediction does not
depend on the other rows of its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.color import linear_to_srgb
from ..ops.normals import facing_camera
from .loading import ModelUnavailable, load_diffusers_pipeline


class _MarigoldPredictor:
    """What both predictors share: the loaded pipeline, the number of denoising steps and ensemble members."""

    role = "marigold"
    pipeline_class = ""

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype, steps: int, ensemble: int):
        self.loaded = load_diffusers_pipeline(self.role, self.pipeline_class, model_id, device, dtype)
        self.steps, self.ensemble = steps, ensemble

    def predict(self, images: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """The pipeline's ``prediction`` for ``images`` (``B x 3 x H x W`` uint8), float32 ``B * targets x 3 x H x W``.

        The images are resized here, in float32, so that their long side is the checkpoint's processing resolution
        (as the pipeline would, but its antialiased resize has no bfloat16 kernel on the CPU), the pipeline runs at
        that size, and its prediction is resized back to ``H x W`` bilinearly, in float32."""
        if len(generators) != len(images) * self.ensemble:
            raise ValueError(f"need {len(images) * self.ensemble} generators (rows x ensemble), got {len(generators)}")
        height, width = images.shape[-2:]
        side = self.loaded.model.default_processing_resolution or max(height, width)
        size = (height * side // max(height, width), width * side // max(height, width))
        pixels = F.interpolate(images.to(torch.float32) / 255, size=size, mode="bilinear", antialias=True,
                               align_corners=False).clamp_(0, 1)
        prediction = self.loaded.model(pixels, num_inference_steps=self.steps, ensemble_size=self.ensemble,
                                       processing_resolution=0, match_input_resolution=False,
                                       batch_size=len(generators), generator=generators, output_type="pt").prediction
        return F.interpolate(prediction.to(torch.float32), size=(height, width), mode="bilinear", align_corners=False)


class IntrinsicAlbedo(_MarigoldPredictor):
    """Albedo from ``MarigoldIntrinsicsPipeline`` (``prs-eth/marigold-iid-appearance-v1-1``: albedo + material;
    ``prs-eth/marigold-iid-lighting-v1-1``: albedo + shading + residual). The checkpoint's ``target_properties`` name
    the albedo among its targets and say whether it is predicted in sRGB or in linear light (then encoded to sRGB
    here). Raises :class:`~relight_datasets.models.ModelUnavailable` when the checkpoint predicts no albedo."""

    role = "intrinsic albedo"
    method = "intrinsic"
    pipeline_class = "MarigoldIntrinsicsPipeline"

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype, steps: int, ensemble: int):
        super().__init__(model_id, device, dtype, steps, ensemble)
        properties = self.loaded.model.target_properties or {}
        names = list(properties.get("target_names", []))
        if "albedo" not in names:
            raise ModelUnavailable(self.role, model_id, f"the checkpoint predicts {names or 'no named targets'}, "
                                   "not an albedo")
        self.index, self.targets = names.index("albedo"), len(names)
        self.linear = properties.get("albedo", {}).get("prediction_space", "srgb") == "linear"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """``B x 3 x H x W`` uint8 -> sRGB albedo ``B x 3 x H x W`` float32 in [0, 1], on the images' device."""
        prediction = self.predict(images, generators)
        albedo = prediction.view(len(images), self.targets, *prediction.shape[1:])[:, self.index]
        return (linear_to_srgb(albedo) if self.linear else albedo).clamp_(0, 1)


class MarigoldNormals(_MarigoldPredictor):
    """Surface normals from ``MarigoldNormalsPipeline`` (``prs-eth/marigold-normals-v1-1``). Marigold's frame is
    this package's (x right, y up, z towards the viewer: diffusers' Marigold guide and ``visualize_normals``), so
    the vectors are used as they are; the few facing away from the camera are folded onto the image plane."""

    role = "marigold normals"
    method = "marigold"
    pipeline_class = "MarigoldNormalsPipeline"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """``B x 3 x H x W`` uint8 -> unit normals ``B x 3 x H x W`` float32, on the images' device."""
        return facing_camera(self.predict(images, generators))

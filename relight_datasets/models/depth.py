"""Relative depth from a monocular depth network (``AutoModelForDepthEstimation``: Depth Anything, DPT/MiDaS, ...)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .loading import load_pretrained

METRIC_MODEL_TYPES = ("zoedepth", "depth_pro")
"""Architectures whose output is metric depth (larger = farther) rather than relative inverse depth."""


class DepthEstimator:
    """Depth for a batch of ``3 x H x W`` uint8 image tensors on the model's device (one size per call; a
    ``B x 3 x H x W`` tensor is such a batch) -> ``B x 1 x H x W`` float32 on that device, in the model's own units,
    whatever the model's dtype (a bf16 model's output is cast here, at the model's boundary). ``larger_is_closer``
    says how to read them: True for relative inverse-depth models (Depth Anything, DPT/MiDaS), False for metric
    ones."""

    method = "depth"

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype):
        self.loaded = load_pretrained("depth", "AutoModelForDepthEstimation", "AutoImageProcessor", model_id, device,
                                      dtype)
        config = self.loaded.model.config
        metric = getattr(config, "depth_estimation_type", "relative") == "metric"
        self.larger_is_closer = not (metric or config.model_type in METRIC_MODEL_TYPES)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) != 1:
            raise ValueError(f"one image size per call, got {sorted(sizes)}")
        depth = self.loaded.model(**self.loaded.preprocess(images)).predicted_depth.to(torch.float32)
        return F.interpolate(depth.unsqueeze(1), size=sizes.pop(), mode="bicubic", align_corners=False)

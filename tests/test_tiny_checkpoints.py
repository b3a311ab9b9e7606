"""The tiny random checkpoints load through the ordinary ``from_pretrained`` path and run a batched forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from relight_datasets.testing import main, make_tiny_checkpoints, make_tiny_sam2

NAMES = ("sam3", "sam2", "detector", "depth", "dpt", "captioner")
KEY = "vision_encoder.backbone.blocks.0.attn.qkv.weight"  # a SAM2 weight drawn from the seeded generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Two RGB images of different content and size: noise (96 x 96) and a colour ramp (80 x 120)."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    y, x = np.mgrid[:80, :120]
    ramp = np.stack([2 * x, 3 * y, x + y], axis=-1).astype(np.uint8)
    return [noise, ramp]


def _finite(*tensors: torch.Tensor) -> bool:
    return all(torch.isfinite(tensor.float()).all().item() for tensor in tensors)


def test_folders_are_small(tiny: dict[str, Path]) -> None:
    assert tuple(tiny) == NAMES
    for folder in tiny.values():
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        assert sum(file.stat().st_size for file in folder.iterdir()) < 5_000_000


def test_sam3(tiny: dict[str, Path], images: list[np.ndarray]) -> None:
    from transformers import Sam3Model, Sam3Processor

    model = Sam3Model.from_pretrained(tiny["sam3"]).eval()
    processor = Sam3Processor.from_pretrained(tiny["sam3"])
    inputs = processor(images=images, text=["person", "a photo of a person"], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    queries = model.config.detr_decoder_config.num_queries
    assert outputs.pred_logits.shape == (2, queries)
    assert outputs.pred_boxes.shape == (2, queries, 4)
    assert outputs.pred_masks.shape[:2] == (2, queries)
    assert outputs.presence_logits.shape == (2, 1)
    assert _finite(outputs.pred_logits, outputs.pred_boxes, outputs.pred_masks, outputs.presence_logits)
    results = processor.post_process_instance_segmentation(
        outputs, threshold=0.0, target_sizes=inputs["original_sizes"].tolist()
    )
    assert [tuple(result["masks"].shape[1:]) for result in results] == [(96, 96), (80, 120)]


def test_sam2_box_prompts(tiny: dict[str, Path], images: list[np.ndarray]) -> None:
    from transformers import Sam2Model, Sam2Processor

    model = Sam2Model.from_pretrained(tiny["sam2"]).eval()
    processor = Sam2Processor.from_pretrained(tiny["sam2"])
    boxes = [[[10, 10, 60, 70]], [[5, 5, 100, 60]]]
    inputs = processor(images=images, input_boxes=boxes, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    assert outputs.pred_masks.shape[:3] == (2, 1, 1)
    assert outputs.iou_scores.shape == (2, 1, 1)
    assert _finite(outputs.pred_masks, outputs.iou_scores)
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
    assert [tuple(mask.shape) for mask in masks] == [(1, 1, 96, 96), (1, 1, 80, 120)]


def test_detector(tiny: dict[str, Path], images: list[np.ndarray]) -> None:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny["detector"]).eval()
    processor = AutoProcessor.from_pretrained(tiny["detector"])
    inputs = processor(images=images, text=["person.", "person."], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits.shape[:2] == outputs.pred_boxes.shape[:2] == (2, model.config.num_queries)
    assert _finite(outputs.pred_boxes, outputs.logits[..., : inputs["input_ids"].shape[1]])  # -inf past the text
    results = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(96, 96), (80, 120)]
    )
    assert len(results) == 2 and {"scores", "boxes", "labels"} <= set(results[0])


@pytest.mark.parametrize("name", ["depth", "dpt"])
def test_depth(tiny: dict[str, Path], images: list[np.ndarray], name: str) -> None:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(tiny[name]).eval()
    processor = AutoImageProcessor.from_pretrained(tiny[name])
    crops = [image[:80, :96] for image in images]  # keep_aspect_ratio resizing cannot batch different sizes
    inputs = processor(crops, return_tensors="pt")
    with torch.no_grad():
        depth = model(**inputs).predicted_depth
    assert depth.shape == (2, *inputs["pixel_values"].shape[-2:])
    assert _finite(depth)


def test_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = make_tiny_checkpoints(tmp_path)
    for name in NAMES:
        first, second = load_file(tiny[name] / "model.safetensors"), load_file(again[name] / "model.safetensors")
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), name
    other = make_tiny_sam2(tmp_path / "sam2-seed1", seed=1)
    assert not torch.equal(*(load_file(folder / "model.safetensors")[KEY] for folder in (tiny["sam2"], other)))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-tiny-checkpoints", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}: {tmp_path / name}" for name in NAMES]


def test_full_size_configs_match_the_real_models_parameter_counts():
    """The GPU benchmark's random checkpoints have the real architectures: SAM3 has about 840 M parameters and
    Depth Anything V2 Small 24.8 M (counted on the meta device: nothing is allocated)."""
    from transformers import DepthAnythingForDepthEstimation, Sam3Model

    from relight_datasets.testing import full_size_depth_config, full_size_sam3_config

    with torch.device("meta"):
        sam3 = Sam3Model(full_size_sam3_config()[0])
        depth = DepthAnythingForDepthEstimation(full_size_depth_config())
    assert sum(p.numel() for p in sam3.parameters()) == pytest.approx(840e6, rel=0.02)
    assert sum(p.numel() for p in depth.parameters()) == pytest.approx(24.8e6, rel=0.02)


def test_full_size_captioner_config_matches_qwen25_vl_3b():
    """Qwen2.5-VL-3B-Instruct has 3.75 B parameters (its Hub page's count, embeddings tied)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from relight_datasets.testing import full_size_captioner_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(full_size_captioner_config()[0])
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(3.75e9, rel=0.01)

"""The tiny random checkpoints load through the ordinary ``from_pretrained`` path and run a batched forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from relight_datasets.testing import main, make_tiny_checkpoints, make_tiny_sam2

NAMES = ("sam3", "sam2", "detector", "depth", "dpt", "intrinsics", "surface-normals", "captioner")
PIPELINES = ("intrinsics", "surface-normals")
"""The diffusers pipeline folders (``model_index.json`` and one sub-folder per component)."""
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


def _weights(folder: Path) -> dict[str, Path]:
    """Every safetensors file under ``folder``, by its path relative to it."""
    return {str(file.relative_to(folder)): file for file in sorted(folder.rglob("*.safetensors"))}


def test_folders_are_small(tiny: dict[str, Path]) -> None:
    assert tuple(tiny) == NAMES
    for name, folder in tiny.items():
        if name in PIPELINES:
            assert (folder / "model_index.json").is_file()
            components = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                          "text_encoder/model.safetensors"}
            assert set(_weights(folder)) == components
        else:
            assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        assert sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) < 5_000_000


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


@pytest.mark.parametrize(("name", "pipeline_class"), [("intrinsics", "MarigoldIntrinsicsPipeline"),
                                                      ("surface-normals", "MarigoldNormalsPipeline")])
def test_marigold_pipelines(tiny: dict[str, Path], images: list[np.ndarray], name: str, pipeline_class: str) -> None:
    import diffusers

    pipeline = getattr(diffusers, pipeline_class).from_pretrained(tiny[name])
    pipeline.set_progress_bar_config(disable=True)
    batch = np.stack([image[:80, :96] for image in images])  # one size per call
    generator = torch.Generator(device="cpu").manual_seed(0)
    prediction = pipeline(batch, num_inference_steps=2, batch_size=2, generator=generator, output_type="pt").prediction
    targets = len(pipeline.target_properties["target_names"]) if name == "intrinsics" else 1
    assert prediction.shape == (2 * targets, 3, 80, 96) and _finite(prediction)


def test_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = make_tiny_checkpoints(tmp_path)
    for name in NAMES:
        assert _weights(tiny[name]).keys() == _weights(again[name]).keys()
        for file, path in _weights(tiny[name]).items():
            first, second = load_file(path), load_file(_weights(again[name])[file])
            assert first.keys() == second.keys()
            assert all(torch.equal(first[key], second[key]) for key in first), f"{name}/{file}"
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


def test_full_size_marigold_has_stable_diffusion_2s_parameter_counts():
    """The Marigold checkpoints are fine-tuned Stable Diffusion 2: UNet 866 M parameters (its first convolution
    widened for the image latent), VAE 83.7 M, OpenCLIP-H text encoder 340 M (meta device: nothing allocated)."""
    from relight_datasets.testing import _marigold_components

    expected = {"unet": 865.9e6, "vae": 83.65e6, "text_encoder": 340.4e6}
    for targets in (1, 2):
        parts = _marigold_components(targets, tiny=False)
        with torch.device("meta"):
            counts = {name: sum(p.numel() for p in parts[name]().parameters()) for name in expected}
        assert counts == pytest.approx(expected, rel=0.001)


def test_full_size_captioner_config_matches_qwen25_vl_3b():
    """Qwen2.5-VL-3B-Instruct has 3.75 B parameters (its Hub page's count, embeddings tied)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from relight_datasets.testing import full_size_captioner_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(full_size_captioner_config()[0])
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(3.75e9, rel=0.01)

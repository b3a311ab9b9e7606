"""The shipped learned person segmenter: its fusion ops on scenes with a known answer, and the segmentation stage's
``mediapipe`` method on synthetic composites of the fixture faces (a pasted person with a known alpha)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from relight_datasets.config import load_config
from relight_datasets.evaluation import evaluate_masks
from relight_datasets.models import ModelUnavailable, mediapipe
from relight_datasets.ops.learned_segmentation import mirror_consensus, person_mask_from_probability
from relight_datasets.transforms.base import uint8_to_unit, upload_images
from relight_datasets.transforms.segmentation import SegmentationStage

MISSING_MODELS = ["segmentation.sam3_model=/nonexistent/sam3", "segmentation.sam2_model=/nonexistent/sam2"]


def disc_scene(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """An orange disc on a blue background (``size x size x 3`` uint8) and its exact 0/1 mask."""
    rows, cols = np.mgrid[0:size, 0:size]
    truth = ((rows - 0.45 * size) ** 2 + (cols - 0.5 * size) ** 2 <= (0.3 * size) ** 2).astype(np.uint8)
    image = np.where(truth[..., None] > 0, np.uint8([220, 140, 60]), np.uint8([40, 70, 150])).astype(np.uint8)
    return image, truth


def coarse_probability(truth: np.ndarray, grid: int = 32) -> np.ndarray:
    """What a model that sees ``grid`` pixels gives: the mask averaged onto the grid, upsampled bilinearly."""
    small = cv2.resize(truth.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, truth.shape[::-1], interpolation=cv2.INTER_LINEAR)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a > 0, b > 0).sum() / np.logical_or(a > 0, b > 0).sum())


def test_mirror_consensus_keeps_what_both_views_agree_on():
    probability = np.array([[0.9, 0.8, 0.1]], dtype=np.float32)
    mirrored = np.array([[0.2, 0.7, 0.95]], dtype=np.float32)  # the mirrored image's map: column 0 is column 2
    np.testing.assert_allclose(mirror_consensus(probability, mirrored), [[0.9, 0.7, 0.1]])
    with pytest.raises(ValueError, match="differ in shape"):
        mirror_consensus(probability, mirrored[:, :2])


def test_guided_refinement_snaps_a_coarse_probability_to_the_image_edge():
    image, truth = disc_scene()
    probability = coarse_probability(truth)
    refined = person_mask_from_probability(image, probability, threshold=0.5)
    assert set(np.unique(refined)) <= {0, 255}
    assert iou(refined, truth) > 0.99
    assert iou(refined, truth) > iou(probability >= 0.5, truth)


def test_specks_are_dropped_and_small_holes_filled():
    image, truth = disc_scene()
    probability = truth.astype(np.float32)
    probability[5:9, 5:9] = 1.0                               # a 16 px speck: 0.02 % of the image
    probability[110:116, 125:131] = 0.0                       # a hole inside the person
    mask = person_mask_from_probability(image, probability)
    assert mask[5:9, 5:9].max() == 0
    assert mask[110:116, 125:131].min() == 255
    assert iou(mask, truth) > 0.99


def test_nobody_gives_an_empty_mask_and_bad_input_one_line_errors():
    image, truth = disc_scene(64)
    assert person_mask_from_probability(image, np.zeros(truth.shape, dtype=np.float32)).max() == 0
    with pytest.raises(ValueError, match="uint8 RGB"):
        person_mask_from_probability(image[..., 0], truth.astype(np.float32))
    with pytest.raises(ValueError, match="probability is"):
        person_mask_from_probability(image, truth[:32].astype(np.float32))


def test_mediapipe_masks_match_the_known_alpha_of_synthetic_composites(face_paths):
    arrays = [np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS))
              for path in face_paths[:6]]
    faces = uint8_to_unit(upload_images(arrays, torch.device("cpu")))
    learned = evaluate_masks(faces, load_config("mvp", overrides=["segmentation.method=mediapipe"]))
    classical = evaluate_masks(faces, load_config("mvp", overrides=["segmentation.method=classical"]))
    assert learned["iou"].min() > 0.9
    assert learned["iou"].mean() > 0.95
    assert learned["iou"].mean() > classical["iou"].mean() + 0.1
    assert learned["boundary_f"].mean() > classical["boundary_f"].mean()


def test_auto_takes_mediapipe_offline_and_keeps_every_person(face_paths):
    left, right = (np.asarray(Image.open(path).convert("RGB").resize((192, 192))) for path in face_paths[:2])
    pair = Image.fromarray(np.concatenate([left, right], axis=1))   # two people side by side
    stage = SegmentationStage(load_config("mvp", overrides=MISSING_MODELS), "cpu")
    rows = stage({"image_id": ["pair"], "input": [pair]})
    assert rows["segmentation_method"] == ["mediapipe"]
    assert [fallback["method"] for fallback in stage.describe()["fallbacks"]] == ["sam3", "sam2"]
    mask = np.asarray(rows["mask"][0]) > 0
    assert mask[:, :192].mean() > 0.3 and mask[:, 192:].mean() > 0.3
    assert 0.5 < rows["segmentation_score"][0] <= 1.0


def test_a_corrupted_model_file_falls_back_to_classical_under_auto_and_fails_when_forced(face_paths, monkeypatch):
    file_name, _ = mediapipe.MODEL_FILES["selfie_segmentation"]
    monkeypatch.setitem(mediapipe.MODEL_FILES, "selfie_segmentation", (file_name, "0" * 64))
    mediapipe.model_bytes.cache_clear()
    monkeypatch.setattr(mediapipe, "_thread_state", type(mediapipe._thread_state)())
    try:
        face = Image.open(face_paths[0]).convert("RGB").resize((160, 160))
        stage = SegmentationStage(load_config("mvp", overrides=MISSING_MODELS), "cpu")
        rows = stage({"image_id": ["face"], "input": [face]})
        assert rows["segmentation_method"] == ["classical"]
        fallback = stage.describe()["fallbacks"][-1]
        assert fallback["method"] == "mediapipe" and "sha256" in fallback["reason"]
        forced = SegmentationStage(load_config("mvp", overrides=["segmentation.method=mediapipe"]), "cpu")
        with pytest.raises(ModelUnavailable, match="selfie_segmentation.tflite.*sha256"):
            forced.prepare()
    finally:
        mediapipe.model_bytes.cache_clear()

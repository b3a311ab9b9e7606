"""The shipped MediaPipe models: hashes, loading from package data, and what they find on the fixture faces."""

from __future__ import annotations

import hashlib
import re
import threading
from importlib import resources

import cv2
import numpy as np
import pytest
from conftest import load_rgb

from relight_datasets.models import mediapipe as mp

# Mesh vertices at the corners of each eye (MediaPipe's canonical face mesh); their mean is the eye's centre.
RIGHT_EYE_CORNERS, LEFT_EYE_CORNERS = (33, 133), (362, 263)


def asset_bytes(file_name: str) -> bytes:
    return resources.files("relight_datasets.models").joinpath("assets", file_name).read_bytes()


@pytest.fixture(scope="module")
def faces(face_paths) -> list[np.ndarray]:
    return [load_rgb(path) for path in face_paths]


@pytest.fixture(scope="module")
def detections(faces) -> list[list[mp.Face]]:
    return [mp.detect_faces(image) for image in faces]


def test_notice_records_the_hash_of_every_shipped_file():
    notice = resources.files("relight_datasets.models").joinpath("assets", "NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and "mediapipe==0.10.21" in notice
    for name, (file_name, expected) in mp.MODEL_FILES.items():
        recorded = re.search(rf"^{re.escape(file_name)}\s+\S+\s+([0-9a-f]{{64}})$", notice, re.MULTILINE)
        assert recorded, f"{file_name} is not in NOTICE"
        assert recorded.group(1) == expected == hashlib.sha256(asset_bytes(file_name)).hexdigest()
        assert mp.model_bytes(name) == asset_bytes(file_name)


def test_a_corrupted_copy_is_refused_in_one_line():
    file_name, expected = mp.MODEL_FILES["face_detection"]
    corrupted = bytearray(asset_bytes(file_name))
    corrupted[len(corrupted) // 2] ^= 0xFF
    with pytest.raises(mp.ModelIntegrityError) as refused:
        mp.verified_model_bytes(bytes(corrupted), file_name, expected)
    message = str(refused.value)
    assert file_name in message and "\n" not in message


def test_the_anchors_tile_both_feature_maps():
    anchors = mp.ssd_anchor_centres()
    assert anchors.shape == (896, 2)
    fine, coarse = anchors[:512], anchors[512:]
    assert np.allclose(np.unique(fine[:, 0]), (np.arange(16) + 0.5) / 16)
    assert np.allclose(np.unique(coarse[:, 1]), (np.arange(8) + 0.5) / 8)
    assert np.all(fine[0] == fine[1]) and np.all(coarse[0] == coarse[5]) and not np.all(coarse[5] == coarse[6])


def test_the_detector_finds_one_centred_face_in_nearly_every_fixture(faces, detections):
    found = [(image, found[0]) for image, found in zip(faces, detections, strict=True) if len(found) == 1]
    assert len(found) >= len(faces) - 2, f"one face in only {len(found)} of {len(faces)} fixtures"
    for image, face in found:
        height, width = image.shape[:2]
        x0, y0, x1, y1 = face.box
        assert abs((x0 + x1) / 2 - width / 2) < 0.15 * width and abs((y0 + y1) / 2 - height / 2) < 0.2 * height
        assert 0.3 * width < x1 - x0 < 0.9 * width
        eyes = face.keypoints[:2]
        assert np.all((eyes[:, 0] > x0) & (eyes[:, 0] < x1) & (eyes[:, 1] > y0) & (eyes[:, 1] < y1))
        # The subject's right eye is on the image's left in an unmirrored photo.
        assert eyes[0, 0] < eyes[1, 0]
        assert 0.5 <= face.score <= 1.0


def test_nothing_is_found_on_a_blank_image():
    grey = np.full((160, 160, 3), 128, dtype=np.uint8)
    assert mp.detect_faces(grey) == []
    assert float(mp.person_probability([grey])[0].mean()) < 0.1


def test_letterboxing_maps_detections_back_to_the_original_pixels(faces, detections):
    index = next(i for i, found in enumerate(detections) if found)
    image, face = faces[index], detections[index][0]
    height, width = image.shape[:2]
    left = width // 4
    canvas = np.zeros((height, width + 2 * left, 3), dtype=np.uint8)
    canvas[:, left:left + width] = image
    (moved,) = mp.detect_faces(canvas)
    side = face.box[2] - face.box[0]
    shifted = np.asarray(face.box) + np.array([left, 0, left, 0])
    assert np.abs(np.asarray(moved.box) - shifted).max() < 0.06 * side
    assert np.abs(moved.keypoints - face.keypoints - np.array([left, 0])).max() < 0.06 * side


def test_landmarks_lie_in_the_crop_and_meet_the_detected_eyes(faces, detections):
    eye_errors = []
    for image, found in zip(faces, detections, strict=True):
        if not found:
            continue
        face = found[0]
        landmarks, presence = mp.face_landmarks(image, face)
        assert landmarks.shape == (468, 3) and landmarks.dtype == np.float32
        assert presence > 0.5
        centre, side, angle = mp.face_crop_frame(face)
        to_crop = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        in_crop = (landmarks[:, :2] - centre) @ to_crop.T
        assert np.abs(in_crop).max() < side / 2
        box_side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
        for corners, keypoint in ((RIGHT_EYE_CORNERS, face.keypoints[0]), (LEFT_EYE_CORNERS, face.keypoints[1])):
            eye_errors.append(np.linalg.norm(landmarks[list(corners), :2].mean(axis=0) - keypoint) / box_side)
    # The detector's eye keypoints are coarse on blurry faces; the mesh's eyes stay close to them.
    assert np.median(eye_errors) < 0.05 and max(eye_errors) < 0.2


def test_landmarks_follow_a_rotated_face(faces, detections):
    index = next(i for i, found in enumerate(detections) if found)
    image = faces[index]
    height, width = image.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), 20.0, 1.0)  # pixel-index convention
    rotated = cv2.warpAffine(image, rotation, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    landmarks, _ = mp.face_landmarks(image, detections[index][0])
    (face,) = mp.detect_faces(rotated)
    rotated_landmarks, _ = mp.face_landmarks(rotated, face)
    expected = (landmarks[:, :2] - 0.5) @ rotation[:, :2].T + rotation[:, 2] + 0.5
    box_side = detections[index][0].box[2] - detections[index][0].box[0]
    assert np.median(np.linalg.norm(rotated_landmarks[:, :2] - expected, axis=1)) < 0.03 * box_side
    assert np.corrcoef(rotated_landmarks[:, 2], landmarks[:, 2])[0, 1] > 0.95


def test_person_probability_covers_the_person(faces):
    small = cv2.resize(faces[0], (160, 120), interpolation=cv2.INTER_AREA)
    probabilities = mp.person_probability([faces[0], small])
    assert [p.shape for p in probabilities] == [faces[0].shape[:2], (120, 160)]
    for probability in probabilities:
        assert probability.dtype == np.float32 and probability.min() >= 0.0 and probability.max() <= 1.0
        height, width = probability.shape
        assert probability[height // 4:3 * height // 4, width // 4:3 * width // 4].mean() > 0.5


def run_all_models(images: list[np.ndarray]) -> list[tuple]:
    results = []
    for image in images:
        (probability,) = mp.person_probability([image])
        found = mp.detect_faces(image, min_score=0.3)
        landmarks = mp.face_landmarks(image, found[0])[0] if found else None
        results.append((probability, [(face.box, face.keypoints) for face in found], landmarks))
    return results


def test_two_threads_get_their_own_interpreters_and_the_same_results(faces):
    images = faces[:4]
    alone = run_all_models(images)
    results, interpreters = [None, None], [None, None]

    def work(slot: int) -> None:
        results[slot] = run_all_models(images)
        interpreters[slot] = [id(mp.interpreter(name)) for name in mp.MODEL_FILES]

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mine = [id(mp.interpreter(name)) for name in mp.MODEL_FILES]
    assert len({*mine, *interpreters[0], *interpreters[1]}) == 3 * len(mp.MODEL_FILES)
    for threaded in results:
        for (probability, found, landmarks), (probability_alone, found_alone, landmarks_alone) in zip(
                threaded, alone, strict=True):
            np.testing.assert_array_equal(probability, probability_alone)
            assert len(found) == len(found_alone)
            for (box, keypoints), (box_alone, keypoints_alone) in zip(found, found_alone, strict=True):
                assert box == box_alone
                np.testing.assert_array_equal(keypoints, keypoints_alone)
            np.testing.assert_array_equal(landmarks, landmarks_alone)

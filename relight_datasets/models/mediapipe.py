"""Three small MediaPipe models shipped with the package and run offline through LiteRT (``ai-edge-litert``).

- ``selfie_segmentation.tflite``: person probability from a 256 x 256 RGB image in [0, 1] (the image is stretched to
  the square, as MediaPipe's selfie-segmentation graph does); its output is already a probability.
- ``face_detection_short_range.tflite``: BlazeFace, 128 x 128 RGB in [-1, 1]; 896 SSD anchors, each with a box and
  six keypoints (see :data:`FACE_KEYPOINTS`), scores as logits.
- ``face_landmark.tflite``: a 468-point 3D face mesh from a 192 x 192 RGB face crop in [0, 1], plus a face-presence
  logit.

The files come from the ``mediapipe==0.10.21`` wheel (Apache-2.0; see ``assets/NOTICE``). Each is read from package
data once per process and refused unless its sha256 matches :data:`MODEL_FILES`. LiteRT interpreters are not
thread-safe, so every thread gets its own interpreter per model, created lazily on first use and kept for the
thread's life; each runs on one core.

Images are ``H x W x 3`` uint8 RGB arrays. Coordinates are continuous pixels: ``(0, 0)`` is the top-left corner of the
top-left pixel, so a pixel's centre is at ``(col + 0.5, row + 0.5)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from importlib import resources

import cv2
import numpy as np

MODEL_FILES = {
    "selfie_segmentation": ("selfie_segmentation.tflite",
                            "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
    "face_detection": ("face_detection_short_range.tflite",
                       "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_landmark": ("face_landmark.tflite",
                      "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
}
"""Model name -> (file in ``relight_datasets/models/assets``, sha256 recorded in ``assets/NOTICE``)."""

FACE_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
"""The detector's keypoints, in its output order. Right and left are the subject's: in an unmirrored photo of a
person facing the camera the right eye is the one on the image's left."""

SEGMENTATION_SIZE = 256
DETECTION_SIZE = 128
LANDMARK_SIZE = 192
NUM_LANDMARKS = 468

# SSD anchors of the short-range detector (MediaPipe's SsdAnchorsCalculator options for this model: 4 layers with
# strides 8, 16, 16, 16, one aspect ratio plus an interpolated scale, fixed anchor size). Layers that share a stride
# share a grid, so the anchors are 2 per cell on the 16 x 16 grid, then 6 per cell on the 8 x 8 grid: 512 + 384 = 896.
ANCHOR_GRIDS = ((16, 2), (8, 6))
"""(cells per side, anchors per cell) of each feature map, in the detector's output order."""
SCORE_LOGIT_CLIP = 100.0
FACE_CROP_SCALE = 1.5
"""Side of the square landmark crop, as a multiple of the detector box's longer side."""


class ModelIntegrityError(RuntimeError):
    """A shipped model file is missing or differs from the recorded hash."""


@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the image it was found in."""

    box: tuple[float, float, float, float]
    """``(x0, y0, x1, y1)``, continuous pixel coordinates."""
    score: float
    """Detection confidence in [0, 1]."""
    keypoints: np.ndarray
    """``6 x 2`` float32 ``(x, y)`` pixels, in :data:`FACE_KEYPOINTS` order."""


def verified_model_bytes(data: bytes, file_name: str, expected_sha256: str) -> bytes:
    """``data`` if its sha256 is ``expected_sha256``, else a one-line :class:`ModelIntegrityError` naming the file."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise ModelIntegrityError(f"{file_name}: sha256 {digest} differs from the recorded {expected_sha256} "
                                  "(reinstall relight-datasets)")
    return data


@cache
def model_bytes(name: str) -> bytes:
    """The verified bytes of the shipped model ``name`` (a key of :data:`MODEL_FILES`), read once per process."""
    file_name, expected = MODEL_FILES[name]
    asset = resources.files(__package__).joinpath("assets", file_name)
    if not asset.is_file():
        raise ModelIntegrityError(f"{file_name}: missing from the package data (reinstall relight-datasets)")
    return verified_model_bytes(asset.read_bytes(), file_name, expected)


_thread_state = threading.local()
_native_stderr_lock = threading.Lock()
LITERT_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
"""What LiteRT's native code prints to stderr for every interpreter it creates; filtered out (no setting silences
it)."""


@contextlib.contextmanager
def _without_litert_notice():
    """Capture what native code writes to file descriptor 2 meanwhile and write it back to stderr without
    :data:`LITERT_NOTICE` lines. Held under a lock: one capture at a time."""
    with _native_stderr_lock, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not line.startswith(LITERT_NOTICE)]
            if kept:
                os.write(2, b"".join(kept))


def interpreter(name: str):
    """This thread's LiteRT interpreter for model ``name``, tensors allocated, one core; created on first use in each
    thread of each process (a forked child does not reuse its parent's)."""
    if getattr(_thread_state, "pid", None) != os.getpid():
        _thread_state.pid, _thread_state.interpreters = os.getpid(), {}
    interpreters = _thread_state.interpreters
    if name not in interpreters:
        from ai_edge_litert.interpreter import Interpreter

        with _without_litert_notice():
            created = Interpreter(model_content=model_bytes(name), num_threads=1)
            created.allocate_tensors()
        interpreters[name] = created
    return interpreters[name]


def run_model(name: str, tensor: np.ndarray) -> list[np.ndarray]:
    """Run model ``name`` on one ``h x w x 3`` float32 input; its outputs, batch dimension dropped, in model order."""
    model = interpreter(name)
    model.set_tensor(model.get_input_details()[0]["index"], tensor[None].astype(np.float32, copy=False))
    model.invoke()
    return [model.get_tensor(detail["index"])[0] for detail in model.get_output_details()]


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, float32 (written with tanh, which never overflows)."""
    return (0.5 + 0.5 * np.tanh(0.5 * logits.astype(np.float32))).astype(np.float32)


# --- person segmentation ---------------------------------------------------------------------------------------------

def person_probability(images: list[np.ndarray]) -> list[np.ndarray]:
    """Per image, the probability that each pixel shows a person.

    ``images``: ``H x W x 3`` uint8 RGB (sizes may differ). Each is stretched to 256 x 256 (area resampling), scaled
    to [0, 1] and segmented; the 256 x 256 probability is resized back bilinearly. Returns ``H x W`` float32 in
    [0, 1] per image. The model sees 256 px, so edges are coarse: use it as a prior, not as a final mask.
    """
    probabilities = []
    for image in images:
        _check_image(image)
        height, width = image.shape[:2]
        square = cv2.resize(image, (SEGMENTATION_SIZE, SEGMENTATION_SIZE), interpolation=cv2.INTER_AREA)
        (output,) = run_model("selfie_segmentation", square.astype(np.float32) / 255.0)
        resized = cv2.resize(output[..., 0], (width, height), interpolation=cv2.INTER_LINEAR)
        probabilities.append(np.clip(resized, 0.0, 1.0).astype(np.float32))
    return probabilities


# --- face detection --------------------------------------------------------------------------------------------------

@cache
def ssd_anchor_centres() -> np.ndarray:
    """``896 x 2`` float32 anchor centres ``(x, y)`` in [0, 1] of the detector input, in output order (row-major
    cells, anchors of a cell consecutive). Anchors have a fixed size of 1, so only their centres matter."""
    centres = []
    for cells, per_cell in ANCHOR_GRIDS:
        offsets = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        grid_y, grid_x = np.meshgrid(offsets, offsets, indexing="ij")
        cell_centres = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
        centres.append(np.repeat(cell_centres, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def decode_detections(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray,
                      input_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw detector outputs -> boxes, keypoints and scores in [0, 1] coordinates of the detector input.

    ``regressors``: ``N x 16`` (box centre x, y, width, height, then six keypoints x, y; all in input pixels relative
    to the anchor centre); ``logits``: ``N`` or ``N x 1``; ``anchors``: ``N x 2`` centres in [0, 1]. Returns boxes
    ``N x 4`` ``(x0, y0, x1, y1)``, keypoints ``N x 6 x 2`` and scores ``N`` (sigmoid of the clipped logit).
    """
    scaled = regressors.astype(np.float32) / input_size
    centre = scaled[:, :2] + anchors
    half = scaled[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = scaled[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
    scores = sigmoid(np.clip(logits.reshape(-1), -SCORE_LOGIT_CLIP, SCORE_LOGIT_CLIP))
    return boxes, keypoints, scores


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``(x0, y0, x1, y1)`` box with each of ``N x 4`` boxes; ``N`` float32."""
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    intersection = np.prod(np.clip(high - low, 0.0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return (intersection / np.maximum(area + areas - intersection, 1e-12)).astype(np.float32)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Weighted non-maximum suppression: the best remaining detection and every other one overlapping it by more
    than ``iou_threshold`` become one detection whose box and keypoints are their score-weighted mean and whose score
    is the best one's. Returns ``(box 4, keypoints 6 x 2, score)`` per face, best first."""
    remaining = np.argsort(-scores, kind="stable")
    merged = []
    while remaining.size:
        overlaps = box_iou(boxes[remaining[0]], boxes[remaining])
        group, remaining = remaining[overlaps > iou_threshold], remaining[overlaps <= iou_threshold]
        weights = scores[group] / scores[group].sum()
        merged.append((np.tensordot(weights, boxes[group], axes=1), np.tensordot(weights, keypoints[group], axes=1),
                       float(scores[group[0]])))
    return merged


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Fit ``image`` (``H x W x 3`` uint8) into a ``size x size`` float32 square in [-1, 1], aspect ratio kept, centred,
    padded with 0 (mid grey). Returns the square, the scale (square pixels per image pixel) and the padding
    ``(left, top)`` in square pixels, so that ``image_xy = (square_xy - padding) / scale``."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
    fitted = cv2.resize(image, (fitted_width, fitted_height), interpolation=cv2.INTER_AREA)
    square = np.zeros((size, size, 3), dtype=np.float32)
    left, top = (size - fitted_width) // 2, (size - fitted_height) // 2
    square[top:top + fitted_height, left:left + fitted_width] = fitted.astype(np.float32) / 127.5 - 1.0
    return square, scale, (float(left), float(top))


def detect_faces(image: np.ndarray, min_score: float = 0.5, iou_threshold: float = 0.3) -> list[Face]:
    """Faces in ``image`` (``H x W x 3`` uint8 RGB), best first.

    The image is letterboxed into the detector's 128 x 128 input (see :func:`letterbox`), so faces smaller than about
    1/10 of the image's longer side are missed (the short-range model is made for faces within ~2 m of the camera).
    Anchors scoring at least ``min_score`` are merged by :func:`weighted_nms` and mapped back to image pixels.
    """
    _check_image(image)
    square, scale, padding = letterbox(image, DETECTION_SIZE)
    regressors, logits = run_model("face_detection", square)
    boxes, keypoints, scores = decode_detections(regressors, logits, ssd_anchor_centres(), DETECTION_SIZE)
    kept = scores >= min_score
    if not kept.any():
        return []
    shift = np.asarray(padding, dtype=np.float32)
    faces = []
    for box, points, score in weighted_nms(boxes[kept], keypoints[kept], scores[kept], iou_threshold):
        box_pixels = (box.reshape(2, 2) * DETECTION_SIZE - shift) / scale
        point_pixels = (points * DETECTION_SIZE - shift) / scale
        faces.append(Face(box=tuple(float(value) for value in box_pixels.ravel()), score=score,
                          keypoints=point_pixels.astype(np.float32)))
    return faces


# --- face landmarks --------------------------------------------------------------------------------------------------

def face_crop_frame(face: Face) -> tuple[np.ndarray, float, float]:
    """The square region the landmark model sees: centre ``(x, y)`` (the box centre, pixels), side in pixels
    (:data:`FACE_CROP_SCALE` times the box's longer side) and rotation in radians (the angle of the line from the
    right eye to the left eye, so that the eyes are level in the crop; positive turns the image's x axis towards its
    y axis). A simpler frame than MediaPipe's own (which tracks and shifts the region); good for still portraits."""
    x0, y0, x1, y1 = face.box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
    side = FACE_CROP_SCALE * max(x1 - x0, y1 - y0)
    eye_line = face.keypoints[1] - face.keypoints[0]
    return centre, float(side), float(np.arctan2(eye_line[1], eye_line[0]))


def crop_to_image_transform(centre: np.ndarray, side: float, angle: float, crop_size: int) -> np.ndarray:
    """``2 x 3`` float64 affine map from continuous crop coordinates (``crop_size`` pixels a side) to continuous image
    coordinates, for a square of ``side`` image pixels centred on ``centre`` and rotated by ``angle`` radians."""
    step = side / crop_size
    cos, sin = np.cos(angle) * step, np.sin(angle) * step
    linear = np.array([[cos, -sin], [sin, cos]], dtype=np.float64)
    offset = centre.astype(np.float64) - linear @ np.array([crop_size / 2, crop_size / 2], dtype=np.float64)
    return np.concatenate([linear, offset[:, None]], axis=1)


def face_landmarks(image: np.ndarray, face: Face) -> tuple[np.ndarray, float]:
    """The 468-point face mesh of ``face`` in ``image`` (``H x W x 3`` uint8 RGB) and the face-presence score.

    The model sees a 192 x 192 crop of :func:`face_crop_frame` (bilinear, edges replicated) scaled to [0, 1].
    Returns ``468 x 3`` float32: ``x, y`` in image pixels and ``z`` relative depth in the same units as ``x``
    (smaller is nearer the camera, roughly zero-mean over the face), and the probability in [0, 1] that the crop
    holds a face (low means the mesh is meaningless).
    """
    _check_image(image)
    centre, side, angle = face_crop_frame(face)
    to_image = crop_to_image_transform(centre, side, angle, LANDMARK_SIZE)
    # warpAffine samples pixel indices (a pixel's centre sits at index, not index + 0.5): shift both ends by half.
    half = np.array([0.5, 0.5], dtype=np.float64)
    index_map = to_image.copy()
    index_map[:, 2] = to_image[:, 2] + to_image[:, :2] @ half - half
    crop = cv2.warpAffine(image, index_map, (LANDMARK_SIZE, LANDMARK_SIZE),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    mesh, presence_logit = run_model("face_landmark", crop.astype(np.float32) / 255.0)
    points = mesh.reshape(NUM_LANDMARKS, 3).astype(np.float64)
    xy = points[:, :2] @ to_image[:, :2].T + to_image[:, 2]
    z = points[:, 2] * side / LANDMARK_SIZE
    landmarks = np.concatenate([xy, z[:, None]], axis=1).astype(np.float32)
    return landmarks, float(sigmoid(presence_logit.reshape(-1))[0])


def face_meshes(image: np.ndarray, min_presence: float = 0.5) -> list[np.ndarray]:
    """The 468-point mesh (``468 x 3`` float32, see :func:`face_landmarks`) of every face :func:`detect_faces`
    finds in ``image`` (``H x W x 3`` uint8 RGB) whose face-presence score is at least ``min_presence``; best first.
    Empty when no face is found (too small, turned away, or no person)."""
    meshes = []
    for face in detect_faces(image):
        landmarks, presence = face_landmarks(image, face)
        if presence >= min_presence:
            meshes.append(landmarks)
    return meshes

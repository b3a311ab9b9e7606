"""Weight-free person segmentation for portraits: Haar face detection, a head-and-shoulders prior, GrabCut.

Nothing is downloaded: the only "model" is OpenCV's bundled Haar cascades (``cv2.data.haarcascades``). The
pipeline for one RGB ``uint8`` image is

1. :func:`detect_face_box` finds the most prominent face on a downscaled, histogram-equalised grayscale copy
   (frontal cascades first, the profile cascade on the image and on its mirror as fallbacks);
2. a GrabCut label map is drawn from the face box: definite foreground on the inner face and the neck / upper
   torso core, probable foreground on an enlarged head ellipse (hair) and a shoulders trapezoid that reaches the
   bottom edge, definite background in the top corners well away from the head, probable background elsewhere;
3. ``cv2.grabCut`` refines it on a copy whose long side is ``work_size``, with OpenCV's RNG seeded first so the
   result does not depend on what ran before;
4. the mask keeps the components that touch the definite foreground, small holes are filled, a small open/close
   smooths it, and :func:`upsample_mask_guided` brings it to the input size with its edges snapped to the image's
   (a fast guided filter), so a small ``work_size`` costs little edge quality.

A degenerate GrabCut result (it lost most of the definite foreground or swallowed nearly the whole image) is retried
once at 1.5 times the working size (small copies degenerate more often); if that degenerates too, the prior's
foreground is used, with a lower score. :func:`person_prior_box` gives the same head-and-shoulders extent as a
box, e.g. as a box prompt for a promptable segmenter.

Everything is vectorised (OpenCV / NumPy); nothing loops over pixels in Python.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "PersonSegmentation",
    "detect_face_box",
    "fill_small_holes",
    "guided_filter",
    "person_prior_box",
    "segment_person_classical",
    "upsample_mask_guided",
]

DETECT_SIZE = 192
"""Long side (pixels) of the grayscale copy the Haar cascades run on."""

_MIN_FACE_FRACTION = 0.1
"""Smallest face searched for, as a fraction of the detection copy's short side."""

# (cascade file, minNeighbors, confidence weight of a detection by this cascade). Tried in order; the first cascade
# that finds anything wins. The profile cascade only knows one facing direction, so it also runs on the mirror.
_CASCADES: tuple[tuple[str, int, float], ...] = (
    ("haarcascade_frontalface_default.xml", 5, 1.0),
    ("haarcascade_frontalface_alt2.xml", 3, 0.9),
    ("haarcascade_profileface.xml", 4, 0.7),
)
_SCALE_FACTOR = 1.1
_COARSE_MIN_FRACTION = 0.25  # faces at least this fraction of the short side are looked for on a half-size copy first
_COARSE_MIN_SIDE = 24  # smallest face size (pixels) the coarse search can look for (the cascades' window)
_THREAD_CASCADES = threading.local()  # a CascadeClassifier must not run in two threads at once: one per thread

# Prior geometry, in face-box units: u = (x - face centre x) / face width, v = (y - face top) / face height.
_INNER_FACE = (0.0, 0.52, 0.30, 0.40)  # definite foreground ellipse: centre u, centre v, semi-axis u, semi-axis v
_CROWN = (0.0, -0.05, 0.26, 0.15)  # definite foreground ellipse above the face box: forehead / hair
_HEAD = (0.0, 0.40, 0.62, 0.88)  # probable foreground ellipse around face and hair
_BACKGROUND_ELLIPSE_SCALE = 1.3  # definite background lies outside the head ellipse scaled by this ...
_BACKGROUND_MAX_V = 0.45  # ... and above this line (top corners only)
_NECK_CORE = (0.17, 0.92, 1.35)  # definite foreground: half-width, top v, bottom v
_TORSO_CORE = (0.45, 1.35)  # definite foreground below the neck: half-width, top v (down to the prior box bottom)
# Probable-foreground torso polygon as (half-width, v) pairs from the neck down to the shoulders, then straight down.
_TORSO_OUTLINE = ((0.35, 0.85), (0.55, 1.00), (0.95, 1.15), (1.40, 1.45), (1.60, 2.00))
# Extent of the head-and-shoulders box: half-width, top v, bottom v.
_PRIOR_BOX = (1.55, -0.60, 2.60)

_MIN_DEFINITE_KEPT = 0.30  # GrabCut result must keep this much of the definite foreground ...
_MIN_HEAD_KEPT = 0.35  # ... and of the prior's head ellipse (face + hair) ...
_MAX_COVERAGE = 0.95  # ... and cover less than this much of the image, or the prior is used instead
_FALLBACK_SCORE_FACTOR = 0.5
_RETRY_SCALE = 1.5  # a degenerate GrabCut is retried once on a copy this much larger before the prior is used
_ROI_MARGIN = 0.25  # GrabCut runs on the head-and-shoulders box grown by this fraction of its size per side
_MAX_HOLE_FRACTION = 0.15  # holes up to this fraction of the foreground area are filled
_MIN_SIZE = 16
_GUIDE_RADIUS = 4  # box radius (px) of the guided filter, on a grid twice the mask's size
_GUIDE_EPS = 1e-3  # its regulariser (grey levels in [0, 1]): edges weaker than about 0.03 are smoothed over


@dataclass(frozen=True)
class PersonSegmentation:
    """Result of :func:`segment_person_classical`."""

    mask: np.ndarray
    """``H x W`` ``uint8``, 255 = person, 0 = background, same size as the input."""
    score: float
    """Confidence in [0, 1]: the face detection's confidence times ``0.5 + 0.5 * IoU`` of the mask with the
    prior's foreground, halved when GrabCut degenerated and the prior itself is returned."""
    face_box: tuple[int, int, int, int]
    """``x, y, w, h`` of the detected face in input pixels."""


def _validate_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H x W x 3 uint8 RGB), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (H x W x 3 RGB), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be shaped H x W x 3 (RGB), got shape {tuple(image.shape)}")
    if min(image.shape[:2]) < _MIN_SIZE:
        raise ValueError(f"image must be at least {_MIN_SIZE} x {_MIN_SIZE} pixels, got shape {tuple(image.shape)}")
    return np.ascontiguousarray(image)


def _cascade(name: str) -> cv2.CascadeClassifier:
    """This thread's classifier for the bundled cascade ``name`` (loaded once per thread)."""
    classifiers = _THREAD_CASCADES.__dict__.setdefault("classifiers", {})
    if name not in classifiers:
        path = os.path.join(cv2.data.haarcascades, name)
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise RuntimeError(f"could not load the OpenCV Haar cascade {path}")
        classifiers[name] = classifier
    return classifiers[name]


def _pick_face(boxes: np.ndarray, votes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """The largest, most central box: area weighted down by the centre's distance from the image centre."""
    centres = boxes[:, :2] + boxes[:, 2:] / 2.0
    offset = (centres - np.array([width / 2.0, height / 2.0])) / (np.hypot(width, height) / 2.0)
    prominence = boxes[:, 2] * boxes[:, 3] * (1.0 - 0.5 * np.hypot(offset[:, 0], offset[:, 1]))
    best = int(np.argmax(prominence))
    return boxes[best], int(votes[best])


def _search(gray: np.ndarray, min_side: int, max_side: int | None = None,
            cascades: tuple[tuple[str, int, float], ...] = _CASCADES) -> tuple[np.ndarray, int, tuple] | None:
    """The most prominent face ``(x, y, w, h)`` in ``gray`` pixels found by the first of ``cascades`` that finds any
    (the profile cascade also on the mirror), its number of votes and that cascade; or None."""
    gh, gw = gray.shape
    limits = {"minSize": (min_side, min_side)}
    if max_side is not None:
        limits["maxSize"] = (max_side, max_side)
    for cascade in cascades:
        name, min_neighbors, _ = cascade
        classifier = _cascade(name)
        candidates = []
        for mirrored in (False, True) if "profile" in name else (False,):
            view = np.ascontiguousarray(gray[:, ::-1]) if mirrored else gray
            boxes, votes = classifier.detectMultiScale2(view, scaleFactor=_SCALE_FACTOR,
                                                        minNeighbors=min_neighbors, **limits)
            if len(boxes) == 0:
                continue
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if mirrored:
                boxes[:, 0] = gw - boxes[:, 0] - boxes[:, 2]
            candidates.append((boxes, np.asarray(votes).reshape(-1)))
        if candidates:
            box, n_votes = _pick_face(np.concatenate([b for b, _ in candidates]),
                                      np.concatenate([v for _, v in candidates]), gh, gw)
            return box, n_votes, cascade
    return None


def _detect_face(image: np.ndarray) -> tuple[tuple[int, int, int, int], float] | None:
    """Face box in input pixels and a detection confidence in (0, 1], or ``None``.

    Coarse to fine: faces of at least :data:`_COARSE_MIN_FRACTION` of the short side are found on a half-size copy
    (a quarter of the windows), then located again at full detection size around that box, at sizes near it. Smaller
    faces, or none, get the full search."""
    height, width = image.shape[:2]
    scale = min(1.0, DETECT_SIZE / max(height, width))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    gh, gw = gray.shape
    min_side = max(20, round(_MIN_FACE_FRACTION * min(gh, gw)))
    if min(gh, gw) < min_side:
        return None

    found = None
    coarse_side = round(_COARSE_MIN_FRACTION * min(gh, gw) / 2)
    if coarse_side >= _COARSE_MIN_SIDE:
        coarse = cv2.resize(gray, (gw // 2, gh // 2), interpolation=cv2.INTER_AREA)
        rough = _search(coarse, coarse_side)
        if rough is not None:
            x, y, w, h = rough[0] * 2
            gx0, gy0 = max(0, int(x - w / 2)), max(0, int(y - h / 2))
            gx1, gy1 = min(gw, int(np.ceil(x + 1.5 * w))), min(gh, int(np.ceil(y + 1.5 * h)))
            found = _search(gray[gy0:gy1, gx0:gx1], max(min_side, int(0.7 * w)), int(np.ceil(1.4 * w)),
                            cascades=(rough[2],))
            if found is not None:
                found = (found[0] + np.array([gx0, gy0, 0, 0]), found[1], found[2])
            else:
                found = (np.array([x, y, w, h]), rough[1], rough[2])
    if found is None:
        found = _search(gray, min_side)
    if found is None:
        return None
    box, n_votes, (_, _, weight) = found
    x0 = int(np.clip(round(box[0] / scale), 0, width - 1))
    y0 = int(np.clip(round(box[1] / scale), 0, height - 1))
    x1 = int(np.clip(round((box[0] + box[2]) / scale), x0 + 1, width))
    y1 = int(np.clip(round((box[1] + box[3]) / scale), y0 + 1, height))
    confidence = weight * n_votes / (n_votes + 8.0)
    return (x0, y0, x1 - x0, y1 - y0), float(confidence)


def detect_face_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """The most prominent face ``(x, y, w, h)`` in input pixels of an ``H x W x 3`` ``uint8`` RGB image, or ``None``.

    Runs OpenCV's bundled Haar cascades on a grayscale copy downscaled to a long side of :data:`DETECT_SIZE` and
    histogram-equalised: the frontal ``default`` cascade, then ``alt2``, then the profile cascade on the image and
    its mirror. Among the detections of the first cascade that finds any, the largest and most central one wins.
    """
    found = _detect_face(_validate_image(image))
    return None if found is None else found[0]


def person_prior_box(face_box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """Head-and-shoulders box ``(x0, y0, x1, y1)`` for a face box ``(x, y, w, h)``, clipped to the image.

    The box reaches 0.6 face heights above the face box (hair), 2.6 face heights below its top (neck and
    shoulders) and 1.55 face widths either side of its centre (shoulders). ``x1`` / ``y1`` are exclusive
    (``0 <= x0 < x1 <= width``, ``0 <= y0 < y1 <= height``), the convention of SAM-style ``xyxy`` box prompts.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    x, y, w, h = (float(v) for v in face_box)
    if w <= 0 or h <= 0:
        raise ValueError(f"face box must have positive width and height, got {tuple(face_box)}")
    half_width, top, bottom = _PRIOR_BOX
    cx = x + w / 2.0
    x0 = int(np.clip(np.floor(cx - half_width * w), 0, width - 1))
    y0 = int(np.clip(np.floor(y + top * h), 0, height - 1))
    x1 = int(np.clip(np.ceil(cx + half_width * w), x0 + 1, width))
    y1 = int(np.clip(np.ceil(y + bottom * h), y0 + 1, height))
    return x0, y0, x1, y1


def _prior_labels(
    face_box: tuple[float, float, float, float], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """GrabCut label map (``GC_BGD`` / ``GC_FGD`` / ``GC_PR_BGD`` / ``GC_PR_FGD``) for a face box in these pixels,
    and the boolean head ellipse (face and hair) it was drawn with."""
    fx, fy, fw, fh = face_box
    cx = fx + fw / 2.0
    ys, xs = np.ogrid[:height, :width]
    u = (xs + 0.5 - cx) / fw
    v = (ys + 0.5 - fy) / fh

    def ellipse(spec: tuple[float, float, float, float], grow: float = 1.0) -> np.ndarray:
        cu, cv, au, av = spec
        return ((u - cu) / (au * grow)) ** 2 + ((v - cv) / (av * grow)) ** 2 <= 1.0

    labels = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)

    # Probable foreground: the torso polygon (mirrored outline, then straight down past the bottom edge) and head.
    right = [(cx + hw * fw, fy + hv * fh) for hw, hv in _TORSO_OUTLINE]
    left = [(cx - hw * fw, fy + hv * fh) for hw, hv in reversed(_TORSO_OUTLINE)]
    bottom = max(height, fy + _TORSO_OUTLINE[-1][1] * fh) + 1.0
    polygon = [(left[0][0], bottom), *left, *right, (right[-1][0], bottom)]
    torso = np.zeros((height, width), dtype=np.uint8)
    points = np.round(np.array(polygon) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(torso, [points], 1, lineType=cv2.LINE_8, shift=4)
    head = ellipse(_HEAD)
    labels[(torso > 0) | head] = cv2.GC_PR_FGD

    # Definite background: top corners, outside an enlarged head ellipse and away from the shoulders.
    far = ~ellipse(_HEAD, _BACKGROUND_ELLIPSE_SCALE) & (v < _BACKGROUND_MAX_V) & (torso == 0)
    labels[far] = cv2.GC_BGD

    # Definite foreground: inner face, neck, upper torso core.
    neck_hw, neck_top, neck_bottom = _NECK_CORE
    core_hw, core_top = _TORSO_CORE
    definite = ellipse(_INNER_FACE) | ellipse(_CROWN)
    definite |= (np.abs(u) <= neck_hw) & (v >= neck_top) & (v <= neck_bottom)
    definite |= (np.abs(u) <= core_hw) & (v >= core_top) & (v <= _PRIOR_BOX[2])
    labels[definite] = cv2.GC_FGD
    return labels, head


def fill_small_holes(mask: np.ndarray, max_hole_fraction: float = _MAX_HOLE_FRACTION) -> np.ndarray:
    """Fill the background components of a 0/1 ``uint8`` mask that do not touch the image border and are at most
    ``max_hole_fraction`` of the foreground's area."""
    background = (mask == 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    if count <= 1:
        return mask
    on_border = np.zeros(count, dtype=bool)
    on_border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    limit = max_hole_fraction * max(1, int(np.count_nonzero(mask)))
    hole = ~on_border & (stats[:, cv2.CC_STAT_AREA] <= limit)
    hole[0] = False  # label 0 is the foreground itself
    filled = mask.copy()
    filled[hole[labels]] = 1
    return filled


def _clean_mask(mask: np.ndarray, definite: np.ndarray) -> np.ndarray:
    """Open/close, keep the components that touch the definite foreground, fill small holes (0/1 ``uint8``)."""
    side = max(3, (round(min(mask.shape) / 80) | 1))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count > 1:
        keep = np.zeros(count, dtype=bool)
        keep[np.unique(labels[definite & (labels > 0)])] = True
        keep[0] = False
        mask = keep[labels].astype(np.uint8)
    return fill_small_holes(mask)


def guided_filter(guide: np.ndarray, values: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of a guided filter (He, Sun & Tang 2013): the local linear model ``values ~ a * guide + b`` fitted
    over boxes of ``radius`` pixels, then box-averaged. ``guide`` and ``values``: ``h x w`` float32 (grey levels and
    the field to filter, e.g. in [0, 1]); ``eps`` regularises ``a`` (edges in the guide weaker than about
    ``sqrt(eps)`` are smoothed over). Returns ``(a, b)``, each ``h x w`` float32: the filtered field is
    ``a * guide + b``, also after upsampling both to a larger guide (the fast guided filter, He & Sun 2015)."""
    side = 2 * radius + 1

    def box(field: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(field, -1, (side, side), borderType=cv2.BORDER_REFLECT)

    mean_guide, mean_values = box(guide), box(values)
    covariance = box(guide * values) - mean_guide * mean_values
    variance = box(guide * guide) - mean_guide * mean_guide
    slope = covariance / (variance + eps)
    offset = mean_values - slope * mean_guide
    return box(slope), box(offset)


def upsample_mask_guided(mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A 0/1 ``h x w`` ``uint8`` mask -> a 0/255 mask at the size of the ``H x W x 3`` ``uint8`` RGB image, its
    edges following the image's.

    A fast guided filter (:func:`guided_filter`) with the grey image as guide: fitted on a grid twice the mask's size
    (at most the image's) over boxes of radius :data:`_GUIDE_RADIUS`, its coefficients upsampled bilinearly and
    applied to the full-resolution guide, and the result thresholded at 0.5. Where the image has no edge, the result
    is the mask upsampled bilinearly and box-smoothed.
    """
    height, width = image.shape[:2]
    if mask.shape == (height, width):
        return mask * np.uint8(255)
    grid = (min(width, 2 * mask.shape[1]), min(height, 2 * mask.shape[0]))
    guide = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    small_guide = cv2.resize(guide, grid, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.float32), grid, interpolation=cv2.INTER_LINEAR)
    slope, offset = guided_filter(small_guide, small_mask, _GUIDE_RADIUS, _GUIDE_EPS)
    slope = cv2.resize(slope, (width, height), interpolation=cv2.INTER_LINEAR)
    offset = cv2.resize(offset, (width, height), interpolation=cv2.INTER_LINEAR)
    return (slope * guide + offset >= 0.5).astype(np.uint8) * np.uint8(255)


def _grabcut(image: np.ndarray, face_box: tuple[int, int, int, int], work_size: int, iterations: int,
             seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """GrabCut from the face prior on a copy whose long side is ``work_size``: the cleaned 0/1 mask, the prior's
    0/1 foreground and boolean definite foreground (all at that size), and whether the result is degenerate."""
    height, width = image.shape[:2]
    scale = min(1.0, work_size / max(height, width))
    wh, ww = max(1, round(height * scale)), max(1, round(width * scale))
    work = image if scale == 1.0 else cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA)
    sy, sx = wh / height, ww / width
    x, y, w, h = face_box
    work_face = (x * sx, y * sy, w * sx, h * sy)
    labels, head = _prior_labels(work_face, wh, ww)

    # GrabCut only looks at the neighbourhood of the head-and-shoulders box; everything else is background.
    bx0, by0, bx1, by1 = person_prior_box(work_face, wh, ww)
    mx, my = _ROI_MARGIN * (bx1 - bx0), _ROI_MARGIN * (by1 - by0)
    rx0, ry0 = max(0, int(bx0 - mx)), max(0, int(by0 - my))
    rx1, ry1 = min(ww, int(np.ceil(bx1 + mx))), min(wh, int(np.ceil(by1 + my)))
    outside = np.ones((wh, ww), dtype=bool)
    outside[ry0:ry1, rx0:rx1] = False
    labels[outside] = cv2.GC_BGD
    head &= ~outside
    definite = labels == cv2.GC_FGD
    prior = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    roi_labels = labels[ry0:ry1, rx0:rx1].copy()
    has_background = bool(np.any((roi_labels == cv2.GC_BGD) | (roi_labels == cv2.GC_PR_BGD)))

    mask = np.zeros((wh, ww), dtype=np.uint8)
    if has_background:
        background_model = np.zeros((1, 65), dtype=np.float64)
        foreground_model = np.zeros((1, 65), dtype=np.float64)
        roi_image = np.ascontiguousarray(work[ry0:ry1, rx0:rx1])
        cv2.setRNGSeed(int(seed))
        cv2.grabCut(roi_image, roi_labels, None, background_model, foreground_model, iterations,
                    cv2.GC_INIT_WITH_MASK)
        mask[ry0:ry1, rx0:rx1] = (roi_labels == cv2.GC_FGD) | (roi_labels == cv2.GC_PR_FGD)
        mask = _clean_mask(mask, definite)

    kept_definite = np.count_nonzero(mask[definite]) / max(1, int(np.count_nonzero(definite)))
    kept_head = np.count_nonzero(mask[head]) / max(1, int(np.count_nonzero(head)))
    coverage = np.count_nonzero(mask) / mask.size
    degenerate = (
        not has_background
        or kept_definite < _MIN_DEFINITE_KEPT
        or kept_head < _MIN_HEAD_KEPT
        or coverage > _MAX_COVERAGE
    )
    return mask, prior, definite, degenerate


def segment_person_classical(
    image: np.ndarray, *, work_size: int = 128, grabcut_iterations: int = 2, seed: int = 0
) -> PersonSegmentation | None:
    """Person mask for one ``H x W x 3`` ``uint8`` RGB image, or ``None`` when no face is found.

    ``work_size`` is the long side GrabCut runs at (the input is never upscaled), ``grabcut_iterations`` the
    number of GrabCut iterations and ``seed`` the seed of OpenCV's RNG, set right before GrabCut, so equal inputs
    give equal masks whatever ran before. A degenerate result is retried once at :data:`_RETRY_SCALE` times
    ``work_size`` before the prior is used. See the module docstring for the method.

    Cost is dominated by ``cv2.grabCut`` (its max-flow grows faster than the pixel count and depends on the image):
    lower ``work_size`` / ``grabcut_iterations`` trade mask detail for speed.
    """
    image = _validate_image(image)
    if work_size < _MIN_SIZE:
        raise ValueError(f"work_size must be at least {_MIN_SIZE}, got {work_size}")
    if grabcut_iterations < 1:
        raise ValueError(f"grabcut_iterations must be at least 1, got {grabcut_iterations}")
    found = _detect_face(image)
    if found is None:
        return None
    face_box, detection_confidence = found

    long_side = max(image.shape[:2])
    sizes = [work_size]
    if work_size < long_side:
        sizes.append(min(long_side, round(_RETRY_SCALE * work_size)))
    for size in sizes:
        mask, prior, definite, degenerate = _grabcut(image, face_box, size, grabcut_iterations, seed)
        if not degenerate:
            break
    if degenerate:
        mask = _clean_mask(prior, definite)
    iou = np.count_nonzero(mask & prior) / max(1, np.count_nonzero(mask | prior))
    score = detection_confidence * (0.5 + 0.5 * iou)
    if degenerate:
        score *= _FALLBACK_SCORE_FACTOR
    return PersonSegmentation(
        mask=upsample_mask_guided(mask, image),
        score=float(np.clip(score, 0.0, 1.0)),
        face_box=face_box,
    )

"""Model-backed stages end to end with tiny random checkpoints (``relight_datasets.testing``): every row records
the method that made it, the report and card name the models, forced methods fail with one line and exit 2, and
``auto`` falls back for each reason. Random weights give meaningless masks, so thresholds are opened up where a
test needs rows; the mask *logic* is checked on known tensors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_small, load_rgb, save_resized_faces
from datasets import load_dataset

from relight_datasets.models.segmenters import Sam2BoxSegmenter, unite_instances
from relight_datasets.ops.normals import decode_normals
from relight_datasets.testing import make_tiny_checkpoints
from relight_datasets.transforms.segmentation import face_prior_box

REPO = Path(__file__).resolve().parents[1]
OPEN = ["--set", "segmentation.score_threshold=0", "--set", "segmentation.detector_threshold=0",
        "--set", "segmentation.min_coverage=0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def faces(tmp_path_factory, faces_dir) -> Path:
    return save_resized_faces(faces_dir, tmp_path_factory.mktemp("faces"), 3, 96)


def build(faces: Path, out: Path, *extra: str) -> tuple[int, list[dict], dict]:
    return build_small(faces, out, *extra)


def test_sam3_rows_record_the_model(tiny, faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", "--segmenter", "sam3", "--sam3-model", str(tiny["sam3"]),
                               "--normals", "classical", *OPEN)
    assert code == 0 and len(rows) == 3
    assert {row["segmentation_method"] for row in rows} == {"sam3"}
    assert report["models"]["segmentation"] == {"method": "sam3", "model": str(tiny["sam3"]), "revision": "local",
                                                "device": "cpu", "dtype": "float32"}
    assert all(0 <= row["segmentation_score"] <= 1 for row in rows)
    ds = load_dataset(str(tmp_path / "o"), split="train")
    mask = np.asarray(ds[0]["mask"])
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 255}
    assert str(tiny["sam3"]) in (tmp_path / "o" / "README.md").read_text()


def test_sam3_finding_nobody_skips_rows_as_no_person(tiny, faces, tmp_path):
    code, _, _ = build(faces, tmp_path / "o", "--segmenter", "sam3", "--sam3-model", str(tiny["sam3"]),
                       "--normals", "classical", "--set", "segmentation.score_threshold=1")
    assert code == 1  # a build that processed nothing writes no dataset, only its counts
    report = json.loads((tmp_path / "o" / ".work" / "build_report.json").read_text())
    assert report["processed"] == 0 and report["skipped"] == {"no_person": 3}


def test_sam2_with_detector_boxes(tiny, faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", "--segmenter", "sam2", "--sam2-model", str(tiny["sam2"]),
                               "--detector-model", str(tiny["detector"]), "--normals", "classical", *OPEN)
    assert code == 0 and {row["segmentation_method"] for row in rows} == {"sam2"}
    assert report["models"]["segmentation"]["boxes"]["detector"]["model"] == str(tiny["detector"])


def test_sam2_takes_face_prior_boxes_when_the_detector_cannot_load(tiny, faces, tmp_path, caplog):
    code, rows, report = build(faces, tmp_path / "o", "--segmenter", "sam2", "--sam2-model", str(tiny["sam2"]),
                               "--detector-model", "nobody/no-detector", "--normals", "classical", *OPEN)
    assert code == 0 and {row["segmentation_method"] for row in rows} == {"sam2"}
    face_prior = report["models"]["segmentation"]["boxes"]["face_prior"]
    assert face_prior["model"] == "nobody/no-detector" and "HF_HUB_OFFLINE" in face_prior["reason"]


def test_sam2_box_prompts_fall_back_to_the_face_prior(tiny, face_paths):
    segmenter = Sam2BoxSegmenter(str(tiny["sam2"]), torch.device("cpu"), torch.float32, fallback_box=face_prior_box)
    images = [load_rgb(face_paths[0], 256), np.full((256, 256, 3), 128, np.uint8)]  # a face; a blank wall
    tensors = [torch.tensor(image, device="cpu", dtype=torch.uint8).permute(2, 0, 1) for image in images]
    boxes = segmenter.boxes(tensors, images)
    assert boxes[0] == [face_prior_box(images[0])] and boxes[1] == []
    x0, y0, x1, y1 = boxes[0][0]
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256 and (x1 - x0) * (y1 - y0) > 0.2 * 256 * 256
    results = segmenter(tensors, images)
    assert results[1] is None and results[0].mask.shape == (256, 256)
    assert results[0].mask.dtype == torch.uint8 and set(results[0].mask.unique().tolist()) <= {0, 255}


@pytest.mark.parametrize("name", ["depth", "dpt"])
def test_depth_normals(tiny, faces, tmp_path, name):
    code, rows, report = build(faces, tmp_path / "o", "--normals", "depth", "--depth-model", str(tiny[name]),
                               "--segmenter", "classical")
    assert code == 0 and rows and {row["normals_method"] for row in rows} == {"depth"}
    assert report["models"]["normals"]["model"] == str(tiny[name])
    ds = load_dataset(str(tmp_path / "o"), split="train").with_format("numpy")
    rgb = torch.from_numpy(np.stack(ds["normals"])).permute(0, 3, 1, 2).float() / 255
    normals = decode_normals(rgb)
    assert normals.shape[1:] == (3, 96, 96)
    assert (normals[:, 2] >= -1e-3).all()  # a height field's normals face the camera half-space
    assert normals[:, :2].abs().amax() > 0.05  # and are not all flat


def test_bfloat16_dtype_is_used_and_recorded(tiny, faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", "--segmenter", "sam3", "--sam3-model", str(tiny["sam3"]),
                               "--normals", "depth", "--depth-model", str(tiny["depth"]), "--dtype", "bfloat16",
                               *OPEN)
    assert code == 0 and len(rows) == 3
    assert report["models"]["segmentation"]["dtype"] == "bfloat16"
    assert report["models"]["normals"]["dtype"] == "bfloat16"


@pytest.mark.parametrize(("flags", "needle"), [
    (["--segmenter", "sam3", "--sam3-model", "nobody/no-sam3"], "SAM3 segmentation model nobody/no-sam3: "),
    (["--segmenter", "sam2", "--sam2-model", "nobody/no-sam2"], "SAM2 segmentation model nobody/no-sam2: "),
    (["--normals", "depth", "--depth-model", "nobody/no-depth"], "depth model nobody/no-depth: "),
])
def test_forced_model_that_cannot_load_exits_2_with_one_line(faces, tmp_path, capsys, flags, needle):
    assert build(faces, tmp_path / "o", *flags)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"relight-build: error: {needle}") and "HF_HUB_OFFLINE" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_unreachable_hub_never_hangs(faces, tmp_path):
    with socket.socket() as probe:  # a local port nobody listens on: the Hub probe is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    command = [sys.executable, str(REPO / "scripts" / "build.py"), "--source", f"folder:{faces}", "--resolution", "96",
               "--quiet"]
    forced = subprocess.run([*command, "--out", str(tmp_path / "a"), "--segmenter", "sam3"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert forced.returncode == 2
    assert "no network (the Hub is unreachable)" in forced.stderr.strip().splitlines()[-1]
    auto = subprocess.run([*command, "--out", str(tmp_path / "b")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert auto.returncode == 0, auto.stderr
    report = json.loads((tmp_path / "b" / "build_report.json").read_text())
    assert report["methods"]["segmentation_method"] == {"mediapipe": 3}
    assert [f["method"] for f in report["models"]["segmentation"]["fallbacks"]] == ["sam3", "sam2"]
    assert report["models"]["normals"]["method"] == "mask_inflation"


def test_unite_instances_keeps_instances_above_the_threshold():
    logits = torch.tensor([[3.0, -3.0, 2.0], [-5.0, -5.0, -5.0]])  # image 0: instances 0 and 2 pass; image 1: none
    presence = torch.tensor([[4.0], [4.0]])
    masks = torch.full((2, 3, 4, 4), -10.0)
    masks[0, 0, :2] = 10  # top half
    masks[0, 1, :, :2] = 10  # left half, but dropped
    masks[0, 2, 3:] = 10  # bottom row
    union, kept, mean = unite_instances(logits, presence, masks, score_threshold=0.5)
    assert kept.tolist() == [2, 0]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2] = True
    expected[3:] = True
    assert torch.equal(union[0] > 0.5, expected)
    assert torch.equal(union[1], torch.zeros(4, 4))
    scores = torch.sigmoid(torch.tensor([3.0, 2.0])) * torch.sigmoid(torch.tensor(4.0))
    assert mean[0].item() == pytest.approx(scores.mean().item(), rel=1e-6) and mean[1].item() == 0

"""The learned albedo (``--albedo intrinsic``) and learned normals (``--normals marigold``) through tiny random
Marigold pipelines (``relight_datasets.testing``): every row records the method that made it, the report and card
name the model, the albedo is black outside the mask, the normals are unit vectors facing the camera; ``auto``
albedo falls back to Retinex for each reason a model cannot load, and a forced method exits 2 in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_small, save_resized_faces
from datasets import load_dataset

from relight_datasets.config import ConfigError, load_config
from relight_datasets.models.loading import ModelUnavailable
from relight_datasets.models.marigold import IntrinsicAlbedo, MarigoldNormals
from relight_datasets.ops.normals import decode_normals
from relight_datasets.rng import noise_generators
from relight_datasets.testing import make_tiny_intrinsics, make_tiny_surface_normals
from relight_datasets.transforms.albedo import AlbedoStage

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WEIGHT_FREE = ["--segmenter", "classical"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {"intrinsics": make_tiny_intrinsics(root / "intrinsics"),
            "surface-normals": make_tiny_surface_normals(root / "surface-normals")}


@pytest.fixture(scope="module")
def faces(tmp_path_factory, faces_dir) -> Path:
    return save_resized_faces(faces_dir, tmp_path_factory.mktemp("faces"), 3, 96)


def build(faces: Path, out: Path, *extra: str) -> tuple[int, list[dict], dict]:
    return build_small(faces, out, *extra)


def images(out: Path, column: str) -> np.ndarray:
    """``column`` of every row of the build in ``out``, as an ``N x H x W (x C)`` uint8 array."""
    return np.stack(load_dataset(str(out), split="train").with_format("numpy")[column])


def test_intrinsic_albedo_rows_record_the_model_and_stay_inside_the_mask(tiny, faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", *WEIGHT_FREE, "--albedo", "intrinsic",
                               "--albedo-model", str(tiny["intrinsics"]))
    assert code == 0 and len(rows) == 3
    assert {row["albedo_method"] for row in rows} == {"intrinsic"}
    assert all(0.15 <= row["albedo_blend_ratio"] <= 0.25 for row in rows)  # the same blend-back as Retinex rows
    assert report["models"]["albedo"] == {"method": "intrinsic", "model": str(tiny["intrinsics"]),
                                          "revision": "local", "device": "cpu", "dtype": "float32"}
    assert f"intrinsic (`{tiny['intrinsics']}` revision `local`, float32)" in (tmp_path / "o" / "README.md").read_text()
    albedo, mask = images(tmp_path / "o", "albedo"), images(tmp_path / "o", "mask")
    assert albedo.shape == (3, 96, 96, 3) and mask.shape == (3, 96, 96)
    assert (albedo[mask == 0] == 0).all() and albedo[mask > 0].any()


def test_marigold_normals_rows_record_the_model_and_face_mesh(tiny, faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", *WEIGHT_FREE, "--normals", "marigold",
                               "--normals-model", str(tiny["surface-normals"]))
    assert code == 0 and len(rows) == 3
    methods = {row["normals_method"] for row in rows}
    assert methods <= {"face_mesh+marigold", "marigold"} and "face_mesh+marigold" in methods
    info = report["models"]["normals"]
    assert info["method"] == "marigold" and info["model"] == str(tiny["surface-normals"]) and "faces" in info
    rgb = torch.from_numpy(images(tmp_path / "o", "normals")).permute(0, 3, 1, 2).float() / 255
    normals = decode_normals(rgb)
    assert normals.shape == (3, 3, 96, 96) and torch.isfinite(normals).all()
    assert (normals[:, 2] >= -0.01).all()  # folded towards the camera (8-bit rounding aside)


def test_bfloat16_pipelines_run_and_are_recorded(tiny, faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", *WEIGHT_FREE, "--dtype", "bfloat16", "--albedo", "intrinsic",
                               "--albedo-model", str(tiny["intrinsics"]), "--normals", "marigold",
                               "--normals-model", str(tiny["surface-normals"]))
    assert code == 0 and len(rows) == 3
    assert report["models"]["albedo"]["dtype"] == report["models"]["normals"]["dtype"] == "bfloat16"


def test_predictions_have_the_input_size_and_depend_only_on_their_own_row(tiny):
    images_in = torch.randint(0, 256, (3, 3, 40, 56), generator=torch.Generator(device="cpu").manual_seed(0),
                              device="cpu", dtype=torch.uint8)
    ids = ["a", "b", "c"]
    albedo_model = IntrinsicAlbedo(str(tiny["intrinsics"]), CPU, torch.float32, steps=2, ensemble=2)
    albedo = albedo_model(images_in, noise_generators(0, ids, "s", 2))
    assert albedo.shape == (3, 3, 40, 56) and albedo.dtype == torch.float32
    assert torch.isfinite(albedo).all() and 0 <= albedo.min() and albedo.max() <= 1
    alone = albedo_model(images_in[1:2], noise_generators(0, ids[1:2], "s", 2))
    torch.testing.assert_close(alone, albedo[1:2], atol=1e-4, rtol=0)
    normals = MarigoldNormals(str(tiny["surface-normals"]), CPU, torch.float32, steps=2, ensemble=1)(
        images_in, noise_generators(0, ids, "n", 1))
    assert normals.shape == (3, 3, 40, 56) and torch.isfinite(normals).all() and (normals[:, 2] >= 0).all()
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(3, 40, 56, device="cpu", dtype=torch.float32))


def test_a_checkpoint_without_an_albedo_is_refused(tiny):
    with pytest.raises(ModelUnavailable, match="not an albedo"):
        IntrinsicAlbedo(str(tiny["surface-normals"]), CPU, torch.float32, steps=1, ensemble=1)


def _auto_albedo(model: str) -> AlbedoStage:
    config = load_config("mvp", overrides=["resolution=64", "albedo.method=auto", f"albedo.intrinsic_model={model}"])
    return AlbedoStage(config)


@pytest.mark.parametrize("reason", ["offline", "bad_folder", "missing_package"])
def test_auto_albedo_falls_back_to_retinex_and_records_why(tmp_path, monkeypatch, reason):
    model = {"offline": "nobody/no-intrinsics", "bad_folder": str(tmp_path), "missing_package": "nobody/x"}[reason]
    (tmp_path / "model_index.json").write_text("{not json")
    if reason == "missing_package":
        monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    stage = _auto_albedo(model)
    assert stage.prepare() is None
    fallback = stage.describe()["fallbacks"][0]
    assert stage.describe()["method"] == "retinex" and fallback["method"] == "intrinsic" and fallback["model"] == model
    expected = {"offline": "HF_HUB_OFFLINE is set and the model is not in the local cache",
                "bad_folder": "is not a valid JSON file", "missing_package": "diffusers is not installed"}[reason]
    assert expected in fallback["reason"] and "\n" not in fallback["reason"]


def test_auto_albedo_uses_the_model_when_it_loads(tiny):
    stage = _auto_albedo(str(tiny["intrinsics"]))
    assert stage.prepare().method == "intrinsic" and stage.describe()["method"] == "intrinsic"
    assert stage.prepare() is stage.prepare()  # loaded once per process and device


def test_auto_albedo_rows_say_retinex_when_the_model_is_missing(faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", *WEIGHT_FREE, "--albedo", "auto",
                               "--albedo-model", "nobody/no-intrinsics")
    assert code == 0 and {row["albedo_method"] for row in rows} == {"retinex"}
    assert report["models"]["albedo"]["fallbacks"][0]["model"] == "nobody/no-intrinsics"


def test_the_weight_free_default_reports_no_albedo_model(faces, tmp_path):
    code, rows, report = build(faces, tmp_path / "o", *WEIGHT_FREE, "--normals", "classical")
    assert code == 0 and {row["albedo_method"] for row in rows} == {"retinex"}
    assert "albedo" not in report["models"]


@pytest.mark.parametrize(("flags", "needle"), [
    (["--albedo", "intrinsic", "--albedo-model", "nobody/no-iid"], "intrinsic albedo model nobody/no-iid: "),
    (["--normals", "marigold", "--normals-model", "nobody/no-normals"], "marigold normals model nobody/no-normals: "),
])
def test_forced_learned_method_that_cannot_load_exits_2_with_one_line(faces, tmp_path, capsys, flags, needle):
    assert build(faces, tmp_path / "o", *WEIGHT_FREE, *flags)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"relight-build: error: {needle}") and "HF_HUB_OFFLINE" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_forced_intrinsic_without_diffusers_exits_2_naming_the_extra(faces, tmp_path):
    """A process where ``import diffusers`` fails (a ``sys.modules`` entry of None, set before anything runs)."""
    code = ("import sys; sys.modules['diffusers'] = None; from relight_datasets.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "--source", f"folder:{faces}", "--out", str(tmp_path / "o"),
                             "--resolution", "96", "--quiet", *WEIGHT_FREE, "--albedo", "intrinsic"],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "relight-build: error: intrinsic albedo model prs-eth/marigold-iid-appearance-v1-1: missing package support "
        "(diffusers is not installed); pip install 'relight-datasets[learned]'")


def test_a_hub_id_in_the_local_cache_loads_offline_with_its_revision(tiny, tmp_path):
    """The Hub-id path: a pipeline in the cache layout (``models--org--name/snapshots/<commit>``) loads offline and
    records its commit (a subprocess, so that the cache location is read at import)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-normals"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny["surface-normals"], repo / "snapshots" / commit)
    code = ("import json, torch; from relight_datasets.models.marigold import MarigoldNormals; "
            "print(json.dumps(MarigoldNormals('org/tiny-normals', torch.device('cpu'), torch.float32, 1, 1)"
            ".loaded.describe()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "model": "org/tiny-normals", "revision": commit, "device": "cpu", "dtype": "float32"}


@pytest.mark.parametrize(("override", "message"), [
    ("albedo.intrinsic_steps=0", "albedo.intrinsic_steps: must be 1 to 50, got 0"),
    ("normals.normals_ensemble=51", "normals.normals_ensemble: must be 1 to 50, got 51"),
    ("albedo.intrinsic_model=' '", "albedo.intrinsic_model: must name a Hub model id or a local folder"),
    ("albedo.method=marigold", "albedo.method: must be one of retinex, lab, intrinsic, auto, got 'marigold'"),
])
def test_learned_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("mvp", overrides=[override])

"""Model loading and the segmenter / normals fallback chains, without any weights: every reason a model can be
unavailable becomes one line, ``auto`` falls back and records why, a forced method fails."""

from __future__ import annotations

import httpx2
import pytest
import torch
from huggingface_hub import errors

from relight_datasets.config import load_config
from relight_datasets.models.loading import ModelUnavailable, describe_failure, import_transformers, load_pretrained
from relight_datasets.transforms.normals import NormalsStage
from relight_datasets.transforms.segmentation import SegmentationStage

CPU = torch.device("cpu")


def _raised_from(cause: BaseException, message: str = "loading failed") -> OSError:
    """An OSError chained to ``cause``, as ``from_pretrained`` raises them."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise OSError(message) from inner
    except OSError as outer:
        return outer


def test_gated_repo_reason_says_how_to_get_access():
    response = httpx2.Response(403, request=httpx2.Request("GET", "https://huggingface.co/facebook/sam3"))
    reason = describe_failure(_raised_from(errors.GatedRepoError("403 gated", response=response)),
                              "facebook/sam3", local_only=False)
    assert "gated" in reason and "https://huggingface.co/facebook/sam3" in reason and "hf auth login" in reason
    assert "\n" not in reason


def test_missing_package_reason_names_the_class():
    with pytest.raises(ImportError) as caught:
        import_transformers("Sam3Model", "NoSuchModelForTesting")
    reason = describe_failure(caught.value, "facebook/sam3", local_only=False)
    assert "missing package support" in reason and "NoSuchModelForTesting" in reason


def test_out_of_memory_reason():
    reason = describe_failure(_raised_from(torch.cuda.OutOfMemoryError("CUDA out of memory")), "m", False)
    assert reason.startswith("out of GPU memory")


def test_offline_reason_and_unknown_errors_stay_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as caught:
        load_pretrained("SAM3 segmentation", "Sam3Model", "Sam3Processor", "facebook/sam3", CPU, torch.float32)
    assert caught.value.reason.startswith("HF_HUB_OFFLINE is set and the model is not in the local cache")
    assert str(caught.value).startswith("SAM3 segmentation model facebook/sam3: ")
    # A local folder without a checkpoint in it is not an offline problem: the loader's own first line is kept.
    with pytest.raises(ModelUnavailable) as caught:
        load_pretrained("depth", "AutoModelForDepthEstimation", "AutoImageProcessor", str(tmp_path), CPU,
                        torch.float32)
    assert "HF_HUB_OFFLINE" not in caught.value.reason and "\n" not in caught.value.reason


def _config(*overrides: str):
    return load_config("mvp", overrides=["resolution=64", *overrides])


def test_auto_segmenter_falls_back_to_the_shipped_model_and_records_each_reason():
    stage = SegmentationStage(_config("segmentation.sam3_model=nobody/no-sam3",
                                      "segmentation.sam2_model=nobody/no-sam2"))
    segmenter = stage.prepare()
    assert segmenter.method == "mediapipe"
    info = stage.describe()
    assert info["method"] == "mediapipe"
    assert [(f["method"], f["model"]) for f in info["fallbacks"]] == [("sam3", "nobody/no-sam3"),
                                                                        ("sam2", "nobody/no-sam2")]
    assert all("HF_HUB_OFFLINE" in f["reason"] for f in info["fallbacks"])
    assert stage.prepare() is segmenter  # loaded once per process and device


@pytest.mark.parametrize("method", ["sam3", "sam2"])
def test_forced_segmenter_that_cannot_load_raises(method):
    stage = SegmentationStage(_config(f"segmentation.method={method}", f"segmentation.{method}_model=nobody/x"))
    with pytest.raises(ModelUnavailable, match="nobody/x"):
        stage.prepare()


def test_normals_auto_falls_back_to_mask_and_forced_depth_raises():
    stage = NormalsStage(_config("normals.depth_model=nobody/no-depth"))
    assert stage.prepare() is None
    assert stage.describe()["method"] == "mask_inflation"
    assert stage.describe()["fallbacks"][0]["model"] == "nobody/no-depth"
    with pytest.raises(ModelUnavailable, match="no-depth"):
        NormalsStage(_config("normals.method=depth", "normals.depth_model=nobody/no-depth")).prepare()

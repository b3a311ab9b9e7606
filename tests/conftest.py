"""Shared fixtures: synthetic scenes with known ground truth, and the real fixture faces."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never touch the network: the Hub is offline for this process and every subprocess it starts (set before
# huggingface_hub is imported, which reads it once).
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

FACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"


def sphere_normals(size: int, radius_fraction: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic normals (``1 x 3 x S x S``) and mask (``1 x 1 x S x S``) of a sphere facing the camera."""
    coords = (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / (radius_fraction * size)
    y, x = torch.meshgrid(-coords, coords, indexing="ij")  # y up
    r2 = x**2 + y**2
    mask = (r2 < 1).double()
    z = torch.sqrt((1 - r2).clamp_min(0))
    normals = torch.stack([x, y, z]) * mask + torch.tensor([0, 0, 1.0]).view(3, 1, 1) * (1 - mask)
    return normals[None].float(), mask[None, None].float()


def textured_albedo(size: int, seed: int = 0, block: int = 6) -> torch.Tensor:
    """``1 x 3 x S x S`` albedo in [0.35, 0.85]: random colour blocks (high frequency, constant local mean)."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.rand(1, 3, size // block + 1, size // block + 1, generator=generator)
    blocks = cells.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)[..., :size, :size]
    return 0.35 + 0.5 * blocks


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not FACES_DIR.is_dir():
        pytest.skip(f"fixture faces not found at {FACES_DIR} (they live in the shared/ folder beside the repo)")
    return FACES_DIR


@pytest.fixture(scope="session")
def face_paths(faces_dir: Path) -> list[Path]:
    return sorted(faces_dir.glob("*.png"))


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def save_resized_faces(faces_dir: Path, folder: Path, count: int, size: int, resample: int = 3) -> Path:
    """The first ``count`` fixture faces, RGB, resized to ``size`` squared (``resample``: a PIL filter, bicubic by
    default), saved under their names in ``folder``."""
    from PIL import Image

    for path in sorted(faces_dir.glob("*.png"))[:count]:
        Image.open(path).convert("RGB").resize((size, size), resample).save(folder / path.name)
    return folder


def build_small(faces: Path, out: Path, *extra: str) -> tuple[int, list[dict], dict]:
    """The CLI on a folder of faces at 96 px: ``(exit code, rows sorted by image_id, build report)``; no rows and no
    report when the build failed."""
    import json

    import pyarrow.parquet as pq

    from relight_datasets.cli import main

    code = main(["--source", f"folder:{faces}", "--out", str(out), "--resolution", "96", "--quiet", *extra])
    if code != 0:
        return code, [], {}
    rows = pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()
    return code, sorted(rows, key=lambda row: row["image_id"]), json.loads((out / "build_report.json").read_text())


@pytest.fixture
def pipeline_failing_for(monkeypatch):
    """Injected fault: ``pipeline_failing_for(image_id)`` makes the real ``RelightPipeline`` raise
    ``ValueError("cannot segment <id>")`` whenever that id is in its batch, so callers' row-by-row retry must isolate
    it."""
    from relight_datasets.builder.pipeline import RelightPipeline

    real_call = RelightPipeline.__call__

    def install(bad: str) -> None:
        def failing_for_one_id(self, batch, rank=None):
            if bad in batch["image_id"]:
                raise ValueError(f"cannot segment {bad}")
            return real_call(self, batch, rank)

        monkeypatch.setattr(RelightPipeline, "__call__", failing_for_one_id)

    return install

"""On-the-fly training transforms: paired augmentation, relighting per epoch, the batched GPU variant, DataLoader and
streaming use, pickling, and agreement with the build."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image
from torch.utils.data import DataLoader

from relight_datasets.cli import main
from relight_datasets.config import BuildConfig, load_config
from relight_datasets.ops.color import linear_to_srgb, srgb_to_linear
from relight_datasets.ops.composite import background_plate, composite, feathered_alpha
from relight_datasets.ops.normals import decode_normals, encode_normals
from relight_datasets.ops.sh import MIRROR_X_SIGNS
from relight_datasets.relighting import LABEL_SHAPES, draw_light, relit_foreground
from relight_datasets.rng import row_generator
from relight_datasets.transforms import Compose, PairedTransform, RelightBatch, RelightOnTheFly
from relight_datasets.transforms.base import download_images, uint8_to_unit, upload_images
from relight_datasets.transforms.on_the_fly import resolve_config
from tests.conftest import sphere_normals


def uint8_to_float(arrays: list[np.ndarray]) -> torch.Tensor:
    """Equal-sized uint8 arrays -> float ``B x C x H x W`` in [0, 1] on the CPU, as the build's stages read them."""
    return uint8_to_unit(upload_images(arrays, torch.device("cpu")))


float_to_uint8 = download_images

FACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"
RESOLUTION = 128
IMAGE_KEYS = ("image_id", "input", "mask", "albedo", "normals", "degraded", "composite")


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, BuildConfig]:
    """3 fixture faces built at 128 px; returns the folder and the config recorded in its card."""
    if not FACES_DIR.is_dir():
        pytest.skip(f"fixture faces not found at {FACES_DIR} (they live in the shared/ folder beside the repo)")
    out = tmp_path_factory.mktemp("on_the_fly") / "pairs"
    code = main(["--source", f"folder:{FACES_DIR}", "--limit", "3", "--out", str(out),
                 "--resolution", str(RESOLUTION), "--batch-size", "3", "--quiet"])
    assert code == 0
    recorded = DatasetCard.load(out / "README.md").data.to_dict()["relight_datasets"]["config"]
    return out, resolve_config(recorded)


@pytest.fixture(scope="module")
def rows(built):
    out, _ = built
    return load_dataset(str(out), split="train")[:3]


def l_mask(size: int = 64) -> np.ndarray:
    """An asymmetric L-shaped mask (uint8, 255 inside): a vertical bar on the left and a foot to the right."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 8 : size * 7 // 8, size // 8 : size * 3 // 8] = 255
    mask[size * 5 // 8 : size * 7 // 8, size // 8 : size * 3 // 4] = 255
    return mask


def synthetic_row(size: int = 64) -> dict:
    """One row with known content: ``input`` pure red exactly inside the L mask and blue outside; ``composite`` green
    inside and the input outside; sphere normals; lighting metadata with the light from the left."""
    mask = l_mask(size)
    inside = (mask > 0)[..., None]
    red, blue, green = (np.array(c, np.uint8) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0)))
    image = np.where(inside, red, blue).astype(np.uint8)
    normals, _ = sphere_normals(size)
    light = [-0.8, 0.0, 0.6]
    key = {"role": "key", "elevation_deg": 36.87, "azimuth_deg": 180.0, "kelvin": 6500.0, "tint": 0.0,
           "radius_deg": 3.0}
    params = {"lights": [key], "environment": {"kind": "room", "kelvin": 6500.0, "ceiling_gain": 1.5},
              "pattern": None, "specular": None}
    return {
        "image_id": ["synthetic.png"],
        "input": [Image.fromarray(image)],
        "mask": [Image.fromarray(mask, mode="L")],
        "albedo": [Image.fromarray(np.where(inside, image, 0).astype(np.uint8))],
        "degraded": [Image.fromarray(np.where(inside, green, 0).astype(np.uint8))],
        "composite": [Image.fromarray(np.where(inside, green, image).astype(np.uint8))],
        "normals": [Image.fromarray(float_to_uint8(encode_normals(normals))[0])],
        "degradation_type": ["soft_shading"],
        "light_setup": ["single"],
        "light_direction": [light],
        "ambient": [0.7],
        "light_directions": [[light, [0.0] * 3, [0.0] * 3]],
        "sh_irradiance": [[float(k + 1) for k in range(27)]],
        "degradation_params": [json.dumps(params, sort_keys=True)],
        "instruction": ["light from the left, faint crisp shadows"],
    }


def collate(batch: dict, keys=IMAGE_KEYS) -> dict:
    size = len(batch["image_id"])
    return torch.utils.data.default_collate([{k: batch[k][i] for k in keys} for i in range(size)])


# ---------------------------------------------------------------------------------------------------------------------
# Agreement with the build


def test_stored_degraded_and_composite_are_reproduced_from_the_stored_columns(built, rows):
    """relit_foreground() on the stored uint8 albedo/normals/mask/input with the build's draw, encoded to sRGB, gives
    the stored degraded bit for bit, and compositing it over the input gives the stored composite: the stored columns
    are all the on-the-fly path needs."""
    _, config = built
    for row in range(3):
        albedo, normals, mask, image = (uint8_to_float([np.asarray(rows[c][row])])
                                        for c in ("albedo", "normals", "mask", "input"))
        light = draw_light(config, row_generator(config.seed, rows["image_id"][row], "degradation"))
        radiance, _ = relit_foreground(srgb_to_linear(albedo), decode_normals(normals), (mask > 0.5).float(), image,
                                       [light], config)
        degraded_u8 = float_to_uint8(linear_to_srgb(radiance))[0]
        np.testing.assert_array_equal(degraded_u8, np.asarray(rows["degraded"][row]))
        alpha = feathered_alpha(mask, config.recombination.feather_px * RESOLUTION / config.reference_resolution)
        result = composite(uint8_to_float([degraded_u8]), background_plate(image, "original"), alpha)
        np.testing.assert_array_equal(float_to_uint8(result)[0], np.asarray(rows["composite"][row]))


def test_epoch_zero_with_the_build_seed_reproduces_the_stored_rows(built, rows):
    _, config = built
    out = RelightOnTheFly(config, seed=config.seed)(rows)
    for row in range(3):
        for column in ("degraded", "composite", "albedo", "input", "normals"):
            np.testing.assert_array_equal(float_to_uint8(out[column][row][None])[0], np.asarray(rows[column][row]))
        for column, shape in LABEL_SHAPES.items():
            if shape is None:
                assert out[column][row] == rows[column][row], column
            else:  # stored as float32
                np.testing.assert_array_equal(out[column][row].numpy(), np.float32(rows[column][row]), err_msg=column)


# ---------------------------------------------------------------------------------------------------------------------
# PairedTransform


@pytest.mark.parametrize("size", [64, (48, 40)])
def test_paired_transform_keeps_mask_and_images_aligned_with_and_without_flip(size):
    row = synthetic_row()
    kwargs = {"size": size, "scale": (0.5, 0.9), "seed": 7}
    off = PairedTransform(hflip=False, **kwargs)(row)
    on = PairedTransform(hflip=1.0, **kwargs)(row)
    height, width = (size, size) if isinstance(size, int) else size
    for out in (off, on):
        mask = out["mask"][0]
        assert mask.shape == (1, height, width) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.mean() < 1
        image = out["input"][0]
        # input = red * m + blue * (1 - m) before resampling, so after it red > blue exactly where the
        # resampled mask crosses 0.5: the thresholded mask and the image share one pixel grid
        assert torch.equal(mask[0] > 0, image[0] > image[2])
        outside = (mask == 0).expand(3, -1, -1)
        assert torch.equal(out["composite"][0][outside], image[outside])
        assert (out["composite"][0][1][mask[0] > 0] > 0.5).all()  # the green person, inside the mask
        assert (out["albedo"][0][outside] == 0).all() and (out["degraded"][0][outside] == 0).all()
        for column in ("input", "albedo", "degraded", "composite", "normals"):
            assert out[column][0].shape == (3, height, width)
            assert 0 <= out[column][0].min() and out[column][0].max() <= 1
    # same crop, mirrored; and the L is asymmetric so the flip is visible
    for column in ("input", "mask", "albedo", "degraded", "composite"):
        assert torch.equal(on[column][0], off[column][0].flip(-1)), column
    assert not torch.equal(on["mask"][0], off["mask"][0])


def test_paired_transform_flip_negates_normal_x_only():
    row = synthetic_row()
    kwargs = {"size": 64, "scale": (1.0, 1.0), "ratio": (1.0, 1.0)}  # full frame, no resampling
    off = PairedTransform(hflip=False, **kwargs)(row)
    on = PairedTransform(hflip=1.0, **kwargs)(row)
    before = off["normals"][0] * 2 - 1
    after = on["normals"][0] * 2 - 1
    torch.testing.assert_close(after[0], -before[0].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(after[1], before[1].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(after[2], before[2].flip(-1), atol=1e-6, rtol=0)
    assert before[0].abs().max() > 0.5  # the sphere has strongly tilted normals, so the check has teeth
    # a sphere is mirror-symmetric: flipped and x-negated, its normals are the original ones
    torch.testing.assert_close(after, before, atol=2 / 255 + 1e-6, rtol=0)  # 8-bit encoding of x = 0


def test_paired_transform_mirrors_the_lighting_metadata_on_flip():
    row = synthetic_row()
    on = PairedTransform(32, hflip=1.0)(row)
    off = PairedTransform(32, hflip=False)(row)
    assert off["light_direction"][0] == row["light_direction"][0] and off["instruction"] == row["instruction"]
    assert on["light_direction"][0] == pytest.approx([0.8, 0.0, 0.6])
    assert on["light_directions"][0][0] == pytest.approx([0.8, 0.0, 0.6])
    assert json.loads(on["degradation_params"][0])["lights"][0]["azimuth_deg"] == pytest.approx(0.0)
    signs = MIRROR_X_SIGNS * 3
    assert on["sh_irradiance"][0] == pytest.approx([s * (k + 1) for k, s in enumerate(signs)])
    assert sum(s < 0 for s in signs) == 9  # x, xy and xz of each channel change sign
    assert "from the right" in on["instruction"][0] and "from the left" in row["instruction"][0]
    assert on["image_id"] == row["image_id"] and on["ambient"] == row["ambient"]  # other columns pass through


def test_paired_transform_seeding():
    row = synthetic_row()
    seeded = PairedTransform(32, scale=(0.3, 1.0), seed=1)
    first, again = seeded(row)["input"][0], seeded(row)["input"][0]
    assert torch.equal(first, again)
    draws = {PairedTransform(32, scale=(0.3, 1.0)).draw("synthetic.png", 64, 64) for _ in range(8)}
    assert len(draws) > 1  # unseeded: a new crop at every access
    epochs = set()
    for epoch in range(4):
        seeded.set_epoch(epoch)
        epochs.add(seeded.draw("synthetic.png", 64, 64))
    assert len(epochs) > 1
    with pytest.raises(KeyError, match="image_id"):
        seeded({k: v for k, v in row.items() if k != "image_id"})


# ---------------------------------------------------------------------------------------------------------------------
# RelightOnTheFly and RelightBatch


def test_relight_on_the_fly_changes_the_lighting_but_not_the_person_or_background(built, rows):
    _, config = built
    relighter = RelightOnTheFly(config, seed=11)
    epoch0 = relighter(rows)
    relighter.set_epoch(1)
    epoch1 = relighter(rows)
    for row in range(3):
        assert not torch.equal(epoch0["degraded"][row], epoch1["degraded"][row])
        assert not torch.equal(epoch0["composite"][row], epoch1["composite"][row])
        assert epoch0["degradation_params"][row] != epoch1["degradation_params"][row]
        image = uint8_to_float([np.asarray(rows["input"][row])])[0]
        mask = uint8_to_float([np.asarray(rows["mask"][row])])[0]
        for out in (epoch0, epoch1):
            assert torch.equal(out["input"][row], image) and torch.equal(out["mask"][row], mask)
            assert torch.equal(out["albedo"][row], uint8_to_float([np.asarray(rows["albedo"][row])])[0])
            assert torch.equal(out["normals"][row], uint8_to_float([np.asarray(rows["normals"][row])])[0])
            outside = (mask == 0).expand(3, -1, -1)
            assert torch.equal(out["composite"][row][outside], image[outside])
            assert (out["degraded"][row][outside] == 0).all()
    relighter.set_epoch(0)
    repeat = relighter(rows)
    assert all(torch.equal(a, b) for a, b in zip(repeat["composite"], epoch0["composite"], strict=True))
    assert repeat["instruction"] == epoch0["instruction"]
    unseeded = RelightOnTheFly(config)
    first, second = unseeded(rows), unseeded(rows)
    assert first["degradation_params"] != second["degradation_params"]
    assert not torch.equal(first["composite"][0], second["composite"][0])


def test_relight_leaves_tensor_inputs_untouched_in_both_compose_orders(built, rows):
    _, config = built
    crop_then_relight = Compose([PairedTransform(96, seed=2), RelightOnTheFly(config, seed=3)])(rows)
    relight_then_crop = Compose([RelightOnTheFly(config, seed=3), PairedTransform(96, seed=2)])(rows)
    cropped = PairedTransform(96, seed=2)(rows)
    for out in (crop_then_relight, relight_then_crop):
        for row in range(3):
            mask = out["mask"][row]
            assert mask.shape == (1, 96, 96) and set(mask.unique().tolist()) <= {0.0, 1.0}
            outside = (mask == 0).expand(3, -1, -1)
            assert torch.equal(out["composite"][row][outside], out["input"][row][outside])
            assert out["degraded"][row].shape == (3, 96, 96)
    for column in ("input", "mask", "albedo", "normals"):
        for row in range(3):
            assert torch.equal(crop_then_relight[column][row], cropped[column][row])
    # tensors passed in come back as the same objects, unmodified
    relit = RelightOnTheFly(config, seed=3)(cropped)
    assert all(relit["albedo"][r] is cropped["albedo"][r] for r in range(3))


def test_relight_on_the_fly_handles_rows_of_different_sizes():
    small, large = synthetic_row(48), synthetic_row(64)
    batch = {k: small[k] + large[k] for k in small}
    batch["image_id"] = ["a", "b"]
    out = RelightOnTheFly(seed=0)(batch)
    assert out["composite"][0].shape == (3, 48, 48) and out["composite"][1].shape == (3, 64, 64)
    single = RelightOnTheFly(seed=0)({**{k: large[k] for k in large}, "image_id": ["b"]})
    assert torch.equal(single["composite"][0], out["composite"][1])


@pytest.mark.parametrize("epoch", [0, 2])
def test_batched_variant_matches_the_per_row_transform(built, rows, epoch):
    _, config = built
    cropped = PairedTransform(96, seed=4)(rows)
    per_row, batched = RelightOnTheFly(config, seed=9), RelightBatch(config, seed=9, device="cpu")
    per_row.set_epoch(epoch)
    batched.set_epoch(epoch)
    expected = collate(per_row(cropped), (*IMAGE_KEYS, *LABEL_SHAPES))
    got = batched(collate(cropped))
    for key in ("degraded", "composite", *(k for k, shape in LABEL_SHAPES.items() if shape is not None)):
        assert torch.equal(got[key], expected[key]), key
    for key in (k for k, shape in LABEL_SHAPES.items() if shape is None):
        assert got[key] == expected[key], key
    assert torch.equal(got["albedo"], expected["albedo"])  # passed through
    # uint8 batches and explicit ids work too, and give the same draws
    as_uint8 = {k: (v * 255).round().to(torch.uint8) for k, v in collate(cropped).items() if k != "image_id"}
    again = batched(as_uint8, image_ids=rows["image_id"])

    assert again["degradation_params"] == expected["degradation_params"]  # the draws; the exposure follows the pixels
    difference = (again["composite"] - expected["composite"]).abs()
    # 8-bit rounded inputs move the edge of a cast shadow by a pixel here and there, and nothing else
    assert (difference > 1 / 255 + 1e-6).float().mean() < 1e-3 and difference.max() < 8 / 255


# ---------------------------------------------------------------------------------------------------------------------
# DataLoader, streaming, pickling


@pytest.mark.parametrize("persistent", [False, True])
def test_dataloader_with_workers_over_set_transform(built, persistent):
    out, config = built
    dataset = load_dataset(str(out), split="train")
    transform = Compose([PairedTransform(64, seed=5), RelightOnTheFly(config, seed=5)])
    dataset.set_transform(transform)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=persistent)

    def epoch(number: int) -> dict:
        transform.set_epoch(number)  # reaches running (persistent) workers too
        batches = list(loader)
        assert len(batches) == 2  # 2 + 1 rows, one batch per worker
        return {k: torch.cat([b[k] for b in batches]) for k in ("composite", "degraded", "input", "mask")}

    first, second, repeat = epoch(0), epoch(1), epoch(0)
    assert first["composite"].shape == (3, 3, 64, 64) and first["mask"].shape == (3, 1, 64, 64)
    outside = (first["mask"] == 0).expand(-1, 3, -1, -1)
    assert torch.equal(first["composite"][outside], first["input"][outside])
    assert torch.equal(first["composite"], repeat["composite"])  # seeded: the epoch, not the worker, decides
    assert not torch.equal(first["degraded"], second["degraded"])


def test_streamed_dataset_map(built):
    out, config = built
    streamed = load_dataset(str(out), split="train", streaming=True)
    transform = Compose([RelightOnTheFly(config, seed=1), PairedTransform(48, seed=1)])
    mapped = streamed.map(transform, batched=True, batch_size=2)
    batches = list(DataLoader(mapped, batch_size=3))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["composite"].shape == (3, 3, 48, 48) and batch["light_direction"].shape == (3, 3)
    assert len(batch["instruction"]) == 3 and all(isinstance(t, str) for t in batch["instruction"])
    outside = (batch["mask"] == 0).expand(-1, 3, -1, -1)
    assert torch.equal(batch["composite"][outside], batch["input"][outside])


def test_every_transform_pickles_and_behaves_the_same_after(built, rows):
    _, config = built
    transforms = [PairedTransform(64, seed=3), RelightOnTheFly(config, seed=3), RelightBatch(config, seed=3),
                  Compose([PairedTransform(64, seed=3), RelightOnTheFly("mvp", seed=3)])]
    for transform in transforms:
        transform.set_epoch(2)
        copy = pickle.loads(pickle.dumps(transform))
        assert type(copy) is type(transform) and repr(copy) == repr(transform)
        if isinstance(transform, RelightBatch):
            batch = collate(PairedTransform(64, seed=3)(rows))
            assert torch.equal(copy(batch)["composite"], transform(batch)["composite"])
        else:
            assert torch.equal(copy(rows)["input"][0], transform(rows)["input"][0])


def test_config_resolution():
    assert resolve_config(None) == load_config("mvp")
    assert resolve_config("full") == load_config("full")
    config = load_config("mvp", overrides=["seed=3"])
    assert resolve_config(config) is config
    assert resolve_config(config.to_dict()) == config
    with pytest.raises(TypeError):
        resolve_config(3)

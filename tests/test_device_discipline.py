"""Device discipline (issue 13): every op, the on-the-fly transforms, the weight-free pipeline and the model stages run
under :func:`device_discipline.device_discipline` and give the same results as without it.

The harness itself is tested first, on small deliberately bad functions: the bug class it exists for is
``normals_from_depth``'s quantile probabilities built on the CPU next to a CUDA depth map.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import pkgutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import load_rgb
from device_discipline import DeviceDisciplineError, device_discipline
from PIL import Image

import relight_datasets.ops
from relight_datasets import rng
from relight_datasets.builder.pipeline import RelightPipeline
from relight_datasets.config import load_config
from relight_datasets.models import mediapipe
from relight_datasets.ops import (
    albedo,
    classical_segmentation,
    color,
    composite,
    environments,
    face_mesh,
    filters,
    learned_segmentation,
    lighting,
    normals,
    patterns,
    sh,
    shadows,
    smoothness,
)
from relight_datasets.testing import make_tiny_checkpoints
from relight_datasets.transforms import PairedTransform, RelightBatch, RelightOnTheFly

RESOLUTION = 128
TESTS_DIR = Path(__file__).resolve().parent


def assert_same(got, expected, where: str = "result") -> None:
    """Bit-for-bit equality of nested results: tensors (values, dtype and device), arrays, dataclasses, containers."""
    assert type(got) is type(expected), f"{where}: {type(got).__name__} != {type(expected).__name__}"
    if isinstance(expected, torch.Tensor):
        assert got.device == expected.device and got.dtype == expected.dtype, where
        assert torch.equal(got, expected), where
    elif isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and np.array_equal(got, expected), where
    elif dataclasses.is_dataclass(expected):
        for item in dataclasses.fields(expected):
            assert_same(getattr(got, item.name), getattr(expected, item.name), f"{where}.{item.name}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same(got[key], expected[key], f"{where}[{key!r}]")
    else:
        assert got == expected, where


# ---------------------------------------------------------------------------------------------------------------------
# The harness


def quantile_range_as_on_main(depth: torch.Tensor) -> torch.Tensor:
    """The line ``normals_from_depth`` had on main: the probabilities are created without a device."""
    flat = depth.reshape(depth.shape[0], -1).double()
    return torch.quantile(flat, torch.tensor([0.02, 0.98], dtype=flat.dtype), dim=1)


def test_a_factory_without_device_in_checked_code_fails_and_names_the_line():
    depth = torch.rand(2, 1, 8, 8, device="cpu", dtype=torch.float32)
    with pytest.raises(DeviceDisciplineError, match=r"torch\.tensor creates a tensor without device= at "
                                                    r"tests/test_device_discipline\.py:\d+"):
        with device_discipline(checked=(TESTS_DIR,)):
            quantile_range_as_on_main(depth)


def test_on_the_meta_device_the_same_mistake_is_a_mixed_device_call_wherever_it_is_written():
    """With the default device on ``meta``, the tensor lands away from the CPU data, as on a GPU machine, and the
    call that meets both fails, even in code outside the checked folders."""
    depth = torch.rand(2, 1, 8, 8, device="cpu", dtype=torch.float32)
    with pytest.raises(DeviceDisciplineError, match=r"torch\.quantile got tensors on several devices \(cpu, meta\)"):
        with device_discipline(default_device="meta"):
            quantile_range_as_on_main(depth)


def test_explicit_devices_transfers_like_factories_and_numpy_pass():
    data = torch.rand(2, 3, 4, 4, device="cpu", dtype=torch.float32)
    with device_discipline(default_device="meta", checked=(TESTS_DIR,)) as record:
        q = torch.tensor([0.25, 0.75], device=data.device, dtype=data.dtype)
        torch.quantile(data.flatten(1), q, dim=1)
        torch.zeros_like(data) + torch.from_numpy(np.ones((2, 3, 4, 4), np.float32))
        moved = data.to("meta")
        moved.copy_(data)
        moved + torch.ones(1, device="meta", dtype=data.dtype)
    assert record.violations == []


def test_a_cpu_scalar_tensor_meeting_another_device_counts():
    on_meta = torch.ones(2, device="meta", dtype=torch.float32)
    with pytest.raises(DeviceDisciplineError, match=r"Tensor\.add got tensors on several devices \(cpu, meta\)"):
        with device_discipline():
            on_meta + torch.tensor(1.0, device="cpu", dtype=torch.float32)


def test_calls_from_other_code_are_not_checked_for_factories():
    with device_discipline() as record:  # checks relight_datasets only; this file is not part of it
        torch.zeros(3)
    assert record.violations == []


def test_the_error_escapes_except_exception_and_a_swallowed_one_is_raised_at_exit():
    depth = torch.rand(1, 1, 8, 8, device="cpu", dtype=torch.float32)
    with pytest.raises(DeviceDisciplineError):
        with device_discipline(checked=(TESTS_DIR,)):
            try:  # what the pipeline's retry-and-skip path does
                quantile_range_as_on_main(depth)
            except Exception:  # noqa: BLE001
                pytest.fail("DeviceDisciplineError must not be caught by `except Exception`")
    with pytest.raises(DeviceDisciplineError, match="1 device discipline violation"):
        with device_discipline(checked=(TESTS_DIR,)):
            try:
                quantile_range_as_on_main(depth)
            except BaseException:  # noqa: BLE001 - swallowed on purpose
                pass


def test_collecting_lists_every_site_once_with_its_count():
    depth = torch.rand(1, 1, 8, 8, device="cpu", dtype=torch.float32)
    with pytest.raises(DeviceDisciplineError) as raised:
        with device_discipline(checked=(TESTS_DIR,), raise_at_once=False) as record:
            for _ in range(3):
                quantile_range_as_on_main(depth)
            torch.ones(2)
    assert len(record.violations) == 4
    lines = str(raised.value).splitlines()
    assert lines[0] == "4 device discipline violation(s), 2 distinct:"
    assert lines[1].startswith("torch.tensor creates a tensor without device=") and lines[1].endswith("(3 times)")
    assert lines[2].startswith("torch.ones creates a tensor without device=")


# ---------------------------------------------------------------------------------------------------------------------
# Every op in relight_datasets.ops


def public_ops() -> set[str]:
    """``module.function`` for every public function defined in a module of ``relight_datasets.ops``."""
    names = set()
    for info in pkgutil.iter_modules(relight_datasets.ops.__path__):
        module = importlib.import_module(f"relight_datasets.ops.{info.name}")
        names |= {f"{info.name}.{name}" for name, value in vars(module).items()
                  if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_")}
    return names


@pytest.fixture(scope="module")
def op_inputs(face_paths, tmp_path_factory) -> dict:
    """Small synthetic inputs (and one fixture face) for the op cases, all on the CPU."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    size = (2, 1, 40, 32)
    image = torch.rand(2, 3, *size[2:], generator=generator, device="cpu", dtype=torch.float32)
    mask = (torch.rand(size, generator=generator, device="cpu", dtype=torch.float32) > 0.3).float()
    depth = torch.rand(size, generator=generator, device="cpu", dtype=torch.float32)
    unit = normals.normals_from_mask(mask)
    face = load_rgb(face_paths[0], RESOLUTION)
    found = classical_segmentation.segment_person_classical(face)
    assert found is not None, "the fixture face must be found"
    meshes = mediapipe.face_meshes(face)
    assert meshes, "the fixture face's mesh must be found"
    maps = tmp_path_factory.mktemp("maps")
    radiance = np.full((16, 32, 3), 0.2, np.float32)
    radiance[4, 8] = 30.0
    assert cv2.imwrite(str(maps / "sky.hdr"), radiance)
    return {"image": image, "mask": mask, "depth": depth, "normals": unit, "face": face, "face_box": found.face_box,
            "face_mask": found.mask, "light": [[0.3, 0.4, 0.866], [-0.6, 0.0, 0.8]],
            "meshes": meshes, "maps": maps,
            "sh": torch.rand(2, 3, 9, generator=generator, device="cpu", dtype=torch.float32) - 0.3,
            "pattern": patterns.render_pattern("voronoi", 8, 8, rng.row_generator(0, "p", "pattern"))[1]}


OP_CASES = {
    "albedo.masked_quantiles": lambda x: albedo.masked_quantiles(
        x["image"], x["mask"], torch.tensor([0.1, 0.5], device="cpu", dtype=torch.float32)),
    "albedo.stretch_to_unit": lambda x: albedo.stretch_to_unit(x["image"], x["mask"], 1.0),
    "albedo.multi_scale_retinex": lambda x: [albedo.multi_scale_retinex(x["image"], x["mask"], [3.0, 12.0]),
                                             albedo.multi_scale_retinex(x["image"], x["mask"], [3.0, 20.0], 0.3, 2)],
    "albedo.robust_surround": lambda x: albedo.robust_surround(x["image"] + 0.01, x["mask"], 17.0, 0.3, 2),
    "albedo.retinex_albedo": lambda x: [albedo.retinex_albedo(x["image"], x["mask"], [3.0, 12.0], 1.0, color, 0.3, 2)
                                        for color in ("luminance", "channels")],
    "albedo.bilateral_filter": lambda x: albedo.bilateral_filter(x["image"][:, :1], 5, 0.1, 3.0, x["mask"]),
    "albedo.lab_albedo": lambda x: albedo.lab_albedo(x["image"], x["mask"], 5, 20.0, 3.0, 1.0),
    "albedo.blend_with_original": lambda x: albedo.blend_with_original(
        x["image"].flip(1), x["image"], torch.tensor([0.15, 0.25], device="cpu", dtype=torch.float64)),
    "classical_segmentation.detect_face_box": lambda x: classical_segmentation.detect_face_box(x["face"]),
    "classical_segmentation.person_prior_box": lambda x: classical_segmentation.person_prior_box(
        x["face_box"], RESOLUTION, RESOLUTION),
    "classical_segmentation.segment_person_classical": lambda x: classical_segmentation.segment_person_classical(
        x["face"], seed=3),
    "classical_segmentation.upsample_mask_guided": lambda x: classical_segmentation.upsample_mask_guided(
        (x["face_mask"][::2, ::2] > 0).astype(np.uint8), x["face"]),
    "classical_segmentation.guided_filter": lambda x: classical_segmentation.guided_filter(
        x["face"][..., 0].astype(np.float32) / 255, (x["face_mask"] > 0).astype(np.float32), 3, 1e-3),
    "classical_segmentation.fill_small_holes": lambda x: classical_segmentation.fill_small_holes(
        (x["face_mask"] > 0).astype(np.uint8)),
    "learned_segmentation.mirror_consensus": lambda x: learned_segmentation.mirror_consensus(
        x["face_mask"] / np.float32(255), x["face_mask"][:, ::-1] / np.float32(255)),
    "learned_segmentation.person_mask_from_probability": lambda x: learned_segmentation.person_mask_from_probability(
        x["face"], x["face_mask"].astype(np.float32) / 255),
    "color.rgb_to_lab": lambda x: color.rgb_to_lab(x["image"]),
    "color.lab_to_rgb": lambda x: color.lab_to_rgb(color.rgb_to_lab(x["image"])),
    "color.luminance": lambda x: color.luminance(x["image"]),
    "color.srgb_to_linear": lambda x: color.srgb_to_linear(x["image"]),
    "color.linear_to_srgb": lambda x: color.linear_to_srgb(x["image"]),
    "color.planckian_xy": lambda x: color.planckian_xy(3200.0),
    "color.kelvin_to_rgb": lambda x: color.kelvin_to_rgb(4500.0, 0.05),
    "color.kelvin_word": lambda x: color.kelvin_word(9000.0),
    "environments.clear_sky": lambda x: environments.clear_sky((0.3, 0.6, 0.74), 12000.0, 0.2, 5000.0),
    "environments.overcast_sky": lambda x: environments.overcast_sky(7000.0, 0.2, 5000.0),
    "environments.room": lambda x: environments.room(4000.0, 1.5),
    "environments.indoor": lambda x: environments.indoor((0.8, 0.2, 0.57), 6500.0, 3500.0, [(0.0, 0.9, 0.44)], 2800.0),
    "environments.environment_maps_in": lambda x: environments.environment_maps_in(x["maps"]),
    "environments.load_environment_map": lambda x: environments.load_environment_map(
        str(environments.environment_maps_in(x["maps"])[0])),
    "sh.sh_basis": lambda x: sh.sh_basis(x["normals"], dim=1),
    "sh.radiance_to_irradiance": lambda x: sh.radiance_to_irradiance(x["sh"]),
    "sh.directional_irradiance_sh": lambda x: sh.directional_irradiance_sh(
        torch.tensor([0.6, 0.0, 0.8], device="cpu", dtype=torch.float64), x["sh"][0, :, 0]),
    "sh.irradiance": lambda x: sh.irradiance(x["sh"], x["normals"]),
    "sh.equirect_directions": lambda x: sh.equirect_directions(8, 16),
    "sh.project_radiance": lambda x: sh.project_radiance(environments.room(5000.0, 1.2), 30.0),
    "sh.fit_irradiance": lambda x: sh.fit_irradiance(x["image"], x["image"].flip(-1) + 0.1, x["normals"], x["mask"]),
    "sh.dominant_direction": lambda x: sh.dominant_direction(x["sh"][0]),
    "sh.irradiance_table": lambda x: sh.irradiance_table(x["sh"], 17),
    "sh.irradiance_lookup": lambda x: sh.irradiance_lookup(sh.irradiance_table(x["sh"], 17), x["normals"]),
    "shadows.height_from_normals": lambda x: shadows.height_from_normals(x["normals"], x["mask"]),
    "shadows.cast_shadows": lambda x: shadows.cast_shadows(
        x["depth"] * 10, torch.tensor(x["light"], device="cpu", dtype=torch.float32),
        torch.tensor([0.5, 4.0], device="cpu", dtype=torch.float32)),
    "shadows.ambient_occlusion": lambda x: shadows.ambient_occlusion(x["depth"] * 10, (1.5, 4.0)),
    "shadows.displace": lambda x: shadows.displace(x["image"], x["image"][:, :2] * 3 - 1.5),
    "composite.feathered_alpha": lambda x: composite.feathered_alpha(x["mask"], 2.5),
    "composite.background_plate": lambda x: [composite.background_plate(x["image"], mode)
                                             for mode in ("original", "gray", "black")],
    "composite.composite": lambda x: composite.composite(x["image"], x["image"].flip(1), x["mask"]),
    "face_mesh.face_mesh_edges": lambda x: face_mesh.face_mesh_edges(),
    "face_mesh.triangles_from_edges": lambda x: face_mesh.triangles_from_edges(face_mesh.face_mesh_edges()),
    "face_mesh.orient_consistently": lambda x: face_mesh.orient_consistently(
        face_mesh.triangles_from_edges(face_mesh.face_mesh_edges())),
    "face_mesh.boundary_loops": lambda x: face_mesh.boundary_loops(face_mesh.face_mesh_topology().triangles),
    "face_mesh.fill_holes": lambda x: face_mesh.fill_holes(
        face_mesh.face_mesh_topology().triangles, list(face_mesh.face_mesh_topology().holes), 468),
    "face_mesh.with_hole_centres": lambda x: face_mesh.with_hole_centres(
        torch.as_tensor(x["meshes"][0], device="cpu", dtype=torch.float32), face_mesh.face_mesh_topology().holes),
    "face_mesh.vertex_normals": lambda x: face_mesh.vertex_normals(
        x["image"].reshape(-1, 3)[:30], torch.arange(30, device="cpu", dtype=torch.long).reshape(10, 3)),
    "face_mesh.rasterize": lambda x: face_mesh.rasterize(
        x["image"].reshape(-1, 3)[:30] * 40, torch.arange(30, device="cpu", dtype=torch.long).reshape(10, 3),
        x["image"].reshape(-1, 2)[:30], 40, 32),
    "face_mesh.render_face_geometry": lambda x: face_mesh.render_face_geometry(x["meshes"], 128, 128, "cpu"),
    "face_mesh.render_face_normals": lambda x: face_mesh.render_face_normals(
        x["meshes"], 128, 128, "cpu", torch.float32, max_side=64),
    "face_mesh.blend_face_normals": lambda x: face_mesh.blend_face_normals(
        x["normals"], x["normals"].flip(-1), x["mask"], 3.0),
    "filters.gaussian_blur": lambda x: [filters.gaussian_blur(x["image"], 1.5),
                                        filters.gaussian_blur(x["image"], 9.0, x["mask"])],
    "filters.kernel_size_to_sigma": lambda x: filters.kernel_size_to_sigma(31),
    "lighting.light_direction": lambda x: lighting.light_direction(40.0, 135.0),
    "lighting.lambertian_shading": lambda x: lighting.lambertian_shading(x["normals"], x["light"], [0.6, 0.8]),
    "lighting.phong_specular": lambda x: lighting.phong_specular(x["normals"], x["light"], [0.3, 0.5], [10, 60]),
    "lighting.describe_direction": lambda x: lighting.describe_direction(30.0, 200.0),
    "normals.unit_vectors": lambda x: normals.unit_vectors(x["image"] - 0.5),
    "normals.normals_from_height": lambda x: normals.normals_from_height(x["depth"] * 4),
    "normals.normals_from_depth": lambda x: [normals.normals_from_depth(x["depth"], closer, 0.5)
                                             for closer in (True, False)],
    "normals.normals_from_mask": lambda x: normals.normals_from_mask(x["mask"]),
    "normals.facing_camera": lambda x: normals.facing_camera(x["normals"] * torch.tensor(
        [1.0, 1.0, -1.0], device="cpu", dtype=torch.float32).view(1, 3, 1, 1)),
    "normals.encode_normals": lambda x: normals.encode_normals(x["normals"]),
    "normals.decode_normals": lambda x: normals.decode_normals(normals.encode_normals(x["normals"])),
    "patterns.render_pattern": lambda x: [patterns.render_pattern(family, 36, 28, rng.row_generator(1, "p", family))
                                          for family in patterns.PATTERN_FAMILIES],
    "patterns.render_pattern_from_params": lambda x: patterns.render_pattern_from_params(x["pattern"], 20, 24),
    "smoothness.banding_score": lambda x: [smoothness.banding_score(x["normals"], x["mask"]),
                                           smoothness.banding_score(x["depth"])],
}


def test_every_public_op_has_a_discipline_case():
    assert public_ops() == set(OP_CASES)


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_under_device_discipline_gives_the_same_result(op_inputs, name):
    expected = OP_CASES[name](op_inputs)
    with device_discipline(default_device="meta"):
        got = OP_CASES[name](op_inputs)
    assert_same(got, expected, name)


# ---------------------------------------------------------------------------------------------------------------------
# The weight-free pipeline and the on-the-fly transforms


def source_batch(face_paths: list[Path], count: int = 3) -> dict[str, list]:
    paths = face_paths[:count]
    return {"image_id": [path.name for path in paths], "source": ["fixture"] * len(paths),
            "input": [{"bytes": path.read_bytes(), "path": None} for path in paths]}


def prepared_pipeline(overrides: list[str]) -> RelightPipeline:
    pipeline = RelightPipeline(load_config("mvp", overrides=[f"resolution={RESOLUTION}", *overrides]), "cpu")
    pipeline.prepare()
    return pipeline


def run_pipeline(overrides: list[str], batch: dict[str, list], default_device: str | None = None) -> dict[str, list]:
    """The pipeline on ``batch`` once as it is, then once under the harness; both results must be equal."""
    pipeline = prepared_pipeline(overrides)
    expected = pipeline(batch)
    with device_discipline(default_device=default_device):
        got = pipeline(batch)
    assert_same(got, expected, "rows")
    return got


WEIGHT_FREE = ["segmentation.method=classical", "normals.method=classical"]
SHIPPED_MODELS = ["segmentation.method=mediapipe", "normals.method=face_mesh"]
"""The offline default: the MediaPipe models shipped with the package."""


@pytest.mark.parametrize("overrides", [WEIGHT_FREE, SHIPPED_MODELS], ids=["weight_free", "shipped_models"])
def test_offline_pipelines_under_device_discipline_give_the_same_rows(face_paths, overrides):
    rows = run_pipeline(overrides, source_batch(face_paths), default_device="meta")
    assert not any(rows["skip_reason"]), rows["skip_reason"]


@pytest.fixture(scope="module")
def weight_free_rows(face_paths) -> dict[str, list]:
    """The weight-free pipeline's rows (without the harness), the input of the on-the-fly transforms."""
    return prepared_pipeline(WEIGHT_FREE)(source_batch(face_paths))


def stored_rows(rows: dict[str, list]) -> dict[str, list]:
    """Pipeline rows as a loaded dataset gives them: images decoded to PIL."""
    return {name: [Image.open(io.BytesIO(value["bytes"])) if isinstance(value, dict) else value for value in values]
            for name, values in rows.items()}


def test_paired_transform_and_relight_on_the_fly_under_device_discipline(weight_free_rows):
    config = load_config("mvp", overrides=[f"resolution={RESOLUTION}"])
    rows = stored_rows(weight_free_rows)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        return RelightOnTheFly(config, seed=5)(PairedTransform(96, seed=2)(batch))

    expected = transform(rows)
    with device_discipline(default_device="meta"):
        got = transform(rows)
    assert_same(got, expected, "transformed rows")


def test_relight_batch_under_device_discipline(weight_free_rows):
    config = load_config("mvp", overrides=[f"resolution={RESOLUTION}"])
    cropped = PairedTransform(96, seed=4)(stored_rows(weight_free_rows))
    keys = ("albedo", "normals", "mask", "input")
    batch = {key: torch.stack(cropped[key]) for key in keys} | {"image_id": cropped["image_id"]}
    relighter = RelightBatch(config, seed=9, device="cpu")
    expected = relighter(batch)
    with device_discipline(default_device="meta"):
        got = relighter(batch)
    assert_same(got, expected, "relit batch")
    assert got["sh_irradiance"].shape == (len(batch["image_id"]), 27) and got["sh_irradiance"].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------------
# Model stages with tiny random checkpoints (the models' own internals create tensors, so no meta default device)


OPEN = ["segmentation.score_threshold=0", "segmentation.detector_threshold=0", "segmentation.min_coverage=0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("stage", ["sam3", "sam2_with_detector", "depth_normals", "marigold_normals",
                                   "intrinsic_albedo"])
def test_model_stage_under_device_discipline_gives_the_same_rows(tiny, face_paths, stage):
    overrides = {
        "sam3": ["segmentation.method=sam3", f"segmentation.sam3_model={tiny['sam3']}", "normals.method=classical",
                 *OPEN],
        "sam2_with_detector": ["segmentation.method=sam2", f"segmentation.sam2_model={tiny['sam2']}",
                               f"segmentation.detector_model={tiny['detector']}", "normals.method=classical", *OPEN],
        "depth_normals": ["segmentation.method=classical", "normals.method=depth",
                          f"normals.depth_model={tiny['depth']}"],
        "marigold_normals": ["segmentation.method=classical", "normals.method=marigold", "normals.normals_steps=2",
                             f"normals.normals_model={tiny['surface-normals']}"],
        "intrinsic_albedo": ["segmentation.method=classical", "normals.method=classical", "albedo.method=intrinsic",
                             f"albedo.intrinsic_model={tiny['intrinsics']}", "albedo.intrinsic_steps=2"],
    }[stage]
    rows = run_pipeline(overrides, source_batch(face_paths, 2))
    method_column = {"depth_normals": "normals_method", "marigold_normals": "normals_method",
                     "intrinsic_albedo": "albedo_method"}.get(stage, "segmentation_method")
    methods = {method.removeprefix("face_mesh+") for method in rows[method_column]}
    assert methods == {stage.split("_")[0]}, rows[method_column]

"""Face geometry from the face mesh: the derived topology, the z-buffered rasteriser on analytic meshes with exact
normals, the rendering of real fixture faces, and the normals stage that blends them into the body's normals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from relight_datasets.config import load_config
from relight_datasets.evaluation import analytic_mesh, analytic_shape, angular_error_deg
from relight_datasets.models import ModelUnavailable, mediapipe
from relight_datasets.ops.face_mesh import (
    blend_face_normals,
    boundary_loops,
    face_mesh_edges,
    face_mesh_topology,
    orient_consistently,
    rasterize,
    render_face_geometry,
    render_face_normals,
    triangles_from_edges,
    vertex_normals,
)
from relight_datasets.transforms import NormalsStage

NO_DEPTH = ["normals.depth_model=/nonexistent/depth"]


def directed_edges(triangles: np.ndarray) -> list[tuple[int, int]]:
    return [(u, v) for a, b, c in triangles.tolist() for u, v in ((a, b), (b, c), (c, a))]


def test_the_face_mesh_triangles_derived_from_its_edges_form_an_oriented_disc_with_three_holes():
    edges = face_mesh_edges()
    assert edges.shape == (1322, 2) and edges.min() == 0 and edges.max() == 467
    triangles = orient_consistently(triangles_from_edges(edges))
    assert len(triangles) == 852
    # Euler characteristic of a disc with three holes: V - E + F = 2 - 4 = -2, and every listed edge is used.
    used = {tuple(sorted(edge)) for edge in directed_edges(triangles)}
    assert used == {tuple(edge) for edge in edges.tolist()}
    assert 468 - len(used) + len(triangles) == -2
    directed = directed_edges(triangles)
    assert len(set(directed)) == len(directed)  # consistent: no edge runs the same way in two triangles
    assert [len(loop) for loop in boundary_loops(triangles)] == [36, 20, 16, 16]  # oval, mouth, two eyes


def test_filling_the_holes_leaves_only_the_face_oval_open():
    topology = face_mesh_topology()
    assert len(topology.triangles) == 852 + 20 + 16 + 16
    assert topology.triangles.max() == 468 + 2
    assert [len(loop) for loop in boundary_loops(topology.triangles)] == [36]
    directed = directed_edges(topology.triangles)
    assert len(set(directed)) == len(directed)


def test_a_spurious_clique_is_dropped_and_a_non_manifold_mesh_refused():
    # An octahedron's 12 edges: its 8 faces are the only 3-cliques; no clique is spurious.
    octahedron = np.array([(0, 2), (0, 3), (0, 4), (0, 5), (1, 2), (1, 3), (1, 4), (1, 5), (2, 4), (2, 5), (3, 4),
                           (3, 5)])
    assert len(triangles_from_edges(octahedron)) == 8
    # A fan of three triangles around 0 whose rim edges close a fourth 3-cycle (1, 2, 3): that cycle's edges each
    # lie in two cliques only, so it stays; add a fourth fan triangle sharing edge (0, 1) and it becomes non-manifold.
    with pytest.raises(ValueError, match="not a manifold"):
        orient_consistently(np.array([(0, 1, 2), (0, 1, 3), (0, 1, 4)]))


def test_the_z_buffer_keeps_the_nearer_triangle_whatever_the_order():
    vertices = torch.tensor([[4, 4, 1], [28, 4, 1], [4, 28, 1],            # far triangle, attribute 1
                             [8, 8, 5], [30, 8, 5], [8, 30, 5],            # near triangle, attribute 2
                             [2, 2, 9], [20, 20, 9], [38, 38, 9]],         # degenerate (collinear), nearest
                            device="cpu", dtype=torch.float32)
    attributes = torch.tensor([[1.0]] * 3 + [[2.0]] * 3 + [[3.0]] * 3, device="cpu", dtype=torch.float32)
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        triangles = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], device="cpu", dtype=torch.long)[order]
        values, depth, coverage = rasterize(vertices, triangles, attributes, 40, 40)
        assert values[0, 12, 12] == 2 and depth[0, 12, 12] == 5   # both cover it: the near one wins
        assert values[0, 5, 5] == 1 and depth[0, 5, 5] == 1       # only the far one
        assert values[0, 35, 35] == 0 and coverage[0, 35, 35] == 0
        assert not (values == 3).any()                             # the zero-area triangle draws nothing


@pytest.mark.parametrize("name", ["sphere", "ellipsoid", "box"])
def test_rendered_mesh_normals_match_the_analytic_surface(name):
    size = 256
    mesh = analytic_mesh(name, size)
    shape = analytic_shape(name, size)
    normals = vertex_normals(mesh.camera_vertices, mesh.triangles)
    rendered, _, coverage = rasterize(mesh.screen_vertices, mesh.triangles, normals, size, size)
    rendered = rendered / rendered.norm(dim=0, keepdim=True).clamp_min(1e-12)
    inside = (coverage > 0) & (shape.mask[0] > 0)
    error = angular_error_deg(rendered[None], shape.normals)[0][inside]
    assert error.mean().item() <= 2.0
    iou = ((coverage > 0) & (shape.mask[0] > 0)).sum() / ((coverage > 0) | (shape.mask[0] > 0)).sum()
    assert iou.item() >= 0.98


@pytest.fixture(scope="module")
def fixture_faces(face_paths):
    images = [np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS))
              for path in face_paths[:4]]
    return images, [mediapipe.face_meshes(image) for image in images]


def test_a_rendered_fixture_face_is_whole_and_shaped_like_a_face(fixture_faces):
    images, meshes = fixture_faces
    for image, faces in zip(images, meshes, strict=True):
        assert len(faces) == 1
        landmarks = faces[0]
        normals, height, coverage = render_face_geometry(faces, *image.shape[:2], "cpu")
        oval = np.zeros(image.shape[:2], dtype=np.uint8)  # the face oval is close to the landmarks' convex hull
        cv2.fillConvexPoly(oval, cv2.convexHull(landmarks[:, :2].astype(np.float32)).astype(np.int32), 1)
        inner = cv2.erode(oval, np.ones((9, 9), np.uint8)) > 0
        assert coverage[0].numpy()[inner].mean() > 0.99            # no holes at the eyes or the mouth
        # The nose: left of its tip the surface faces left (x < 0), right of it right; the tip is the nearest point.
        tip = landmarks[1]
        eye_distance = np.linalg.norm(landmarks[33, :2] - landmarks[263, :2])
        row, offset = int(tip[1]), int(0.12 * eye_distance)
        assert normals[0, row, int(tip[0]) - offset] < -0.1 < 0.1 < normals[0, row, int(tip[0]) + offset]
        face_height = height[0][coverage[0] > 0]
        assert height[0, row, int(tip[0])] > torch.quantile(face_height, 0.95)
        forehead = landmarks[151]                                  # mid-forehead faces the camera and a bit up
        n = normals[:, int(forehead[1]), int(forehead[0])]
        assert n[2] > 0.8 and n[1] > -0.1


def test_no_face_gives_camera_facing_normals_and_no_coverage():
    normals, height, coverage = render_face_geometry([], 16, 12, "cpu")
    assert torch.equal(normals[2], torch.ones(16, 12, device="cpu", dtype=torch.float32))
    assert coverage.sum() == 0 and height.abs().sum() == 0


def test_smoothing_and_blending_keep_unit_normals_and_no_seam(fixture_faces):
    images, meshes = fixture_faces
    face, coverage = render_face_normals(meshes[0], 256, 256, "cpu", torch.float32, max_side=128)
    assert face.shape == (3, 256, 256) and 0 <= coverage.min() and coverage.max() <= 1
    base = torch.zeros(1, 3, 256, 256, device="cpu", dtype=torch.float32)
    base[:, 2] = 1
    blended = blend_face_normals(base, face[None], coverage[None], feather_px=8.0)
    assert torch.allclose(blended.norm(dim=1), torch.ones(1, 256, 256, device="cpu", dtype=torch.float32), atol=1e-5)
    edge = (coverage[0] > 0.05) & (coverage[0] < 0.95)  # on the outline the base normals all but keep their place
    change, contrast = (blended[0] - base[0]).norm(dim=0), (face - base[0]).norm(dim=0)
    assert change[edge].mean() < 0.1 * contrast[edge].mean()
    assert not torch.allclose(blended, base)


def test_the_normals_stage_records_face_mesh_rows_and_falls_back_without_a_face(fixture_faces, caplog):
    images, _ = fixture_faces
    mask = Image.fromarray(np.full((256, 256), 255, dtype=np.uint8))
    blank = Image.fromarray(np.full((256, 256, 3), 128, dtype=np.uint8))
    stage = NormalsStage(load_config("mvp", overrides=NO_DEPTH), "cpu")
    rows = stage({"image_id": ["face", "blank"], "input": [Image.fromarray(images[0]), blank], "mask": [mask, mask]})
    assert rows["normals_method"] == ["face_mesh", "mask_inflation"]
    assert stage.describe()["faces"]["method"] == "face_mesh"
    classical = NormalsStage(load_config("mvp", overrides=["normals.method=classical"]), "cpu")
    plain = classical({"image_id": ["face"], "input": [Image.fromarray(images[0])], "mask": [mask]})
    assert plain["normals_method"] == ["mask_inflation"]
    no_face = classical({"image_id": ["blank"], "input": [blank], "mask": [mask]})
    assert np.array_equal(np.asarray(rows["normals"][1]), np.asarray(no_face["normals"][0]))
    assert not np.array_equal(np.asarray(rows["normals"][0]), np.asarray(plain["normals"][0]))


def test_a_forced_face_mesh_whose_model_is_altered_fails_in_one_line(monkeypatch):
    file_name, _ = mediapipe.MODEL_FILES["face_landmark"]
    monkeypatch.setitem(mediapipe.MODEL_FILES, "face_landmark", (file_name, "0" * 64))
    mediapipe.model_bytes.cache_clear()
    monkeypatch.setattr(mediapipe, "_thread_state", type(mediapipe._thread_state)())
    try:
        forced = NormalsStage(load_config("mvp", overrides=["normals.method=face_mesh"]), "cpu")
        with pytest.raises(ModelUnavailable, match="face_landmark.tflite.*sha256"):
            forced.prepare()
        auto = NormalsStage(load_config("mvp", overrides=NO_DEPTH), "cpu")
        auto.prepare()
        assert [fallback["method"] for fallback in auto.describe()["fallbacks"]] == ["face_mesh", "depth"]
    finally:
        mediapipe.model_bytes.cache_clear()

"""Face geometry from MediaPipe's 468-point face mesh: triangles derived from the mesh's edge list, per-pixel normals
and relative height rendered with a z-buffer.

Topology (numpy, once per process): MediaPipe publishes the mesh as 1322 undirected edges
(``models/assets/face_mesh_edges.txt``, see its NOTICE). Its triangles are the edge graph's 3-cliques, less the
cliques that are not faces: a face's edges are each shared by at most two faces, so a clique whose three edges all
lie in three cliques is spurious (two such cliques, leaving 852 triangles: a disc with three holes, Euler
characteristic -2). The triangles are oriented consistently by a walk across shared edges. The outer boundary (the
face oval) stays open; the three inner boundaries (the eyes and the mouth) are filled by a fan around one new vertex
per hole at the loop's centroid, so eyes and mouth get geometry too.

Rendering (torch, on the device of the vertices): :func:`rasterize` interpolates per-vertex attributes at pixel
centres with barycentric weights, keeping the nearest surface per pixel (a z-buffer, fully vectorised: every
triangle's covered pixels are enumerated as runs along rows, all triangles at once, in chunks).
:func:`render_face_geometry` turns the landmarks of each face into camera-frame normals (x right, y up, z towards the
camera, as in :mod:`relight_datasets.ops.lighting`) and relative height.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from .filters import gaussian_blur

__all__ = [
    "FaceMeshTopology",
    "blend_face_normals",
    "boundary_loops",
    "face_mesh_edges",
    "face_mesh_topology",
    "fill_holes",
    "orient_consistently",
    "rasterize",
    "render_face_geometry",
    "render_face_normals",
    "triangles_from_edges",
    "vertex_normals",
    "with_hole_centres",
]

EDGES_FILE = "face_mesh_edges.txt"
EDGES_SHA256 = "0f3a360687f4ecc65c77d856025020b7a373b125f2a07a7c70f21fad8853fc6f"
"""sha256 of :data:`EDGES_FILE`, as recorded in ``models/assets/NOTICE``."""
NUM_LANDMARKS = 468
MAX_CANDIDATES = 1 << 22
"""Covered pixels :func:`rasterize` evaluates at once, counted per triangle (bounds its memory: about 80 bytes
each)."""
COVER_TOLERANCE = 1e-9
"""How far below 0 a barycentric weight may be at a pixel centre that still counts as covered (so that a centre on
an edge shared by two triangles is drawn by one of them whatever the rounding)."""


@dataclass(frozen=True)
class FaceMeshTopology:
    """The face mesh's triangles, including the fans that fill the eyes and the mouth."""

    triangles: np.ndarray
    """``T x 3`` int64 vertex indices, consistently oriented. Indices ``>= 468`` are the holes' centre vertices,
    in the order of :attr:`holes` (see :func:`with_hole_centres`)."""
    holes: tuple[np.ndarray, ...]
    """The landmark indices around each filled hole (one loop per hole)."""


def face_mesh_edges() -> np.ndarray:
    """The face mesh's ``E x 2`` int64 undirected edges from package data, hash-checked (a one-line
    ``RuntimeError`` when the file is missing or altered)."""
    asset = resources.files("relight_datasets.models").joinpath("assets", EDGES_FILE)
    if not asset.is_file():
        raise RuntimeError(f"{EDGES_FILE}: missing from the package data (reinstall relight-datasets)")
    data = asset.read_bytes()
    if hashlib.sha256(data).hexdigest() != EDGES_SHA256:
        raise RuntimeError(f"{EDGES_FILE}: sha256 differs from the recorded one (reinstall relight-datasets)")
    rows = [line.split() for line in data.decode().splitlines() if line and not line.startswith("#")]
    return np.asarray(rows, dtype=np.int64)


def triangles_from_edges(edges: np.ndarray) -> np.ndarray:
    """The faces of a triangulated surface given only its ``E x 2`` edges: the 3-cliques of the edge graph, less
    every clique whose three edges each lie in more than two cliques (no face of a surface has that). ``T x 3``
    int64, each row sorted, rows sorted; orientation is not yet consistent."""
    neighbours: dict[int, set[int]] = {}
    for a, b in edges.tolist():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in edges.tolist() for c in neighbours[a] & neighbours[b]})
    uses: dict[tuple[int, int], int] = {}
    for a, b, c in cliques:
        for edge in ((a, b), (a, c), (b, c)):
            uses[edge] = uses.get(edge, 0) + 1
    faces = [(a, b, c) for a, b, c in cliques if min(uses[(a, b)], uses[(a, c)], uses[(b, c)]) <= 2]
    return np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def orient_consistently(triangles: np.ndarray) -> np.ndarray:
    """``T x 3`` triangles reordered so that every edge shared by two triangles runs in opposite directions in them
    (a walk across shared edges from the first triangle of each connected piece). Raises ``ValueError`` for a
    non-orientable or non-manifold mesh."""
    by_edge: dict[tuple[int, int], list[int]] = {}
    for index, (a, b, c) in enumerate(triangles.tolist()):
        for u, v in ((a, b), (b, c), (c, a)):
            by_edge.setdefault((min(u, v), max(u, v)), []).append(index)
    if any(len(owners) > 2 for owners in by_edge.values()):
        raise ValueError("the mesh is not a manifold: an edge belongs to more than two triangles")
    oriented = triangles.copy()
    done = np.zeros(len(triangles), dtype=bool)
    for start in range(len(triangles)):
        if done[start]:
            continue
        done[start], stack = True, [start]
        while stack:
            current = stack.pop()
            a, b, c = oriented[current].tolist()
            for u, v in ((a, b), (b, c), (c, a)):
                for other in by_edge[(min(u, v), max(u, v))]:
                    if other == current:
                        continue
                    x, y, z = oriented[other].tolist()
                    runs_same_way = (u, v) in ((x, y), (y, z), (z, x))
                    if done[other]:
                        if runs_same_way:
                            raise ValueError("the mesh is not orientable")
                        continue
                    if runs_same_way:
                        oriented[other] = oriented[other][::-1]
                    done[other] = True
                    stack.append(other)
    return oriented


def boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """The closed loops of edges that belong to one triangle only, each an int64 array of vertex indices in the
    direction the (consistently oriented) triangles give them, longest first."""
    directed = {}
    counts: dict[tuple[int, int], int] = {}
    for a, b, c in triangles.tolist():
        for u, v in ((a, b), (b, c), (c, a)):
            counts[(min(u, v), max(u, v))] = counts.get((min(u, v), max(u, v)), 0) + 1
            directed[(u, v)] = True
    following = {u: v for (u, v) in directed if counts[(min(u, v), max(u, v))] == 1}
    loops = []
    while following:
        start = next(iter(following))
        loop, vertex = [start], following.pop(start)
        while vertex != start:
            loop.append(vertex)
            vertex = following.pop(vertex)
        loops.append(np.asarray(loop, dtype=np.int64))
    return sorted(loops, key=len, reverse=True)


def fill_holes(triangles: np.ndarray, holes: list[np.ndarray], vertex_count: int) -> np.ndarray:
    """``triangles`` plus a fan over each loop in ``holes``, around a new vertex ``vertex_count + k`` for the k-th
    hole, oriented like the triangles beside it (each boundary edge ``u -> v`` of a loop, as
    :func:`boundary_loops` gives it, is closed by the fan triangle ``v, u, centre``)."""
    fans = [np.stack([np.roll(loop, -1), loop, np.full_like(loop, vertex_count + k)], axis=1)
            for k, loop in enumerate(holes)]
    return np.concatenate([triangles, *fans]).astype(np.int64)


@cache
def face_mesh_topology() -> FaceMeshTopology:
    """The MediaPipe face mesh's consistently oriented triangles with the eyes and the mouth filled; derived once per
    process from :func:`face_mesh_edges`."""
    triangles = orient_consistently(triangles_from_edges(face_mesh_edges()))
    loops = boundary_loops(triangles)
    holes = tuple(loops[1:])  # the longest loop is the face oval, which stays open
    return FaceMeshTopology(fill_holes(triangles, list(holes), NUM_LANDMARKS), holes)


def with_hole_centres(vertices: torch.Tensor, holes: tuple[np.ndarray, ...]) -> torch.Tensor:
    """``V x 3`` vertices followed by the centroid of each hole loop: ``(V + len(holes)) x 3``, same device/dtype."""
    centres = [vertices[torch.as_tensor(loop, device=vertices.device, dtype=torch.long)].mean(dim=0)
               for loop in holes]
    return torch.cat([vertices, torch.stack(centres)]) if centres else vertices


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unit normals ``V x 3`` of a mesh: at each vertex, the sum of its triangles' cross products ``(b - a) x (c - a)``
    (area-weighted, oriented by the winding), normalised. ``vertices``: ``V x 3``; ``triangles``: ``T x 3`` long, on
    the same device. A vertex in no triangle gets a zero vector."""
    corners = vertices[triangles]
    face = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)
    summed = torch.zeros_like(vertices).index_add_(0, triangles.reshape(-1), face.repeat_interleave(3, dim=0))
    return summed * torch.rsqrt((summed * summed).sum(dim=1, keepdim=True).clamp_min(1e-30))


def _ranks(counts: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """For ``group``, the non-decreasing group index of each element of ``repeat_interleave(..., counts)``: the
    element's position within its group (0, 1, ...), long."""
    starts = torch.cumsum(counts, dim=0) - counts
    return torch.arange(len(group), device=group.device, dtype=torch.long) - starts[group]


def _plane_coefficients(corners: torch.Tensor) -> torch.Tensor:
    """``T x 3 x 3`` corners (x, y, depth) of triangles with non-zero area -> ``T x 3 x 3`` coefficients ``(p, q, r)``
    of the affine functions ``p x + q y + r`` giving, at an image point, the barycentric weights of corners a and b
    and the depth of the triangle's plane."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    def weight(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # Twice the signed area of (point, u, v) over twice the triangle's: the weight of the third corner.
        return torch.stack([(u[:, 1] - v[:, 1]) / area, (v[:, 0] - u[:, 0]) / area,
                            (u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]) / area], dim=1)

    weight_a, weight_b = weight(b, c), weight(c, a)
    weight_c = -weight_a - weight_b
    weight_c[:, 2] += 1
    depth = (weight_a * a[:, 2:3] + weight_b * b[:, 2:3] + weight_c * c[:, 2:3])
    return torch.stack([weight_a, weight_b, depth], dim=1)


def _row_runs(corners: torch.Tensor, planes: torch.Tensor, height: int,
              width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixels of a ``height x width`` window that triangles cover, as runs along rows.

    ``corners``: ``T x 3 x 3`` (x, y, depth; window pixels, float64); ``planes``: their :func:`_plane_coefficients`.
    A pixel is covered when all three barycentric weights at its centre ``(col + 0.5, row + 0.5)`` are at least
    ``-COVER_TOLERANCE``; along a row each weight is affine in x, so the covered columns are one interval. Returns,
    per run (long): the triangle, the row, the first column and the number of columns (0 for an empty run)."""
    device = corners.device
    top = torch.ceil(corners[:, :, 1].amin(dim=1) - 0.5).long().clamp(0, height)
    bottom = torch.floor(corners[:, :, 1].amax(dim=1) - 0.5).long().clamp(-1, height - 1)
    rows = (bottom - top + 1).clamp_min(0)
    triangle = torch.repeat_interleave(torch.arange(len(corners), device=device, dtype=torch.long), rows)
    row = top[triangle] + _ranks(rows, triangle)
    weights = planes[triangle, :2]
    slope = weights[:, :, 0]
    offset = weights[:, :, 1] * (row.double() + 0.5)[:, None] + weights[:, :, 2]
    slope = torch.cat([slope, -slope.sum(dim=1, keepdim=True)], dim=1)  # with the third weight, 1 - the others
    offset = torch.cat([offset, 1 - offset.sum(dim=1, keepdim=True)], dim=1)
    crossing = -(offset + COVER_TOLERANCE) / slope  # x where each weight reaches -COVER_TOLERANCE
    infinity = torch.tensor(math.inf, device=device, dtype=torch.float64)
    left = torch.where(slope > 0, crossing, -infinity).amax(dim=1)
    right = torch.where(slope < 0, crossing, infinity).amin(dim=1)
    nowhere = ((slope == 0) & (offset < -COVER_TOLERANCE)).any(dim=1)
    first = torch.ceil(left - 0.5).clamp(0, width).long()
    last = torch.floor(right - 0.5).clamp(-1, width - 1).long()
    return triangle, row, first, torch.where(nowhere, 0, (last - first + 1).clamp_min(0))


def rasterize(vertices: torch.Tensor, triangles: torch.Tensor, attributes: torch.Tensor, height: int,
              width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render a triangle mesh with a z-buffer, sampling at pixel centres ``(col + 0.5, row + 0.5)``.

    ``vertices``: ``V x 3``: x (pixels, right), y (pixels, down) and depth (towards the camera: larger is nearer);
    ``triangles``: ``T x 3`` long; ``attributes``: ``V x C`` interpolated barycentrically (linearly in the image
    plane: an orthographic camera). Per pixel the nearest covering triangle wins (ties, e.g. on a shared edge, go to
    the first candidate, so the result is the same on every device); zero-area triangles draw nothing. Each triangle
    visits only the pixels it covers (runs along rows, :func:`_row_runs`), at most ``MAX_CANDIDATES`` at a time, and
    work is confined to the mesh's bounding box. Returns the attributes ``C x H x W`` (0 where nothing is drawn), the
    depth ``1 x H x W`` (0 there) and the coverage ``1 x H x W`` (1 where drawn), on the vertices' device in their
    dtype.
    """
    device, dtype = vertices.device, vertices.dtype
    values = torch.zeros(attributes.shape[1], height, width, device=device, dtype=dtype)
    depth_map = torch.zeros(1, height, width, device=device, dtype=dtype)
    coverage = torch.zeros(1, height, width, device=device, dtype=dtype)
    corners = vertices.double()[triangles]
    twice_area = ((corners[:, 1, 0] - corners[:, 0, 0]) * (corners[:, 2, 1] - corners[:, 0, 1])
                  - (corners[:, 1, 1] - corners[:, 0, 1]) * (corners[:, 2, 0] - corners[:, 0, 0]))
    kept = torch.nonzero(twice_area.abs() > 1e-9).squeeze(1)
    if len(kept) == 0:
        return values, depth_map, coverage
    # The window holding every triangle (clipped to the image); the buffers cover only it.
    left = int(torch.floor(corners[kept, :, 0].amin()).clamp(0, width).item())
    top = int(torch.floor(corners[kept, :, 1].amin()).clamp(0, height).item())
    right = int(torch.ceil(corners[kept, :, 0].amax()).clamp(0, width).item())
    bottom = int(torch.ceil(corners[kept, :, 1].amax()).clamp(0, height).item())
    window_height, window_width = bottom - top, right - left
    if window_height <= 0 or window_width <= 0:
        return values, depth_map, coverage
    shift = torch.tensor([left, top, 0.0], device=device, dtype=torch.float64)
    local = corners[kept] - shift
    planes = _plane_coefficients(local)
    run_triangle, run_row, run_first, run_count = _row_runs(local, planes, window_height, window_width)
    run_y = run_row.double() + 0.5
    run_depth_slope = planes[run_triangle, 2, 0]
    run_depth_offset = planes[run_triangle, 2, 1] * run_y + planes[run_triangle, 2, 2]
    pixels = window_height * window_width
    best_depth = torch.full((pixels,), float("-inf"), device=device, dtype=torch.float64)
    best_run = torch.full((pixels,), -1, device=device, dtype=torch.long)
    run_end = torch.cumsum(run_count, dim=0)
    total = int(run_end[-1]) if len(run_end) else 0
    limits = torch.tensor(range(MAX_CANDIDATES, total, MAX_CANDIDATES), device=device, dtype=torch.long)
    boundaries = torch.searchsorted(run_end, limits).tolist()  # chunks of about MAX_CANDIDATES pixels
    for start, stop in itertools.pairwise([0, *boundaries, len(run_count)]):
        counts = run_count[start:stop]
        run = torch.repeat_interleave(torch.arange(start, stop, device=device, dtype=torch.long), counts)
        col = run_first[run] + _ranks(counts, run - start)
        depth = run_depth_slope[run] * (col.double() + 0.5) + run_depth_offset[run]
        pixel = run_row[run] * window_width + col
        nearest = best_depth.clone().scatter_reduce_(0, pixel, depth, reduce="amax")
        wins = depth == nearest[pixel]
        first = torch.full((pixels,), len(run), device=device, dtype=torch.long)
        order = torch.arange(len(run), device=device, dtype=torch.long)
        first.scatter_reduce_(0, pixel[wins], order[wins], reduce="amin")
        chosen = torch.nonzero(wins & (first[pixel] == order) & (depth > best_depth[pixel])).squeeze(1)
        best_depth[pixel[chosen]] = depth[chosen]
        best_run[pixel[chosen]] = run[chosen]
    covered = torch.nonzero(best_run >= 0).squeeze(1)
    run = best_run[covered]
    plane = planes[run_triangle[run], :2]
    centre = torch.stack([(covered % window_width).double() + 0.5, run_y[run], torch.ones_like(run_y[run])], dim=1)
    weights = (plane * centre[:, None, :]).sum(dim=2)
    weights = torch.cat([weights, 1 - weights.sum(dim=1, keepdim=True)], dim=1)
    corner_values = attributes.double()[triangles[kept[run_triangle[run]]]]
    interpolated = torch.bmm(weights[:, None, :], corner_values)[:, 0]
    flat = torch.zeros(attributes.shape[1] + 2, pixels, device=device, dtype=dtype)  # attributes, depth, coverage
    flat[:-2, covered] = interpolated.T.to(dtype)
    flat[-2, covered] = best_depth[covered].to(dtype)
    flat[-1, covered] = 1
    flat = flat.view(-1, window_height, window_width)
    values[:, top:bottom, left:right] = flat[:-2]
    depth_map[:, top:bottom, left:right] = flat[-2:-1]
    coverage[:, top:bottom, left:right] = flat[-1:]
    return values, depth_map, coverage


def render_face_geometry(meshes: list, height: int, width: int, device: torch.device | str,
                         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normals, relative height and coverage of the faces in one ``height x width`` image.

    ``meshes``: per face, MediaPipe landmarks ``468 x 3`` (x, y in pixels with y down; z relative depth in pixels,
    smaller is nearer; :func:`relight_datasets.models.mediapipe.face_meshes`), as arrays or tensors. Each face's
    vertex normals come from the filled mesh (:func:`face_mesh_topology`), in the camera frame (x right, y up, z
    towards the camera), its winding flipped if needed so that its area-weighted mean normal faces the camera; all
    faces are rasterised together (the nearest surface wins). Returns normals ``3 x H x W`` (unit; ``(0, 0, 1)``
    outside the faces), height ``1 x H x W`` (towards the camera, pixels, 0 outside) and coverage ``1 x H x W``.
    """
    device = torch.device(device)
    topology = face_mesh_topology()
    triangles = torch.as_tensor(topology.triangles, device=device, dtype=torch.long)
    screens, normals, faces = [], [], []
    for offset, landmarks in enumerate(meshes):
        points = torch.as_tensor(np.asarray(landmarks, dtype=np.float64), device=device, dtype=torch.float64)
        screen = with_hole_centres(points * torch.tensor([1.0, 1.0, -1.0], device=device, dtype=torch.float64),
                                   topology.holes)  # depth towards the camera
        camera = screen * torch.tensor([1.0, -1.0, 1.0], device=device, dtype=torch.float64)  # y up
        corners = camera[triangles]
        facing = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)[:, 2].sum()
        face_triangles = triangles if facing >= 0 else triangles.flip(1)
        screens.append(screen)
        normals.append(vertex_normals(camera, face_triangles))
        faces.append(face_triangles + offset * len(screen))
    if not screens:
        facing_camera = torch.tensor([0.0, 0.0, 1.0], device=device, dtype=dtype).view(3, 1, 1)
        zeros = torch.zeros(1, height, width, device=device, dtype=dtype)
        return facing_camera.expand(3, height, width).clone(), zeros, zeros.clone()
    rendered, depth, coverage = rasterize(torch.cat(screens), torch.cat(faces), torch.cat(normals), height, width)
    unit = rendered * torch.rsqrt((rendered * rendered).sum(dim=0, keepdim=True).clamp_min(1e-30))
    outside = torch.tensor([0.0, 0.0, 1.0], device=device, dtype=torch.float64).view(3, 1, 1)
    unit = torch.where(coverage > 0, unit.double(), outside)
    return unit.to(dtype), depth.to(dtype), coverage.to(dtype)


def _window(coverage: torch.Tensor, margin: int) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of ``coverage > 0`` (``... x H x W``) grown by ``margin`` pixels, clipped
    to the image; the whole image when nothing is covered."""
    covered = coverage.reshape(-1, *coverage.shape[-2:]).amax(dim=0) > 0
    rows, cols = torch.nonzero(covered.any(dim=1)).squeeze(1), torch.nonzero(covered.any(dim=0)).squeeze(1)
    if len(rows) == 0:
        return slice(None), slice(None)
    height, width = covered.shape
    return (slice(max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + 1 + margin)),
            slice(max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + 1 + margin)))


def render_face_normals(meshes: list, height: int, width: int, device: torch.device | str, dtype: torch.dtype,
                        max_side: int = 256, smoothing: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth face normals and soft coverage for one ``height x width`` image, from MediaPipe landmarks (see
    :func:`render_face_geometry`).

    The mesh is rendered at most ``max_side`` pixels on the long side (a 468-point mesh has no detail beyond that;
    the cost stays bounded at any resolution), the normals are smoothed inside the coverage by a normalised Gaussian
    of ``smoothing`` times the face size (the square root of its area), which rounds off the creases that linear
    interpolation leaves between triangles, and both are resized bilinearly to the image. Only the faces' bounding
    box is filtered. Returns unit normals ``3 x H x W`` (``(0, 0, 1)`` outside the faces) and coverage ``1 x H x W``
    in [0, 1]."""
    scale = min(1.0, max_side / max(height, width))
    render_height, render_width = max(1, round(height * scale)), max(1, round(width * scale))
    scaled = [np.asarray(mesh, dtype=np.float64) * np.array([render_width / width, render_height / height, scale])
              for mesh in meshes]
    normals, _, coverage = render_face_geometry(scaled, render_height, render_width, device, dtype)
    sigma = smoothing * float(coverage.sum().sqrt().item())
    if sigma > 0:
        rows, cols = _window(coverage, math.ceil(3 * sigma) + 1)
        face, inside = normals[:, rows, cols], coverage[:, rows, cols]
        smoothed = gaussian_blur(face[None], sigma, inside[None])[0]
        normals[:, rows, cols] = torch.where(inside > 0, smoothed, face)
    if (render_height, render_width) != (height, width):
        resized = F.interpolate(torch.cat([normals, coverage])[None], size=(height, width), mode="bilinear",
                                align_corners=False)[0]
        normals, coverage = resized[:3], resized[3:]
    return normals * torch.rsqrt((normals * normals).sum(dim=0, keepdim=True).clamp_min(1e-30)), coverage


def blend_face_normals(base: torch.Tensor, face: torch.Tensor, coverage: torch.Tensor,
                       feather_px: float) -> torch.Tensor:
    """Face normals eased into base normals (e.g. an inflated silhouette's, for hair, neck and body).

    ``base``, ``face``: unit normals ``B x 3 x H x W``; ``coverage``: ``B x 1 x H x W`` in [0, 1] (where the face was
    rendered). The face's weight is ``clamp(2 g - 1, 0, 1)`` of the coverage blurred by ``g``, a Gaussian of
    ``feather_px`` pixels: 0 on and outside the face's outline, rising to 1 about two ``feather_px`` inside it, so
    the outline leaves no seam. Only the faces' bounding box is computed (the weight is 0 outside it). Returns unit
    normals ``B x 3 x H x W``."""
    rows, cols = _window(coverage, math.ceil(3 * feather_px) + 1)
    window = (slice(None), slice(None), rows, cols)
    inside = coverage[window]
    weight = (2 * gaussian_blur(inside, feather_px) - 1).clamp(0, 1) if feather_px > 0 else inside
    mixed = torch.lerp(base[window], face[window], weight)
    blended = base.clone()
    blended[window] = mixed * torch.rsqrt((mixed * mixed).sum(dim=1, keepdim=True).clamp_min(1e-30))
    return blended

"""Surface normals for shading: faces from MediaPipe's face mesh (shipped), the rest from a monocular depth network,
a surface-normals network (Marigold) or the person mask."""

from __future__ import annotations

import torch

from ..models.loading import ModelUnavailable, load_or_fall_back, resolve_dtype
from ..ops.face_mesh import blend_face_normals, render_face_normals
from ..ops.normals import encode_normals, normals_from_depth, normals_from_mask
from ..relighting import quantize_to_8bit
from ..rng import noise_generators
from .base import DeviceBatch, Stage, ThreadPool

NORMAL_ESTIMATORS = ("auto", "face_mesh", "depth", "classical", "marigold")
MARIGOLD_STREAM = "marigold_normals"
"""Per-row random streams of the normals model's starting noise, one per ensemble member."""
FACE_MESH_MODEL_FILES = ("face_detection_short_range.tflite", "face_landmark.tflite")


class FaceMeshes:
    """The shipped face detector and 468-point face mesh (:mod:`relight_datasets.models.mediapipe`), one image per
    thread on the host. Raises :class:`~relight_datasets.models.ModelUnavailable` when the runtime or a model file
    is missing or altered."""

    def __init__(self):
        from ..models import mediapipe

        try:
            for name in ("face_detection", "face_landmark"):
                mediapipe.interpreter(name)
        except (ImportError, mediapipe.ModelIntegrityError) as error:
            raise ModelUnavailable("face mesh", " + ".join(FACE_MESH_MODEL_FILES),
                                   str(error).splitlines()[0]) from error
        self._face_meshes = mediapipe.face_meshes
        self.pool = ThreadPool()

    def __call__(self, images: list) -> list[list]:
        """Host ``H x W x 3`` uint8 images -> per image, the ``468 x 3`` landmarks of each face found (maybe none)."""
        return self.pool.map(self._face_meshes, images)


class NormalsStage(Stage):
    """RGB-encoded normals (``3 x H x W`` on the 8-bit grid, see :func:`relight_datasets.ops.normals.encode_normals`).

    Two sources are combined: the **body** (hair, neck, clothes, and everything when no face is found) from
    ``normals.depth_model`` run on the input image (its relative depth differentiated and normalised so the result
    depends on neither the model's units nor the image size), from ``normals.normals_model`` (a Marigold
    surface-normals pipeline, whose normals are used as predicted), or from the silhouette inflated into a smooth
    bulge; and the **faces** from MediaPipe's face mesh, rendered with a z-buffer and eased into the body normals
    (:func:`~relight_datasets.ops.face_mesh.blend_face_normals`). ``normals.method``:

    - ``auto``: face mesh over depth when the depth model loads, else over the inflated silhouette;
    - ``face_mesh``: face mesh over the inflated silhouette; ``depth``: depth only; ``classical``: silhouette only;
    - ``marigold``: face mesh (when it loads) over the Marigold normals.

    A method whose model cannot load raises :class:`~relight_datasets.models.ModelUnavailable` when forced; ``auto``
    logs why once and goes on without it. ``normals_method`` records what made each row's normals: ``face_mesh`` /
    ``face_mesh+depth`` / ``face_mesh+marigold`` (a face was found), ``mask_inflation`` / ``depth`` / ``marigold``
    (none was, or the face mesh is off).
    """

    name = "normals"
    inputs = ("input", "mask")
    outputs = ("normals", "normals_method")

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self._estimators: dict[torch.device, object] = {}
        self._face_meshes: FaceMeshes | None | bool = False  # False: not loaded yet; None: off or unavailable
        self.fallbacks: list[dict] = []

    def _load_face_meshes(self) -> FaceMeshes | None:
        if self._face_meshes is False:
            method = self.config.normals.method
            self._face_meshes = None
            if method in ("auto", "face_mesh", "marigold"):
                self._face_meshes = load_or_fall_back(FaceMeshes, method == "face_mesh", "face_mesh",
                                                      "normals: face mesh unavailable, faces get body normals",
                                                      self.fallbacks)
        return self._face_meshes

    def _load_estimator(self, device: torch.device):
        from ..models.depth import DepthEstimator
        from ..models.marigold import MarigoldNormals

        cfg = self.config.normals
        dtype = resolve_dtype(self.config.dtype, device)
        if cfg.method == "marigold":
            return MarigoldNormals(cfg.normals_model, device, dtype, cfg.normals_steps, cfg.normals_ensemble)
        if cfg.method not in ("auto", "depth"):
            return None
        return load_or_fall_back(lambda: DepthEstimator(cfg.depth_model, device, dtype), cfg.method == "depth",
                                 "depth", "normals: depth unavailable, falling back to mask normals", self.fallbacks)

    def prepare(self, rank: int | None = None):
        """The body normals' model for this process's device (depth or Marigold; None: silhouette normals), loaded
        on first call, and the face mesh models (once per process)."""
        self._load_face_meshes()
        device = self.device(rank)
        if device not in self._estimators:
            self._estimators[device] = self._load_estimator(device)
        return self._estimators[device]

    def describe(self) -> dict:
        if not self._estimators:
            return {}
        estimator = next(iter(self._estimators.values()))
        info = ({"method": "mask_inflation"} if estimator is None
                else {"method": estimator.method, **estimator.loaded.describe()})
        if self._face_meshes:
            info["faces"] = {"method": "face_mesh", "models": list(FACE_MESH_MODEL_FILES)}
        if self.fallbacks:
            info["fallbacks"] = self.fallbacks
        return info

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        estimator = self.prepare(rank)
        cfg = self.config.normals
        if estimator is None:
            normals = normals_from_mask(batch.images["mask"], cfg.inflation_sigma, cfg.edge_tilt_deg)
            body = "mask_inflation"
        elif estimator.method == "marigold":
            generators = noise_generators(self.config.seed, batch.image_ids, MARIGOLD_STREAM, cfg.normals_ensemble)
            normals, body = estimator(batch.input_uint8, generators), "marigold"
        else:
            depth = estimator(batch.input_uint8)
            normals = normals_from_depth(depth, estimator.larger_is_closer, cfg.depth_relief)
            body = "depth"
        methods = [body] * len(batch)
        face_meshes = self._load_face_meshes()
        if face_meshes is not None:
            height, width = normals.shape[-2:]
            for index, meshes in enumerate(face_meshes(batch.host_input)):
                if not meshes:
                    continue
                face, coverage = render_face_normals(meshes, height, width, normals.device, normals.dtype,
                                                     cfg.face_render_side, cfg.face_smoothing)
                feather = cfg.face_feather * float(coverage.sum().sqrt().item())
                normals[index:index + 1] = blend_face_normals(normals[index:index + 1], face[None], coverage[None],
                                                              feather)
                methods[index] = "face_mesh" if body == "mask_inflation" else f"face_mesh+{body}"
        return {"normals": quantize_to_8bit(encode_normals(normals)), "normals_method": methods}

#!/usr/bin/env python
"""GPU figures on paper: what one H100 should do with ``--segmenter sam3 --normals depth --dtype bfloat16``.

Everything here runs on a CPU, without network and in well under a minute:

- model FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the full-size architectures of
  :mod:`relight_datasets.testing` at their processors' input sizes (on the ``meta`` device: no weights, no compute;
  SAM3's detection/mask heads, whose decoder reads its feature-map size as numbers, run for real on the CPU);
- HBM traffic of the weight-free GPU work (everything outside the models' forwards): every torch op's bytes read
  and written, counted while the real pipeline runs at 1024 px with tiny SAM3 / depth checkpoints, plus the parts
  whose size depends on the real models (their processors' resizing, SAM3's instance union) measured at real size;
- bytes over PCIe per row, and the CPU time of decoding and encoding a row, measured here on one core.

The figures it prints are inputs to estimates, not GPU measurements (see docs/performance.md):

    python scripts/gpu_estimate.py
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local; never wait for the Hub

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from relight_datasets import testing
from relight_datasets.builder.features import IMAGE_COLUMNS
from relight_datasets.builder.pipeline import RelightPipeline, encode_image
from relight_datasets.config import load_config
from relight_datasets.models.segmenters import unite_instances
from relight_datasets.transforms.load import decode_image

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"
RESOLUTION = 1024
SAM3_INPUT = 1008  # Sam3ImageProcessor's default size (facebook/sam3)
SAM3_MASK = 288  # Sam3ImageProcessor's mask_size: the size of SAM3's mask logits
SAM3_QUERIES = 200  # Sam3Config's DETR decoder queries: one mask per query
DEPTH_INPUT = 518  # Depth-Anything-V2-Small-hf's processor: 518 px, a multiple of 14
SAM2_INPUT = 1024  # Sam2ImageProcessor's default size


@dataclass(frozen=True)
class Gpu:
    """Datasheet figures (see docs/performance.md for the sources)."""

    name: str
    bf16_dense_tflops: float
    hbm_tb_per_s: float
    pcie_gb_per_s_each_way: float


H100_SXM = Gpu("H100 SXM5 80 GB", 989.0, 3.35, 64.0)
H100_PCIE = Gpu("H100 PCIe 80 GB", 756.0, 2.0, 64.0)


# ---------------------------------------------------------------------------------------------------------------------
# Model FLOPs


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs (multiply-adds count as 2) of the matmuls, convolutions and attention that ``run()`` dispatches."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        run()
    return counter.get_total_flops()


def random_like(value, generator: torch.Generator):
    """``value`` (a tensor, a model output, or a tuple of them) with every ``meta`` tensor replaced by a CPU tensor of
    the same shape and dtype holding standard-normal numbers."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            return value
        return torch.randn(value.shape, generator=generator, device="cpu", dtype=torch.float32).to(value.dtype)
    if isinstance(value, tuple):
        return tuple(random_like(item, generator) for item in value)
    if isinstance(value, dict):  # transformers' ModelOutput is a dict whose fields are its keys
        return type(value)(**{key: random_like(item, generator) for key, item in value.items()})
    return value


def sam3_flops() -> dict[str, int]:
    """FLOPs of one SAM3 forward at batch 1: ``vision`` (the ViT and its FPN at 1008 px), ``text`` (the CLIP text
    encoder on the 32-token prompt) and ``heads`` (DETR encoder and decoder, scoring, mask decoder).

    The vision and text encoders run on the ``meta`` device. The text encoder gets no attention mask there (the
    causal-mask helper reads the mask's values); attention FLOPs depend on shapes only, so the count is the same.
    The heads are materialised on the CPU with random weights and run for real on random features of the encoders'
    output shapes: the DETR decoder builds its box position bias from the feature map's size held in a tensor."""
    from transformers import Sam3Model
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    config, tokenizer = testing.full_size_sam3_config()
    with torch.device("meta"):
        model = Sam3Model(config).eval()
    prompt = tokenizer(["person"], padding="max_length", max_length=32, return_tensors="pt")
    pixels = torch.empty(1, 3, SAM3_INPUT, SAM3_INPUT, device="meta", dtype=torch.float32)
    flops = {"vision": count_flops(lambda: model.get_vision_features(pixels)),
             "text": count_flops(lambda: model.get_text_features(input_ids=prompt["input_ids"].to("meta")))}
    with torch.inference_mode():
        vision = model.get_vision_features(pixels)
        text = model.get_text_features(input_ids=prompt["input_ids"].to("meta"))
    generator = torch.Generator(device="cpu").manual_seed(0)
    for head in (model.geometry_encoder, model.detr_encoder, model.detr_decoder, model.mask_decoder,
                 model.dot_product_scoring):
        head.to_empty(device="cpu")
        for parameter in head.parameters():
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator, device="cpu",
                                            dtype=parameter.dtype) * 0.02)
    vision = random_like(vision, generator)
    text = BaseModelOutputWithPooling(pooler_output=random_like(text.pooler_output, generator))
    flops["heads"] = count_flops(lambda: model(vision_embeds=vision, text_embeds=text,
                                               attention_mask=prompt["attention_mask"]))
    return flops


def depth_flops() -> int:
    """FLOPs of one Depth Anything V2 Small forward at 518 x 518 (the processor's size for a square image)."""
    from transformers import DepthAnythingForDepthEstimation

    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(testing.full_size_depth_config()).eval()
    return count_flops(lambda: model(pixel_values=torch.empty(1, 3, DEPTH_INPUT, DEPTH_INPUT, device="meta")))


def sam2_image_encoder_flops() -> int:
    """FLOPs of the SAM2.1 Hiera-L image encoder at 1024 px (``facebook/sam2.1-hiera-large``'s backbone: stages of
    2/6/36/4 blocks, 144-1152 wide). Its prompt encoder and mask decoder add little and are not counted."""
    from transformers import Sam2Config, Sam2Model

    backbone = {"model_type": "sam2_hiera_det_model", "hidden_size": 144, "blocks_per_stage": [2, 6, 36, 4],
                "embed_dim_per_stage": [144, 288, 576, 1152], "num_attention_heads_per_stage": [2, 4, 8, 16],
                "window_size_per_stage": [8, 4, 16, 8], "global_attention_blocks": [23, 33, 43],
                "window_positional_embedding_background_size": [7, 7]}
    config = Sam2Config(vision_config={"backbone_config": backbone, "backbone_channel_list": [1152, 576, 288, 144]})
    with torch.device("meta"):
        model = Sam2Model(config).eval()
    return count_flops(lambda: model.get_image_features(torch.empty(1, 3, SAM2_INPUT, SAM2_INPUT, device="meta")))


# ---------------------------------------------------------------------------------------------------------------------
# Memory traffic of the weight-free work


class TrafficCounter(TorchDispatchMode):
    """Counts the kernels and the bytes every torch op reads and writes, as an unfused GPU would move them through
    HBM: the tensors an op takes plus those it returns (a broadcast input counts its own elements once). Views move
    nothing and are not counted; neither is anything run inside a pretrained model's forward (FLOP-bound, counted
    above), which global module hooks mark while this counter is active."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.kernels = 0
        self.model_depth = 0
        self._hooks = []

    def __enter__(self):
        from transformers import PreTrainedModel

        def enter(module, args):
            self.model_depth += isinstance(module, PreTrainedModel)

        def leave(module, args, output):
            self.model_depth -= isinstance(module, PreTrainedModel)

        self._hooks = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
                       torch.nn.modules.module.register_module_forward_hook(leave)]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        return min(tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        is_view = any(ret.alias_info is not None and not ret.alias_info.is_write for ret in func._schema.returns)
        if self.model_depth == 0 and not is_view and not func._schema.name.startswith("aten::empty"):
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.bytes += sum(self._nbytes(t) for t in tensors)
            self.kernels += 1
        return out


def measure_traffic(run: Callable[[], object]) -> TrafficCounter:
    counter = TrafficCounter()
    with counter, torch.inference_mode():
        run()
    return counter


def pipeline_traffic(images: list[Path], batch_size: int) -> TrafficCounter:
    """The counter after one batch of ``batch_size`` rows through the real pipeline at 1024 px (segmentation by SAM3,
    normals from depth, albedo, relighting, compositing), with tiny SAM3 / depth checkpoints whose own forwards are
    not counted. Their processors resize to 112 px instead of 1008 / 518: see :func:`real_size_extras`."""
    with tempfile.TemporaryDirectory() as folder:
        sam3, depth = testing.make_tiny_sam3(Path(folder) / "sam3"), testing.make_tiny_depth(Path(folder) / "depth")
        config = load_config("mvp", overrides=[f"resolution={RESOLUTION}", "segmentation.method=sam3",
                                               f"segmentation.sam3_model={sam3}", "segmentation.score_threshold=0",
                                               "normals.method=depth", f"normals.depth_model={depth}"])
        pipeline = RelightPipeline(config, "cpu")
        pipeline.prepare()
        paths = [images[index % len(images)] for index in range(batch_size)]
        batch = {"image_id": [path.name for path in paths], "source": ["fixture"] * batch_size,
                 "input": [{"bytes": upscaled_png(path), "path": None} for path in paths]}
        return measure_traffic(lambda: pipeline(batch))


def real_size_extras() -> dict[str, float]:
    """HBM bytes per image of the weight-free work whose size the real models set: their processors' resizing and
    normalising of a 1024 px uint8 image to 1008 px (SAM3) and 518 px (depth), and the union of SAM3's
    200 query masks (288 px bf16 logits)."""
    from transformers import DPTImageProcessor, Sam3ImageProcessor

    image = torch.randint(0, 256, (3, RESOLUTION, RESOLUTION), dtype=torch.uint8, device="cpu")
    depth = DPTImageProcessor(size={"height": DEPTH_INPUT, "width": DEPTH_INPUT}, keep_aspect_ratio=True,
                              ensure_multiple_of=14, resample=3, image_mean=[0.485, 0.456, 0.406],
                              image_std=[0.229, 0.224, 0.225])
    sam3 = Sam3ImageProcessor()
    logits = torch.randn(1, SAM3_QUERIES, device="cpu", dtype=torch.bfloat16)
    presence = torch.randn(1, 1, device="cpu", dtype=torch.bfloat16)
    masks = torch.randn(1, SAM3_QUERIES, SAM3_MASK, SAM3_MASK, device="cpu", dtype=torch.bfloat16)

    def resize(processor) -> Callable[[], object]:
        return lambda: processor(images=[image], return_tensors="pt", device="cpu")["pixel_values"].to(torch.bfloat16)

    return {"SAM3 processor (1024 -> 1008 px)": measure_traffic(resize(sam3)).bytes,
            "depth processor (1024 -> 518 px)": measure_traffic(resize(depth)).bytes,
            "SAM3 instance union (200 x 288^2)": measure_traffic(lambda: unite_instances(logits, presence, masks,
                                                                                          0.5)).bytes}


# ---------------------------------------------------------------------------------------------------------------------
# CPU work per row


def upscaled(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB").resize((RESOLUTION, RESOLUTION), Image.BICUBIC)


def upscaled_png(path: Path) -> bytes:
    buffer = io.BytesIO()
    upscaled(path).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def upscaled_jpeg(path: Path) -> bytes:
    buffer = io.BytesIO()
    upscaled(path).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def ellipse_mask(size: int) -> np.ndarray:
    """An ``size x size`` uint8 head-and-shoulders-like mask (255 inside an ellipse over the lower two thirds)."""
    y, x = np.mgrid[0:size, 0:size] / size
    return (((x - 0.5) / 0.38) ** 2 + ((y - 0.75) / 0.5) ** 2 < 1).astype(np.uint8) * 255


def seconds_each(work: Callable[[object], object], items: list) -> float:
    """Wall seconds per item of ``work`` over ``items``, run one after the other on this thread."""
    started = time.perf_counter()
    for item in items:
        work(item)
    return (time.perf_counter() - started) / len(items)


def cpu_row_costs(images: list[Path]) -> dict[str, float]:
    """Seconds per 1024 px image on one core: decoding a PNG and a JPEG source image (the pipeline's decode), fpng for
    one RGB column, zlib level 1 for the mask."""
    pngs = [upscaled_png(path) for path in images]
    jpegs = [upscaled_jpeg(path) for path in images]
    arrays = [np.asarray(upscaled(path)) for path in images]
    mask = ellipse_mask(RESOLUTION)
    decode = lambda data: decode_image(data, RESOLUTION)  # noqa: E731
    fpng = lambda array: encode_image(array, png_codec="fpng")  # noqa: E731
    return {"decode PNG": seconds_each(decode, pngs), "decode JPEG": seconds_each(decode, jpegs),
            "encode RGB (fpng)": seconds_each(fpng, arrays),
            "encode mask (zlib 1)": seconds_each(lambda array: encode_image(array), [mask] * len(images))}


def releases_gil(module) -> bool:
    """Whether a compiled extension module ever releases the GIL: its shared library imports
    ``PyEval_SaveThread``, which ``Py_BEGIN_ALLOW_THREADS`` (and pybind11's ``gil_scoped_release``) call."""
    return b"PyEval_SaveThread" in Path(module.__file__).read_bytes()


# ---------------------------------------------------------------------------------------------------------------------
# Report


def markdown_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in
                                                              range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="source portraits (upscaled to 1024 px)")
    parser.add_argument("--batch-size", type=int, default=6, help="rows in the traffic-counting batch (also run at 2)")
    parser.add_argument("--mfu", type=float, nargs=2, default=(0.3, 0.5), metavar=("LOW", "HIGH"),
                        help="assumed model FLOP utilisation range (default 0.3 0.5)")
    parser.add_argument("--dispatch-us", type=float, default=10.0,
                        help="assumed host time (GIL held) to dispatch one eager torch op to the GPU, microseconds")
    parser.add_argument("--host-cores", type=int, default=16, help="cores of the GPU machine's host")
    args = parser.parse_args(argv)
    images = sorted(path for path in args.images.iterdir() if path.suffix.lower() in {".png", ".jpg", ".jpeg"})[:6]
    if not images:
        parser.error(f"no images in {args.images}")
    if args.batch_size <= 2:
        parser.error("--batch-size must be more than 2 (kernels per image are fitted from batches of 2 and N)")

    sam3 = sam3_flops()
    models = {"SAM3, vision (ViT-L/14 + FPN, 1008 px)": sam3["vision"], "SAM3, text (CLIP, 32 tokens)": sam3["text"],
              "SAM3, heads (DETR enc/dec, masks)": sam3["heads"], "Depth Anything V2 S (518 px)": depth_flops()}
    path_flops = sum(models.values())
    print("## Model FLOPs per image (FlopCounterMode, batch 1)\n")
    rows = [(name, f"{flops / 1e9:,.0f}") for name, flops in models.items()]
    rows += [("**sam3 + depth, per image**", f"**{path_flops / 1e9:,.0f}**"),
             ("SAM2.1 Hiera-L image encoder (1024 px; `--segmenter sam2`)", f"{sam2_image_encoder_flops() / 1e9:,.0f}")]
    print(markdown_table(("model", "GFLOP"), rows))

    small, large = pipeline_traffic(images, 2), pipeline_traffic(images, args.batch_size)
    kernels_per_image = (large.kernels - small.kernels) / (args.batch_size - 2)
    kernels_per_batch = large.kernels - kernels_per_image * args.batch_size
    extras = real_size_extras()
    measured = large.bytes / args.batch_size
    traffic = measured + sum(extras.values())
    print(f"\n## Weight-free GPU work per image (unfused HBM traffic, batch {args.batch_size}, {RESOLUTION} px)\n")
    rows = [("pipeline outside the models (measured with tiny checkpoints)", f"{measured / 1e6:,.0f}")]
    rows += [(name, f"{value / 1e6:,.0f}") for name, value in extras.items()]
    rows += [("**total**", f"**{traffic / 1e6:,.0f}**")]
    print(markdown_table(("part", "MB read + written"), rows))
    print(f"\nTorch ops outside the models: {kernels_per_image:.0f} per image + {kernels_per_batch:.0f} per batch")

    stored = 3 * RESOLUTION**2 * (len(IMAGE_COLUMNS) - 1) + RESOLUTION**2  # five RGB columns and the mask, uint8
    upload = 3 * RESOLUTION**2
    print("\n## PCIe bytes per row\n")
    print(markdown_table(("direction", "MB"), [("host -> device (decoded input, uint8)", f"{upload / 1e6:.2f}"),
                                               ("device -> host (six stored images, uint8)", f"{stored / 1e6:.2f}")]))

    import fpng.fpng_ext

    costs = cpu_row_costs(images)
    fpng_row = (len(IMAGE_COLUMNS) - 1) * costs["encode RGB (fpng)"]
    encode = fpng_row + costs["encode mask (zlib 1)"]
    print("\n## CPU work per row (one core, this machine)\n")
    rows = [(name, f"{value * 1e3:.1f}") for name, value in costs.items()]
    rows += [("encode a row (5 x fpng + mask)", f"{encode * 1e3:.1f}")]
    print(markdown_table(("work", "ms"), rows))
    print(f"\nfpng releases the GIL: {'yes' if releases_gil(fpng.fpng_ext) else 'no'}; "
          f"Pillow: {'yes' if releases_gil(Image.core) else 'no'}")

    print(f"\n## Bounds per GPU and its {args.host_cores}-core host (images/s)\n")
    rows = []
    for gpu in (H100_SXM, H100_PCIE):
        low, high = (gpu.bf16_dense_tflops * 1e12 * mfu / path_flops for mfu in args.mfu)
        rows += [(gpu.name, f"model FLOPs at {args.mfu[0]:.0%}-{args.mfu[1]:.0%} MFU", f"{low:,.0f}-{high:,.0f}"),
                 (gpu.name, "weight-free work, 80 % of HBM bandwidth",
                  f"{0.8 * gpu.hbm_tb_per_s * 1e12 / traffic:,.0f}"),
                 (gpu.name, "PCIe device -> host, 80 % of one direction",
                  f"{0.8 * gpu.pcie_gb_per_s_each_way * 1e9 / stored:,.0f}")]
    dispatch = kernels_per_image * args.dispatch_us * 1e-6
    gil = fpng_row + dispatch
    rows += [("host", f"{source} decode + encode on {args.host_cores} cores",
              f"{args.host_cores / (costs[f'decode {source}'] + encode):,.0f}") for source in ("PNG", "JPEG")]
    rows.append(("host, one process",
                 f"GIL: 5 fpng encodes + {kernels_per_image:.0f} op dispatches at {args.dispatch_us:g} us",
                 f"{1 / gil:,.0f}"))
    print(markdown_table(("machine", "bound", "images/s"), rows))

    print(f"\n## Expected images/s, {H100_SXM.name}, one process, sam3 + depth, bf16, {RESOLUTION} px\n")
    parallel = (costs["decode PNG"] + costs["encode mask (zlib 1)"]) / args.host_cores  # GIL-free, on the thread pool
    rows = []
    for mfu in args.mfu:
        gpu_time = (path_flops / (H100_SXM.bf16_dense_tflops * 1e12 * mfu)
                    + traffic / (0.8 * H100_SXM.hbm_tb_per_s * 1e12))
        serial = gpu_time + gil + parallel + (upload + stored) / (0.8 * H100_SXM.pcie_gb_per_s_each_way * 1e9)
        rows.append((f"{mfu:.0%}", f"{gpu_time * 1e3:.1f}", f"{gil * 1e3:.1f}", f"{1 / serial:,.0f}",
                     f"{1 / max(gpu_time, gil, parallel):,.0f}"))
    print(markdown_table(("MFU", "GPU ms/image", "GIL-held host ms/row", "one batch at a time",
                          "host overlapped with GPU"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

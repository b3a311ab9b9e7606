"""Tiny, randomly initialised model checkpoints for offline tests and smoke runs.

``python -m relight_datasets.testing make-tiny-checkpoints DIR`` writes one ``save_pretrained`` folder per model
family (SAM3, SAM2, Grounding DINO, Depth Anything, DPT, and a Qwen2.5-VL captioner), each with its processor,
0.5-1.5 MB each, and two complete ``diffusers`` Marigold pipelines (intrinsic image decomposition and surface
normals: UNet, VAE, CLIP text encoder and tokenizer, DDIM scheduler), about 1.3 MB each. Weights are random but
deterministic (seeded before each construction), so outputs are meaningless yet reproducible.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

DEFAULT_SEED = 0

# Words the tiny tokenizers know as whole tokens; anything else maps to byte pieces (CLIP) or [UNK] (BERT).
# "visual" is the text SAM3's processor substitutes for box-only prompts.
WORDS = ("a", "photo", "of", "person", "people", "face", "portrait", "man", "woman", "visual")


def _clip_tokenizer():
    """A byte-level BPE CLIP tokenizer with the full byte alphabet plus whole-word merges for :data:`WORDS`."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in alphabet + [char + "</w>" for char in alphabet]:
        vocab.setdefault(piece, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: "p e" -> "pe", "pe r" -> "per", ...
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = ["".join(pair), *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _bert_tokenizer():
    """A WordPiece BERT tokenizer over the special tokens, :data:`WORDS` and some punctuation."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)})


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5-VL's chat format (ChatML, an image as ``<|vision_start|><|image_pad|><|vision_end|>``), without its
default system turn."""


def _qwen_tokenizer():
    """A byte-level ``Qwen2Tokenizer``: one token per byte (no merges) plus Qwen2.5-VL's special tokens."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {piece: index for index, piece in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return tokenizer


def _qwen_vl_token_ids(tokenizer) -> dict:
    """The config's special token ids, as ``tokenizer`` numbers them."""
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)), strict=True))
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


def _qwen_vl_processor(tokenizer, max_pixels: int):
    """``Qwen2_5_VLProcessor`` with the ChatML template, images resized to at most ``max_pixels``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels),
                               tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                               chat_template=CHATML_TEMPLATE)


def make_tiny_captioner(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor`` (images at most 112 x 112 px,
    16 image tokens; byte tokenizer; ChatML template) to ``path``. Weights are drawn wider than the default so the
    (meaningless) captions differ from image to image."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_tokenizer()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "bos_token_id": tokenizer.pad_token_id, "eos_token_id": end,
                     "pad_token_id": tokenizer.pad_token_id, "initializer_range": 0.1},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "window_size": 56, "fullatt_block_indexes": [1], "initializer_range": 0.1},
        initializer_range=0.1,
        **_qwen_vl_token_ids(tokenizer),
    )
    processor = _qwen_vl_processor(tokenizer, max_pixels=112 * 112)
    return _save(path, seed, lambda: Qwen2_5_VLForConditionalGeneration(config), processor)


def make_tiny_sam3(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny ``Sam3Model`` + ``Sam3Processor`` (112 px input, 32 px masks) to ``path``."""
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    image_size, patch_size, hidden = 112, 14, 32
    grid = image_size // patch_size  # 8 tokens a side; FPN scales 4, 2, 1, 0.5 give 32, 16, 8, 4
    tokenizer = _clip_tokenizer()
    layers = {"hidden_size": hidden, "num_attention_heads": 2, "intermediate_size": 64, "num_layers": 1}
    config = Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": hidden,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": image_size,
                "pretrain_image_size": image_size,
                "patch_size": patch_size,
                "window_size": grid // 2,
                "global_attn_indexes": [1],
            },
            "fpn_hidden_size": hidden,
            "backbone_feature_sizes": [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
        },
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "projection_dim": hidden,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        geometry_encoder_config={**layers, "roi_size": 7},
        detr_encoder_config=layers,
        detr_decoder_config={**layers, "num_queries": 16},
        mask_decoder_config={"hidden_size": hidden, "num_attention_heads": 2},
    )
    image_processor = Sam3ImageProcessor(
        size={"height": image_size, "width": image_size}, mask_size={"height": 4 * grid, "width": 4 * grid}
    )
    return _save(path, seed, lambda: Sam3Model(config), Sam3Processor(image_processor, tokenizer))


def make_tiny_sam2(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny ``Sam2Model`` + ``Sam2Processor`` (128 px input, 32 px low-res masks) to ``path``."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    image_size, hidden = 128, 32
    dims = [16, 32, 64, 128]  # Hiera stages at strides 4, 8, 16, 32
    config = Sam2Config(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": dims[0],
                "image_size": [image_size, image_size],
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": dims,
                "num_attention_heads_per_stage": [1, 1, 2, 2],
                "window_size_per_stage": [4, 4, 4, 4],
                "global_attention_blocks": [3],  # not a stage's first (pooling) block: those need a window
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": dims[::-1],
            "backbone_feature_sizes": [[image_size // stride] * 2 for stride in (4, 8, 16)],
            "fpn_hidden_size": hidden,
        },
        prompt_encoder_config={"hidden_size": hidden, "image_size": image_size, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": hidden,
        },
    )
    image_processor = Sam2ImageProcessor(
        size={"height": image_size, "width": image_size},
        mask_size={"height": image_size // 4, "width": image_size // 4},
    )
    return _save(path, seed, lambda: Sam2Model(config), Sam2Processor(image_processor))


def make_tiny_detector(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny ``GroundingDinoForObjectDetection`` (Swin + BERT) + ``GroundingDinoProcessor`` to ``path``."""
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tokenizer = _bert_tokenizer()
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "image_size": 96,
            "embed_dim": 16,
            "depths": [1, 1, 1],
            "num_heads": [1, 2, 2],
            "window_size": 4,
            "out_indices": [1, 2, 3],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
        },
        d_model=32,  # the input projections use GroupNorm(32, d_model)
        num_queries=16,
        encoder_layers=1,
        decoder_layers=2,  # with 1 layer the bbox_embed weight tying finds nothing to tie and raises
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=4,
        max_text_len=64,
    )
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 128})
    processor = GroundingDinoProcessor(image_processor, tokenizer)
    return _save(path, seed, lambda: GroundingDinoForObjectDetection(config), processor)


def make_tiny_depth(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny Depth Anything (Dinov2 backbone) + ``DPTImageProcessor`` (112 px, multiple of 14) to ``path``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    hidden = 32
    config = DepthAnythingConfig(
        backbone_config={
            "model_type": "dinov2",
            "image_size": 112,
            "patch_size": 14,
            "hidden_size": hidden,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "out_indices": [1, 2, 3, 4],
            "reshape_hidden_states": False,
        },
        reassemble_hidden_size=hidden,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    image_processor = DPTImageProcessor(
        size={"height": 112, "width": 112},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    return _save(path, seed, lambda: DepthAnythingForDepthEstimation(config), image_processor)


def make_tiny_dpt(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny MiDaS-style ``DPTForDepthEstimation`` (plain ViT) + ``DPTImageProcessor`` (64 px) to ``path``."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        image_size=64,
        patch_size=16,  # neck and head upsample the token grid 16x, so depth comes out at the input size
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        use_auxiliary_head=False,
    )
    image_processor = DPTImageProcessor(size={"height": 64, "width": 64})
    return _save(path, seed, lambda: DPTForDepthEstimation(config), image_processor)


MARIGOLD_APPEARANCE_TARGETS = {
    "target_names": ["albedo", "material"],
    "albedo": {"prediction_space": "srgb"},
    "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", None]},
    "roughness": {"prediction_space": "linear"},
    "metallicity": {"prediction_space": "linear"},
}
"""``target_properties`` of an appearance-style intrinsics checkpoint: sRGB albedo, then a stack of material maps."""


def _marigold_components(targets: int, tiny: bool = True) -> dict:
    """UNet (image latent + ``targets`` prediction latents in, ``targets`` out), VAE, CLIP text encoder and
    tokenizer, and a DDIM scheduler with trailing timesteps, for a Marigold pipeline. ``tiny``: a few hundred
    thousand parameters; else Stable Diffusion 2's architecture, from which the Marigold checkpoints are fine-tuned
    (UNet 866 M, VAE 84 M, OpenCLIP-H text encoder 340 M parameters)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer()
    tokenizer.model_max_length = 77  # the pipelines tokenize "" with truncation to this length
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    if tiny:
        unet = {"sample_size": 16, "layers_per_block": 1, "block_out_channels": (16, 32), "norm_num_groups": 8,
                "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "cross_attention_dim": 32,
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "attention_head_dim": 4}
        vae = {"block_out_channels": (8, 16, 16), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}
        text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                              num_attention_heads=4, **special)
    else:
        unet = {"sample_size": 96, "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 1024,
                "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
                "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}
        vae = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "sample_size": 768}
        text = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                              num_attention_heads=16, projection_dim=512, hidden_act="gelu", **special)
    blocks = len(vae["block_out_channels"])
    return {
        "unet": lambda: UNet2DConditionModel(in_channels=4 * (1 + targets), out_channels=4 * targets, **unet),
        "vae": lambda: AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks, latent_channels=4,
                                     up_block_types=("UpDecoderBlock2D",) * blocks, **vae),
        "text_encoder": lambda: CLIPTextModel(text),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing",
                                   prediction_type="v_prediction"),
    }


def _save_marigold(path: str | Path, seed: int, pipeline_class: str, targets: int, tiny: bool,
                   dtype: torch.dtype = torch.float32, **settings) -> Path:
    """Seed, build each network of a Marigold pipeline (in that order), and ``save_pretrained`` the pipeline."""
    import diffusers

    path = Path(path)
    parts = _marigold_components(targets, tiny)
    torch.manual_seed(seed)
    # torch's own ``to``: diffusers' override warns about modules to keep in float32, which these have none of
    networks = {name: torch.nn.Module.to(parts[name]().eval(), dtype) for name in ("unet", "vae", "text_encoder")}
    pipeline = getattr(diffusers, pipeline_class)(**networks, tokenizer=parts["tokenizer"],
                                                  scheduler=parts["scheduler"], **settings)
    pipeline.save_pretrained(path)
    return path


def make_tiny_intrinsics(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny ``MarigoldIntrinsicsPipeline`` (albedo + material, 64 px processing, 4 steps) to ``path``."""
    return _save_marigold(path, seed, "MarigoldIntrinsicsPipeline", targets=2, tiny=True, prediction_type="intrinsics",
                          target_properties=MARIGOLD_APPEARANCE_TARGETS, default_denoising_steps=4,
                          default_processing_resolution=64)


def make_tiny_surface_normals(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a tiny ``MarigoldNormalsPipeline`` (64 px processing, 4 steps) to ``path``."""
    return _save_marigold(path, seed, "MarigoldNormalsPipeline", targets=1, tiny=True, prediction_type="normals",
                          use_full_z_range=True, default_denoising_steps=4, default_processing_resolution=64)


def full_size_sam3_config():
    """The architecture of ``facebook/sam3`` (``Sam3Config`` defaults), with the tiny tokenizer's special ids.
    Returns ``(config, tokenizer)``."""
    from transformers import Sam3Config

    tokenizer = _clip_tokenizer()
    text = {"model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
            "projection_dim": 512, "num_hidden_layers": 24, "num_attention_heads": 16, "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    return Sam3Config(text_config=text), tokenizer


def full_size_depth_config():
    """The architecture of ``depth-anything/Depth-Anything-V2-Small-hf``: DINOv2-S (384 wide, 12 layers, 6 heads)
    at 518 px, DPT neck 48/96/192/384, fusion 64."""
    from transformers import DepthAnythingConfig

    backbone = {"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6, "image_size": 518,
                "out_indices": [3, 6, 9, 12], "reshape_hidden_states": False}
    return DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64)


def full_size_captioner_config():
    """The architecture of ``Qwen/Qwen2.5-VL-3B-Instruct`` (36 layers, 2048 wide, 16 heads, 2 KV heads, vocabulary
    151936, tied embeddings; a 32-block, 1280-wide vision encoder), with the tiny tokenizer's special ids. Returns
    ``(config, tokenizer)``."""
    from transformers import Qwen2_5_VLConfig

    tokenizer = _qwen_tokenizer()
    text = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
            "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id}
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
              "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                              **_qwen_vl_token_ids(tokenizer))
    return config, tokenizer


def make_full_size_checkpoints(root: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Randomly initialised SAM3, Depth Anything V2 Small, the two Marigold pipelines (intrinsics, surface normals:
    Stable Diffusion 2's UNet, VAE and text encoder, 768 px processing) and Qwen2.5-VL-3B at their real sizes (bf16
    on disk, about 1.7 GB, 50 MB, 2.6 GB each and 7.5 GB; the captioner needs about 23 GB of host memory while it is
    written) under ``root/sam3``, ``root/depth``, ``root/intrinsics``, ``root/surface-normals`` and
    ``root/captioner``: the same FLOPs as the real weights, for GPU benchmarks without Hub access. Their outputs are
    meaningless (the captioner never stops before ``caption.max_new_tokens``, the worst case for its time)."""
    from transformers import (
        DepthAnythingForDepthEstimation,
        DPTImageProcessor,
        Qwen2_5_VLForConditionalGeneration,
        Sam3ImageProcessor,
        Sam3Model,
        Sam3Processor,
    )

    root = Path(root)
    sam3_config, tokenizer = full_size_sam3_config()
    captioner_config, captioner_tokenizer = full_size_captioner_config()
    depth_processor = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                                        ensure_multiple_of=14, resample=3, image_mean=[0.485, 0.456, 0.406],
                                        image_std=[0.229, 0.224, 0.225])
    return {
        "sam3": _save(root / "sam3", seed, lambda: Sam3Model(sam3_config),
                      Sam3Processor(Sam3ImageProcessor(), tokenizer), torch.bfloat16),
        "depth": _save(root / "depth", seed, lambda: DepthAnythingForDepthEstimation(full_size_depth_config()),
                       depth_processor, torch.bfloat16),
        "intrinsics": _save_marigold(root / "intrinsics", seed, "MarigoldIntrinsicsPipeline", 2, False,
                                     torch.bfloat16, prediction_type="intrinsics",
                                     target_properties=MARIGOLD_APPEARANCE_TARGETS, default_denoising_steps=4,
                                     default_processing_resolution=768),
        "surface-normals": _save_marigold(root / "surface-normals", seed, "MarigoldNormalsPipeline", 1, False,
                                          torch.bfloat16, prediction_type="normals", use_full_z_range=True,
                                          default_denoising_steps=4, default_processing_resolution=768),
        "captioner": _save(root / "captioner", seed, lambda: Qwen2_5_VLForConditionalGeneration(captioner_config),
                           _qwen_vl_processor(captioner_tokenizer, max_pixels=12845056), torch.bfloat16),
    }


def _save(path: str | Path, seed: int, build: Callable[[], torch.nn.Module], processor,
          dtype: torch.dtype = torch.float32) -> Path:
    """Seed, build the model, and ``save_pretrained`` it (in ``dtype``) with its processor into ``path``."""
    path = Path(path)
    torch.manual_seed(seed)
    model = build().eval().to(dtype)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


BUILDERS: dict[str, Callable[..., Path]] = {
    "sam3": make_tiny_sam3,
    "sam2": make_tiny_sam2,
    "detector": make_tiny_detector,
    "depth": make_tiny_depth,
    "dpt": make_tiny_dpt,
    "intrinsics": make_tiny_intrinsics,
    "surface-normals": make_tiny_surface_normals,
    "captioner": make_tiny_captioner,
}


def make_tiny_checkpoints(root: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write every tiny checkpoint under ``root/<name>``; returns ``{name: folder}``."""
    root = Path(root)
    return {name: build(root / name, seed=seed) for name, build in BUILDERS.items()}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: ``make-tiny-checkpoints DIR [--seed N]``."""
    parser = argparse.ArgumentParser(prog="python -m relight_datasets.testing", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-tiny-checkpoints", help="write tiny random checkpoints under DIR")
    full = commands.add_parser("make-full-size-checkpoints",
                               help="write random SAM3, Depth Anything V2 Small, the Marigold pipelines and "
                               "Qwen2.5-VL-3B at full size under DIR (GPU bench)")
    for command in (make, full):
        command.add_argument("dir", type=Path, help="output folder (one sub-folder per model)")
        command.add_argument("--seed", type=int, default=DEFAULT_SEED, help="torch seed set before each model")
    args = parser.parse_args(argv)
    from transformers.utils import logging

    from .models.loading import disable_diffusers_progress_bars

    logging.disable_progress_bar()  # keep the output to one line per folder
    disable_diffusers_progress_bars()
    writer = make_tiny_checkpoints if args.command == "make-tiny-checkpoints" else make_full_size_checkpoints
    for name, folder in writer(args.dir, seed=args.seed).items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Captions from a vision-language model (``AutoModelForImageTextToText`` with a chat template: Qwen2.5-VL, ...).

One user turn (the image, then the prompt) goes through the processor's chat template; captions are decoded greedily,
so the same image, prompt and weights give the same caption.
"""

from __future__ import annotations

import torch

from .loading import ModelUnavailable, load_pretrained

ROLE = "caption"


def chat_text(processor, prompt: str) -> str:
    """The model's chat template applied to one user turn (an image, then ``prompt``), ready for the answer."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class Captioner:
    """A caption per ``3 x H x W`` uint8 image tensor on the model's device, ``batch_size`` images per
    ``generate`` call, at most ``max_new_tokens`` tokens each. Raises :class:`ModelUnavailable` when the model cannot
    load or its processor has no chat template."""

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype, prompt: str, max_new_tokens: int,
                 batch_size: int):
        self.loaded = load_pretrained(ROLE, "AutoModelForImageTextToText", "AutoProcessor", model_id, device, dtype)
        try:
            self.text = chat_text(self.loaded.processor, prompt)
        except (ValueError, AttributeError) as error:
            reason = "its processor has no chat template (use an instruct VLM)"
            raise ModelUnavailable(ROLE, model_id, reason) from error
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor | list[torch.Tensor]) -> list[str]:
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            captions += self._generate(list(images[start : start + self.batch_size]))
        return captions

    def _generate(self, images: list[torch.Tensor]) -> list[str]:
        """One ``generate`` call: greedy, prompts padded on the left so every answer starts at the same column."""
        inputs = self.loaded.preprocess([[image] for image in images], text=[self.text] * len(images), padding=True,
                                        padding_side="left")
        generated = self.loaded.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = generated[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.loaded.processor.batch_decode(answers, skip_special_tokens=True)]

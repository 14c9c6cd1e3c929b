"""LLaVA-1.5 (and the shipped reference model): transformers' ``LlavaForConditionalGeneration``.

One fixed square grid per image from a CLIP (or SigLIP with the "full" strategy) tower; a prompt
may hold several images, each its own contiguous run of image tokens.
"""

from __future__ import annotations

from torch import nn

from fastrm_common.errors import InputError
from fastrm_core.adapters import VLMAdapter, as_inputs, inner_model, register_adapter
from fastrm_core.regions import ImageRegion, check_regions

__all__ = ["LlavaAdapter"]


class LlavaAdapter(VLMAdapter):
    """transformers' ``LlavaForConditionalGeneration`` with a CLIP (or SigLIP "full") vision tower:
    LLaVA-1.5 and the shipped reference model. One fixed square grid per image; a prompt may hold
    several images (each its own contiguous run of image tokens)."""

    name = "llava"
    model_types = ("llava",)

    @classmethod
    def supports(cls, config) -> bool:
        if getattr(config, "model_type", None) != "llava":
            return False
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        if vision == "clip_vision_model":
            return strategy in ("default", "full")
        # SigLIP has no CLS token: "full" keeps every patch; "default" would drop a real patch
        return vision == "siglip_vision_model" and strategy == "full"

    @property
    def language_model(self) -> nn.Module:
        return inner_model(self.model).language_model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def fixed_grid(self) -> tuple[int, int]:
        vc = self.model.config.vision_config
        side = int(vc.image_size) // int(vc.patch_size)
        return (side, side)

    @property
    def image_token_offset(self) -> int:
        # CLIP + "default" drops the CLS token; CLIP + "full" keeps it as the first image token
        cfg = self.model.config
        return 1 if cfg.vision_feature_select_strategy == "full" and cfg.vision_config.model_type == "clip_vision_model" else 0

    def regions(self, inputs, row: int = 0) -> list[ImageRegion]:
        ids = as_inputs(inputs)["input_ids"][row]
        positions = (ids == self.image_token_id).nonzero(as_tuple=True)[0]
        per_image = self.n_image_tokens
        if positions.numel() == 0 or positions.numel() % per_image:
            raise InputError(
                f"expected exactly one image of {per_image} image tokens (id {self.image_token_id}) per picture "
                f"in the sequence, found {positions.numel()}"
            )
        out = []
        for k, chunk in enumerate(positions.split(per_image)):
            if int(chunk[-1] - chunk[0]) != per_image - 1:
                raise InputError(f"the tokens of image {k} are not one contiguous run of {per_image} tokens")
            out.append(ImageRegion(image=k, kind="full", positions=chunk[self.image_token_offset :], grid=self.fixed_grid))
        check_regions(out, ids.numel())
        return out


register_adapter(LlavaAdapter)

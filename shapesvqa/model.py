"""The tiny reference LLaVA: tokenizer, processor and model built from transformers' own classes.

The shipped folder (``shapesvqa/assets/reference-llava``) is written by ``save_pretrained`` and loads
offline through the same path as ``llava-hf/llava-1.5-7b-hf``::

    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=image, text=prompt("What color is the circle?"), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5)   # -> "... ASSISTANT: red </s>"

Architecture: CLIP vision tower (96 px, 12 px patches -> 8x8 = 64 image tokens, CLS dropped by the
"default" feature strategy), two-layer GELU projector, Llama language model, word-level tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from .world import question_vocabulary

__all__ = [
    "CHAT_TEMPLATE",
    "ModelSpec",
    "SHIPPED_MODEL_DIR",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "pixel_values",
    "prompt",
]

SHIPPED_MODEL_DIR = Path(__file__).parent / "assets" / "reference-llava"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# LLaVA-1.5 conversation format: "USER: <image>\n{text} ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ASSISTANT: ' }}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{{ '</s>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)


def prompt(question: str) -> str:
    """The LLaVA-1.5 prompt for one image and one question."""
    return PROMPT_TEMPLATE.format(question=question)


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of the reference model (internal hyper-parameters)."""

    image_size: int = 96
    patch_size: int = 12
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256
    max_positions: int = 256

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer():
    """Word-level fast tokenizer with <image>, <pad>, <s>, </s>, <unk>; prepends <s>."""
    from transformers import PreTrainedTokenizerFast

    words = ["USER", "ASSISTANT", ":", "\n", ".", ","] + question_vocabulary()
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w not in vocab and w.strip():
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(spec: ModelSpec = ModelSpec(), tokenizer=None):
    """A real LlavaProcessor: CLIP-style image processor sized to the model, the tokenizer, the template."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(),
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, spec: ModelSpec = ModelSpec(), seed: int = 0):
    """A freshly initialised LlavaForConditionalGeneration (eager attention, so maps can be taken)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=spec.grid * spec.grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.set_attn_implementation("eager")
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = config.bos_token_id, config.eos_token_id, config.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = 5
    return model


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised exactly like the shipped processor."""
    x = torch.from_numpy(images).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 1, 1, 3)
    std = torch.tensor(CLIP_STD).view(1, 1, 1, 3)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()

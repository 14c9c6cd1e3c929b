"""Tiny, randomly initialised LLaVA models with a real tokenizer and processor.

For tests, benchmarks and trying the pipeline without any download: the model is
built from transformers' own classes (``LlavaForConditionalGeneration`` with a CLIP
vision tower and a Llama language model), the tokenizer is a word-level
``tokenizers`` model wrapped as a fast tokenizer, and the processor is a real
``LlavaProcessor``, so ``save_pretrained`` / ``from_pretrained`` round-trip exactly
like a hub checkpoint.

    >>> model, processor = build_tiny_llava(hidden_size=64, num_layers=2)
    >>> inputs = processor(images=blank_image(32), text=llava_prompt("What color?"), return_tensors="pt")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

__all__ = ["TinyLlavaSpec", "blank_image", "build_tiny_llava", "build_word_tokenizer", "llava_prompt"]

PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"

_BASE_WORDS = (
    "what color shape is the there a an of left right above below how many object objects circle square "
    "triangle red green blue yellow purple orange white black yes no zero one two three four five six "
    "big small image picture answer question using up to words"
).split()


def llava_prompt(question: str) -> str:
    """The LLaVA-1.5 prompt for one image and one question."""
    return PROMPT_TEMPLATE.format(question=question)


def blank_image(size: int, color: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """A plain RGB square image."""
    return Image.new("RGB", (size, size), color)


def build_word_tokenizer(words: list[str] | tuple[str, ...] = _BASE_WORDS):
    """A lower-casing word-level fast tokenizer with LLaVA's special tokens (``<image>``, ``<s>``, ``</s>``, ``<pad>``, ``<unk>``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    punctuation = ["?", ".", ",", ":", "!"]
    vocab_words = ["user", "assistant", *punctuation, *sorted(set(w.lower() for w in words))]
    vocab = {tok: i for i, tok in enumerate(specials + vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<image>"],
    )
    hf_tok.add_bos_token = True
    return hf_tok


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Shape of a tiny LLaVA. ``image_size // patch_size`` squared is the number of patches."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    image_size: int = 32
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    feature_strategy: str = "default"
    dtype: torch.dtype = torch.float32


def build_tiny_llava(spec: TinyLlavaSpec | None = None, *, seed: int = 0, device: str | torch.device | None = None,
                     **overrides):
    """Build ``(model, processor)`` for a randomly initialised LLaVA of the given shape.

    Keyword ``overrides`` replace fields of :class:`TinyLlavaSpec`. The model is in eval mode.
    ``device`` builds the weights there directly (e.g. ``"cuda"`` for a 7B shape).
    """
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    spec = spec or TinyLlavaSpec()
    if overrides:
        spec = TinyLlavaSpec(**{**spec.__dict__, **overrides})
    tokenizer = build_word_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_hidden_size * 2,
        num_hidden_layers=spec.vision_layers + 1,  # LLaVA reads the penultimate layer
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size or spec.hidden_size * 2,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy=spec.feature_strategy,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = LlavaForConditionalGeneration(config).to(spec.dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy=spec.feature_strategy,
        num_additional_image_tokens=1,
    )
    return model, processor

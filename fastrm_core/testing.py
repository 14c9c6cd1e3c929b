"""Tiny, randomly initialised VLMs (LLaVA-1.5, Qwen2-VL, Qwen2.5-VL) with a real tokenizer and processor.

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

__all__ = [
    "TinyLlavaSpec",
    "TinyQwenSpec",
    "blank_image",
    "build_qwen_tokenizer",
    "build_tiny_llava",
    "build_tiny_qwen2_vl",
    "build_word_tokenizer",
    "llava_prompt",
]

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


# --------------------------------------------------------------------------------------
# Qwen2-VL / Qwen2.5-VL

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<unk>"]


def build_qwen_tokenizer(words: list[str] | tuple[str, ...] = _BASE_WORDS):
    """A word-level fast tokenizer with Qwen2-VL's special tokens (``<|im_end|>`` ends a turn and is EOS)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = ["user", "assistant", "system", "?", ".", ",", ":", "!", *sorted(set(w.lower() for w in words))]
    vocab = {tok: i for i, tok in enumerate(_QWEN_SPECIALS + vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=_QWEN_SPECIALS[1:7],
    )


@dataclass(frozen=True)
class TinyQwenSpec:
    """Shape of a tiny Qwen2-VL / Qwen2.5-VL. An image of H x W pixels gives (H / patch / 2) x (W / patch / 2)
    image tokens (the 2 x 2 merge), between ``min_pixels`` and ``max_pixels``."""

    version: str = "qwen2_vl"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int | None = None  # default: 2 x hidden_size
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2
    patch_size: int = 8
    vision_hidden_size: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    vision_mlp_ratio: int = 2
    min_pixels: int = 16 * 16
    max_pixels: int = 64 * 64
    dtype: torch.dtype = torch.float32


def build_tiny_qwen2_vl(spec: TinyQwenSpec | None = None, *, seed: int = 0, device: str | torch.device | None = None,
                        **overrides):
    """Build ``(model, processor)`` for a randomly initialised Qwen2-VL (``version="qwen2_5_vl"``: Qwen2.5-VL).

    The processor is the family's own, for images only
    (:func:`fastrm_core.families.qwen2_vl.image_only_processor`: no torchvision needed), with a
    Qwen-style chat template. Keyword ``overrides`` replace fields of :class:`TinyQwenSpec`.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from fastrm_core.families.qwen2_vl import image_only_processor

    spec = spec or TinyQwenSpec()
    if overrides:
        spec = TinyQwenSpec(**{**spec.__dict__, **overrides})
    if spec.version not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"unknown version {spec.version!r}; expected one of: qwen2_vl, qwen2_5_vl")
    tokenizer = build_qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size or spec.hidden_size * 2,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        rope_parameters={"rope_type": "default", "mrope_section": list(spec.mrope_section), "rope_theta": 10000.0},
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id, eos_token_id=ids("<|im_end|>"),
        bos_token_id=None,
    )
    vision = dict(depth=spec.vision_layers, hidden_size=spec.vision_hidden_size, num_heads=spec.vision_heads,
                  patch_size=spec.patch_size, spatial_merge_size=2, temporal_patch_size=2)
    tokens = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if spec.version == "qwen2_vl":
        vision.update(embed_dim=spec.vision_hidden_size, hidden_size=spec.hidden_size, mlp_ratio=spec.vision_mlp_ratio)
        config, cls = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens), Qwen2VLForConditionalGeneration
    else:
        vision.update(intermediate_size=spec.vision_hidden_size * spec.vision_mlp_ratio, out_hidden_size=spec.hidden_size,
                      window_size=spec.patch_size * 4, fullatt_block_indexes=[spec.vision_layers - 1])
        config, cls = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens), Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = cls(config).to(spec.dtype).eval()
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tokenizer.pad_token_id, ids("<|im_end|>"), None
    image_processor = Qwen2VLImageProcessorPil(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                                               patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2)
    processor = image_only_processor(image_processor, tokenizer, QWEN_CHAT_TEMPLATE, model_type=spec.version)
    return model, processor


# --------------------------------------------------------------------------------------
# Adapter conformance checks: what every family's tests assert (tiny random models, CPU)


def model_snapshot(model) -> tuple:
    """What "leave the model as found" compares: mode, attention implementations, grad flags, hook count."""
    impls = tuple(sorted((type(m).__name__, str(m.config._attn_implementation))
                         for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")))
    cached = tuple(repr(m.rope_deltas) for m in model.modules() if hasattr(m, "rope_deltas"))  # M-RoPE offsets
    return (
        model.training,
        impls,
        tuple(p.requires_grad for p in model.parameters()),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        cached,
    )


def greedy(model, inputs: dict, n: int, adapter=None, **kwargs):
    """``generate`` of exactly ``n`` greedy tokens with the adapter's placeholder ids suppressed
    (a random model happily emits them; a real one never does). Returns the ``generate`` output."""
    from fastrm_core.adapters import get_adapter

    adapter = adapter or get_adapter(model)
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              suppress_tokens=sorted(adapter.placeholder_token_ids), **kwargs)


def check_replay_logits(model, inputs: dict, n: int = 4, adapter=None, atol: float = 1e-4) -> None:
    """``generate``'s logits of every row equal one forward over :meth:`VLMAdapter.replay_inputs`
    (prompt + generated tokens), for a possibly padded batch. Raises AssertionError otherwise."""
    from fastrm_core.adapters import get_adapter

    adapter = adapter or get_adapter(model)
    out = greedy(model, inputs, n, adapter, output_logits=True, return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1)  # (B, T, V)
    prompt_len = inputs["input_ids"].shape[1]
    for b in range(inputs["input_ids"].shape[0]):
        gen = out.sequences[b, prompt_len:]
        replay = adapter.replay_inputs(inputs, b, gen[:-1])
        with torch.no_grad():
            logits = model(**replay, use_cache=False).logits[0]  # (N, V)
        s = replay["input_ids"].shape[1] - gen.numel() + 1  # the prompt's length
        got = logits[s - 1 : s - 1 + gen.numel()]
        err = float((got.float() - steps[b].float()).abs().max())
        assert err <= atol * max(1.0, float(steps[b].abs().max())), f"row {b}: replay logits differ by {err}"


def naive_relevancy_rows(model, prompt: dict, gen: torch.Tensor, adapter=None) -> list[torch.Tensor]:
    """Chefer's recipe literally, for one unpadded row (``prompt`` from :meth:`VLMAdapter.row_inputs`):
    per token, forward its prefix, backward its logit, R <- R + Ā R with full matrices (float64)."""
    from fastrm_core.adapters import get_adapter

    adapter = adapter or get_adapter(model)
    rows = []
    cfg = adapter.text_config
    old = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        for t in range(gen.numel()):
            inputs = adapter.extend_inputs(prompt, gen[:t]) if t else prompt
            with torch.enable_grad():
                out = model(**inputs, output_attentions=True, use_cache=False)
                y = out.logits[0, -1, gen[t]]
                attns = out.attentions
                grads = torch.autograd.grad(y, attns)
            n = inputs["input_ids"].shape[1]
            r = torch.eye(n, dtype=torch.float64)
            for a, g in zip(attns, grads):
                a_bar = (g.detach().double() * a.detach().double()).clamp_min(0).mean(dim=1)[0]
                r = r + a_bar @ r
            rows.append(r[-1])
    finally:
        cfg._attn_implementation = old
    return rows


def check_gradient_maps(model, inputs: dict, n: int = 4, adapter=None, rtol: float = 1e-5) -> None:
    """For every row of ``inputs``: the exact gradient maps equal :func:`naive_relevancy_rows` to
    ``rtol`` of the map's maximum, the maps of a batch equal those of the row run alone, and the
    model is left as found."""
    from fastrm_core.adapters import get_adapter
    from fastrm_core.relevancy import gradient_relevancy, gradient_relevancy_batch

    adapter = adapter or get_adapter(model)
    out = greedy(model, inputs, n, adapter)
    before = model_snapshot(model)  # after generate, which caches state of its own (Qwen's rope_deltas)
    prompt_len = inputs["input_ids"].shape[1]
    batch = gradient_relevancy_batch(model, inputs, out, adapter=adapter)
    assert model_snapshot(model) == before, "gradient_relevancy changed the model"
    for b, rel in enumerate(batch):
        prompt = adapter.row_inputs(inputs, b)
        gen = out[b, prompt_len:]
        ref = naive_relevancy_rows(model, prompt, gen, adapter)
        pos = rel.image_positions
        for t in range(gen.numel()):
            want = ref[t][pos].float()
            scale = float(want.abs().max()) or 1.0
            err = float((rel.flat_maps[t] - want).abs().max())
            assert err <= rtol * scale, f"row {b} token {t}: gradient map differs from the naive one by {err / scale:.2e} of its max"
        alone_inputs = {k: v for k, v in prompt.items()}
        alone = gradient_relevancy(model, alone_inputs, gen[None], adapter=adapter)
        torch.testing.assert_close(alone.flat_maps, rel.flat_maps, rtol=1e-4, atol=1e-6 * float(rel.flat_maps.abs().max()))

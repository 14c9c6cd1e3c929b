"""Tiny, randomly initialised models of every supported family, built offline (tests, docs examples).

Each builder returns a :class:`TinyVLM`: the model (eval mode) and a ``make_inputs`` callable that
turns prompts with images into the inputs ``generate`` takes, exactly as the family's processor
would. Where the processor can be built without optional packages it is used (with a word-level
tokenizer that knows the family's special tokens; OneVision's and InternVL's without their video
processor). Mistral3's and Pixtral's processor needs torchvision, so their inputs are built by
hand in the processor's own layout (``[IMG]`` rows ended by ``[IMG_BREAK]``, the last by
``[IMG_END]``); SmolVLM's needs num2words, so the Idefics3 processor (the same layout) makes
SmolVLM's inputs and ``processor`` is None for these three.

    >>> tiny = build_tiny("llava_next")
    >>> inputs = tiny.make_inputs([("<image> what color ?", [tiny.image((40, 20))])])
    >>> out = tiny.model.generate(**inputs, max_new_tokens=3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

__all__ = ["FAMILIES", "TinyVLM", "build_tiny", "word_tokenizer"]

_WORDS = (
    "user assistant what color shape is the there a an of left right above below how many circle square "
    "red green blue yes no one two three image picture answer question describe"
).split()

_PUNCT = ["?", ".", ",", ":", "!"]


def word_tokenizer(specials: Sequence[str] = (), *, bos: str = "<s>", eos: str = "</s>", pad: str = "<pad>",
                   named: dict[str, str] | None = None, words: Sequence[str] = _WORDS):
    """A lower-casing word-level fast tokenizer with the family's special tokens.

    ``specials`` are added as special tokens (never split, kept by the pre-tokenizer); ``named``
    maps attribute names (``image_token``, ``boi_token`` ...) to tokens so processors that read
    ``tokenizer.image_token`` find them.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = [pad, "<unk>", bos, eos]
    extra = [s for s in dict.fromkeys([*specials, *(named or {}).values()]) if s not in base]
    vocab_words = [*_PUNCT, *sorted({w.lower() for w in words})]
    vocab = {tok: i for i, tok in enumerate(base + extra + vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in base + extra])
    tok.add_tokens([AddedToken("\n", normalized=False, special=False)])  # newlines are tokens, as in real vocabularies
    kwargs = {"extra_special_tokens": dict(named)} if named else {}
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                 unk_token="<unk>", **kwargs)
    return hf


@dataclass
class TinyVLM:
    """A tiny model of one family and how to make its inputs.

    ``make_inputs(rows, padding_side="left")`` takes ``[(text, [images...]), ...]`` where the text
    holds the family's image placeholder (``image_placeholder``) once per image, and returns the
    model inputs (tensors) of the batch.
    """

    family: str
    model: torch.nn.Module
    make_inputs: Callable
    processor: object | None = None
    image_placeholder: str = "<image>"
    tile: int = 32
    images_first: bool = False  # PaliGemma's prefix form: the image tokens, then the prompt
    extra: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        """The tokenizer (the processor's, or the one the hand-built inputs use)."""
        return self.processor.tokenizer if self.processor is not None else self.extra["tokenizer"]

    def image(self, size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
        """A plain RGB image of ``size`` (width, height) with a lighter quadrant, so pixels are not all equal."""
        img = Image.new("RGB", size, color)
        img.paste((240, 240, 240), (0, 0, max(1, size[0] // 2), max(1, size[1] // 2)))
        return img

    def two_rows(self, question: str = "what color is the circle ?") -> list:
        """A batch of two prompts: one wide image; then two images of different sizes (square, tall)."""
        p, t = self.image_placeholder, self.tile
        if self.images_first:
            return [(f"{p} {question}", [self.image((2 * t, t))]),
                    (f"{p}{p} left right how many ?", [self.image((t, t), (30, 200, 30)),
                                                       self.image((t, 2 * t), (30, 30, 200))])]
        return [
            (f"user {p} {question} assistant :", [self.image((2 * t, t))]),
            (f"user {p} left {p} right how many ? assistant :",
             [self.image((t, t), (30, 200, 30)), self.image((t, 2 * t), (30, 30, 200))]),
        ]


def chat_template(image: str, end: str) -> str:
    """A minimal chat template in the family's form: ``image`` per picture entry, ``end`` after each turn."""
    return (
        "{% for message in messages %}{{ message['role'] }} : {% if message['content'] is string %}"
        "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
        + image + " {% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} " + end
        + " {% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
    )


def _processor_inputs(processor, **fixed):
    def make(rows, padding_side="left"):
        texts = [t for t, _ in rows]
        images = [list(imgs) for _, imgs in rows]
        return dict(processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side=padding_side,
                              **fixed))

    return make


def _text_kwargs(tok, hidden: int, layers: int, heads: int = 4, kv: int = 2) -> dict:
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _finish(model, tok):
    model.eval()
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    return model


def _llava_next(hidden, layers, seed):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    tile, patch = 32, 8
    tok = word_tokenizer(["<image>"], named={"image_token": "<image>"})
    pins = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=tile, patch_size=patch, projection_dim=32)
    config = LlavaNextConfig(vision_config=vision, text_config=LlamaConfig(**_text_kwargs(tok, hidden, layers)),
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pins,
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = _finish(LlavaNextForConditionalGeneration(config), tok)
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                    image_grid_pinpoints=pins)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=chat_template("<image>", "</s>"))
    return TinyVLM("llava_next", model, _processor_inputs(proc), proc, tile=tile)


def _llava_onevision(hidden, layers, seed):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, Qwen2Config,
                              SiglipVisionConfig)

    tile, patch = 32, 8
    tok = word_tokenizer(["<image>", "<video>"], named={"image_token": "<image>", "video_token": "<video>"})
    # pinpoints up to 3x3 tiles with anyres_max_2: large images are shrunk (the interpolation path)
    pins = [[tile * a, tile * b] for a in (1, 2, 3) for b in (1, 2, 3)]
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=tile, patch_size=patch)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=Qwen2Config(**_text_kwargs(tok, hidden, layers)),
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pins,
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  vision_aspect_ratio="anyres_max_2")
    torch.manual_seed(seed)
    model = _finish(LlavaOnevisionForConditionalGeneration(config), tok)
    ip = LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile}, image_grid_pinpoints=pins)
    from fastrm_core.families.llava_onevision import images_only_processor

    proc = images_only_processor(ip, tok, chat_template("<image>", "</s>"), num_image_tokens=(tile // patch) ** 2,
                                 vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_2")
    return TinyVLM("llava_onevision", model, _processor_inputs(proc), proc, tile=tile)


def _gemma3(hidden, layers, seed):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    tile, patch, per_image = 48, 8, 9  # 6x6 patches pooled to a 3x3 grid
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = word_tokenizer(["<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", named=named)
    text = Gemma3TextConfig(**_text_kwargs(tok, hidden, layers), head_dim=16, query_pre_attn_scalar=16,
                            sliding_window=24, layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                            + ["sliding_attention"] * (layers % 2))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=tile, patch_size=patch)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=per_image,
                          boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
                          image_token_index=ids["image_token"])
    torch.manual_seed(seed)
    model = _finish(Gemma3ForConditionalGeneration(config), tok)
    ip = Gemma3ImageProcessorPil(size={"height": tile, "width": tile})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=per_image,
                           chat_template=chat_template("<start_of_image>", "<end_of_turn>"))
    return TinyVLM("gemma3", model, _processor_inputs(proc), proc, "<start_of_image>", tile=tile)


def _paligemma(hidden, layers, seed, *, v2: bool = False):
    from transformers import (Gemma2Config, GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessorPil, SiglipVisionConfig)

    tile, patch = 32, 8  # 4x4 image tokens
    tok = word_tokenizer([], bos="<bos>", eos="<eos>")
    ip = SiglipImageProcessorPil(size={"height": tile, "width": tile})
    ip.image_seq_length = (tile // patch) ** 2
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds <image> and the <loc>/<seg> tokens
    if v2:  # PaliGemma 2: a Gemma 2 text model, sliding-window layers (shorter than a prompt here) and soft-capping
        text = Gemma2Config(**_text_kwargs(tok, hidden, layers), head_dim=16, query_pre_attn_scalar=16,
                            sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    else:
        text = GemmaConfig(**_text_kwargs(tok, hidden, layers), head_dim=16)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=tile, patch_size=patch, projection_dim=hidden)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=proc.image_token_id,
                             vocab_size=len(tok), projection_dim=hidden, hidden_size=hidden)
    torch.manual_seed(seed)
    model = _finish(PaliGemmaForConditionalGeneration(config), tok)
    return TinyVLM("paligemma2" if v2 else "paligemma", model, _processor_inputs(proc), proc, "<image>", tile=tile,
                   images_first=True)


def _idefics3(hidden, layers, seed, *, smol: bool = False):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor, Idefics3VisionConfig, LlamaConfig, SmolVLMConfig,
                              SmolVLMForConditionalGeneration, SmolVLMVisionConfig)

    tile, patch, scale = 48, 8, 2  # 6x6 patches, pixel-shuffled to a 3x3 grid per tile
    tags = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = word_tokenizer(["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", *tags],
                         bos="<|im_start|>", eos="<end_of_utterance>")
    # SmolVLM: the same layout (its processor writes the same tags, but needs num2words and torchvision, so the
    # Idefics3 processor makes its inputs); its own vision and text classes
    vision = (SmolVLMVisionConfig if smol else Idefics3VisionConfig)(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=tile,
        patch_size=patch)
    config = (SmolVLMConfig if smol else Idefics3Config)(
        vision_config=vision, text_config=LlamaConfig(**_text_kwargs(tok, hidden, layers)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale)
    torch.manual_seed(seed)
    model = _finish((SmolVLMForConditionalGeneration if smol else Idefics3ForConditionalGeneration)(config), tok)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(tile // patch // scale) ** 2,
                             chat_template=chat_template("<image>", "<end_of_utterance>"))
    if smol:
        return TinyVLM("smolvlm", model, _processor_inputs(proc), None, "<image>", tile=tile,
                       extra={"tokenizer": tok})
    return TinyVLM("idefics3", model, _processor_inputs(proc), proc, "<image>", tile=tile)


def _mistral3(hidden, layers, seed, *, llava: bool = False):
    from transformers import (LlavaConfig, LlavaForConditionalGeneration, MistralConfig, Mistral3Config,
                              Mistral3ForConditionalGeneration, PixtralImageProcessorPil, PixtralVisionConfig)

    # Pixtral-12B is a LLaVA with a Pixtral tower and no patch merger: 16-pixel patches give the same grids
    patch, merge, longest = (16, 1, 64) if llava else (8, 2, 64)
    tok = word_tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"])
    img, brk, end = (tok.convert_tokens_to_ids(t) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]"))
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 head_dim=16, image_size=longest, patch_size=patch)
    text = MistralConfig(**_text_kwargs(tok, hidden, layers))
    if llava:
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=img, vision_feature_layer=-1,
                             vision_feature_select_strategy="full")
    else:
        config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=img,
                                spatial_merge_size=merge, vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = _finish((LlavaForConditionalGeneration if llava else Mistral3ForConditionalGeneration)(config), tok)
    ip = PixtralImageProcessorPil(size={"longest_edge": longest}, patch_size=patch * merge)

    def make(rows, padding_side="left"):
        # PixtralProcessor needs torchvision: its layout, by hand. One [IMG] per merged patch, each row of the
        # grid ended by [IMG_BREAK], the last by [IMG_END].
        images = [im for _, imgs in rows for im in imgs]
        pix = ip(images=images, return_tensors="pt")
        sizes = pix["image_sizes"].tolist()
        k, ids_rows = 0, []
        for text, imgs in rows:
            ids = []
            for piece_i, piece in enumerate(text.split("[IMG]")):
                if piece_i:
                    h, w = (v // (patch * merge) for v in sizes[k])
                    grid = ([img] * w + [brk]) * h
                    grid[-1] = end
                    ids += grid
                    k += 1
                ids += tok(piece, add_special_tokens=False)["input_ids"]
            ids_rows.append([tok.bos_token_id, *ids])
        width = max(map(len, ids_rows))
        input_ids = torch.full((len(rows), width), tok.pad_token_id)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, ids in enumerate(ids_rows):
            sl = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
            input_ids[b, sl], mask[b, sl] = torch.tensor(ids), 1
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pix["pixel_values"],
                "image_sizes": pix["image_sizes"]}

    return TinyVLM("pixtral" if llava else "mistral3", model, make, None, "[IMG]", tile=longest,
                   extra={"tokenizer": tok})


def _internvl(hidden, layers, seed):
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLVisionConfig, Qwen2Config)

    from fastrm_core.families.internvl import images_only_processor

    tile, patch = 32, 8  # 4x4 patches, pixel-shuffled (0.5) to a 2x2 grid per tile
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = word_tokenizer(["<|im_start|>", "<|im_end|>"], named=named)
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=tile, patch_size=patch)
    config = InternVLConfig(vision_config=vision, text_config=Qwen2Config(**_text_kwargs(tok, hidden, layers)),
                            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4,
                            downsample_ratio=0.5)
    torch.manual_seed(seed)
    model = _finish(InternVLForConditionalGeneration(config), tok)
    ip = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1,
                                  max_patches=6)
    proc = images_only_processor(ip, tok, chat_template("<IMG_CONTEXT>", "<|im_end|>"), image_seq_length=4)
    return TinyVLM("internvl", model, _processor_inputs(proc), proc, "<IMG_CONTEXT>", tile=tile)


FAMILIES: dict[str, Callable] = {
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "gemma3": _gemma3,
    "paligemma": _paligemma,
    "paligemma2": lambda hidden, layers, seed: _paligemma(hidden, layers, seed, v2=True),
    "idefics3": _idefics3,
    "mistral3": _mistral3,
    "smolvlm": lambda hidden, layers, seed: _idefics3(hidden, layers, seed, smol=True),
    "internvl": _internvl,
    "pixtral": lambda hidden, layers, seed: _mistral3(hidden, layers, seed, llava=True),
}


def build_tiny(family: str, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> TinyVLM:
    """Build the tiny model of ``family`` (one of :data:`FAMILIES`), randomly initialised with ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](hidden_size, num_layers, seed)

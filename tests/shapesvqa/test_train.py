"""The trainer is deterministic from its seed, resumable, and writes a loadable model folder."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from shapesvqa.train import TrainConfig, train

TINY = dict(steps=2, batch=2, vision_steps=1, vision_batch=2, text_hidden=32, text_heads=2,
            text_intermediate=64, text_layers=2, answer_attn_layers="1", keyword_attn_layers="0")


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_deterministic_and_resumable(tmp_path):
    cfg = TrainConfig(**TINY)
    a = train(tmp_path / "a", cfg, eval_every=0)
    b = train(tmp_path / "b", cfg, eval_every=0)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a finished run re-run with the same command resumes at its end and changes nothing
    again = train(tmp_path / "a", cfg, eval_every=0)
    assert all(torch.equal(wa[k], _weights(again)[k]) for k in wa)

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(a)
    assert next(model.parameters()).dtype == torch.float32  # bf16 on disk, float32 in memory
    AutoProcessor.from_pretrained(a)

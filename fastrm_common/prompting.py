"""How a question becomes a prompt: one function, shared by the Guard, calibration and distillation.

The processor's chat template is used when it has one (LLaVA-1.5 checkpoints and the ShapesVQA
reference model do), else LLaVA-1.5's ``"USER: <image>\\n{question} ASSISTANT:"``. A proxy and a
calibration are only valid for the prompt format they were fitted with, so every path builds
prompts here.
"""

from __future__ import annotations

__all__ = ["PLAIN_TEMPLATE", "build_prompt"]

PLAIN_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


def build_prompt(processor, question: str, suffix: str | None = None, n_images: int = 1) -> tuple[str, str]:
    """``(prompt, template_kind)`` for ``n_images`` images (default one) followed by one question.

    ``template_kind`` is ``"chat"`` when the processor's chat template was used, ``"plain"`` for
    the LLaVA-1.5 fallback (recorded in dataset manifests so a dataset says how it was prompted).
    """
    text = question.strip() if not suffix else f"{question.strip()} {suffix.strip()}"
    template = getattr(processor, "chat_template", None)
    if template:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), "chat"
    return PLAIN_TEMPLATE.replace("<image>", "<image>" * n_images).format(question=text), "plain"

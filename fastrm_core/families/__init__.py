"""Built-in model families, LLaVA-1.5 included (:mod:`fastrm_core.families.llava`).

One module per family; each defines a :class:`~fastrm_core.adapters.VLMAdapter` subclass and
registers it with :func:`~fastrm_core.adapters.register_adapter` at import. The registry imports
every module of :data:`BUILTIN` on its first look-up, so adding a family is one module plus one
line here.
"""

BUILTIN: tuple[str, ...] = (
    "fastrm_core.families.llava",
    "fastrm_core.families.qwen2_vl",
    "fastrm_core.families.llava_next",
    "fastrm_core.families.llava_onevision",
    "fastrm_core.families.gemma3",
    "fastrm_core.families.paligemma",
    "fastrm_core.families.idefics3",
    "fastrm_core.families.mistral3",
    "fastrm_core.families.internvl",
)

"""``guardrail serve``: a guarded, OpenAI-compatible chat endpoint (the ``serve`` extra: FastAPI + uvicorn).

    >>> from guardrail import Guard
    >>> from guardrail.serve import ServeConfig, create_app, run
    >>> app = create_app(Guard.from_pretrained("reference"), config=ServeConfig(max_batch_size=16))
    >>> run(app, host="127.0.0.1", port=8000)

Any OpenAI client then talks to ``http://127.0.0.1:8000/v1``; see docs/serve.md.
"""

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("guardrail.serve needs the serve extra: pip install 'fastrm-guard[serve]'") from exc

from guardrail.serve.app import create_app
from guardrail.serve.batching import Batcher, QueueFull
from guardrail.serve.config import ServeConfig
from guardrail.serve.server import LoopbackServer, run

__all__ = [
    "Batcher",
    "LoopbackServer",
    "QueueFull",
    "ServeConfig",
    "create_app",
    "run",
]

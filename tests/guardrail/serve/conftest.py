"""A server on 127.0.0.1 in front of the shipped reference Guard, and helpers for the tests that talk to it."""

import base64
import io
import threading

import pytest

pytest.importorskip("fastapi")

from guardrail import Guard
from shapesvqa.world import generate


@pytest.fixture(scope="session")
def reference_guard():
    return Guard.from_pretrained("reference")


@pytest.fixture(scope="session")
def scenes():
    """Ten ShapesVQA questions of every family: (PIL image, question)."""
    return [(ex.image, ex.question) for ex in generate(10, seed=7)]


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user_message(image, question):
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                         {"type": "image_url", "image_url": {"url": data_url(image)}}]}]


class CountingGuard:
    """The real Guard, with its generate_batch calls recorded and optionally held at a gate."""

    def __init__(self, guard, gate: threading.Event | None = None):
        self._guard = guard
        self.gate = gate
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()

    def generate_batch(self, items, **kwargs):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        self.batch_sizes.append(len(items))
        return self._guard.generate_batch(items, **kwargs)

    def __getattr__(self, name):
        return getattr(self._guard, name)

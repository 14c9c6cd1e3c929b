"""The Ray Serve path: two CPU replicas on a local Ray cluster behind one HTTP endpoint answer like one Guard."""

import socket
import time

import pytest

pytestmark = pytest.mark.slow  # a local Ray cluster with two replicas (make test-fast skips the module)
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from guardrail.serve import ServeConfig
from guardrail.serve.ray_app import build_ray_app

from .conftest import user_message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_replicas_answer_like_the_single_process_guard(reference_guard, scenes):
    expected = [reference_guard.generate(i, q) for i, q in scenes]
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_ray_app("reference", {}, ServeConfig(max_batch_size=4), replicas=2, threads=1,
                                use_gpus=False), name="guardrail", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        seen = set()
        deadline = time.monotonic() + 60
        rounds = 0
        while (len(seen) < 2 or rounds < 1) and time.monotonic() < deadline:
            rounds += 1
            for (image, question), want in zip(scenes, expected):
                raw = client.chat.completions.with_raw_response.create(model="reference-llava",
                                                                       messages=user_message(image, question))
                seen.add(raw.headers["x-guardrail-instance"])
                r = raw.parse()
                g = r.model_extra["guardrail"]
                assert r.choices[0].message.content == want.text and g["token_ids"] == want.token_ids
                assert (g["verdict"], g["action"]) == (want.verdict, want.action)
        assert len(seen) == 2, f"answers came from {seen}"
    finally:
        serve.shutdown()
        ray.shutdown()

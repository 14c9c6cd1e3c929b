"""One error contract (issue #18): public entry points raise only documented GuardrailError subclasses.

A property test over the Guard's public calls with generated bad (and some valid) inputs, an
in-process CLI property (one line, exit code 0/1/2, never a traceback), and bounded fuzz tests
of the three loaders of untrusted-looking files: policy YAML, calibration JSON, proxy config.
Hypothesis runs derandomized (the same examples on every run) with fixed example budgets, so
CI is reproducible and bounded: about a minute in all on a quiet 2-core machine. The whole module is
``slow`` (make test-fast does not even import it, nor Hypothesis); the CLI's plain usage/input-error
exit codes are checked in test_cli.py.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from calibration import Calibration
from fastrm_core import FastRMProxy, ProxyConfig
from fastrm_common.errors import (
    CalibrationError,
    ConfigMismatchError,
    DataError,
    GuardrailError,
    InputError,
    PolicyError,
)
from guardrail import Guard, GuardResult
from guardrail.cli.main import main as guardrail_main
from policies import Policy, parse_policy
from policies.bundled import __file__ as _bundled_init

pytestmark = pytest.mark.slow  # Hypothesis runs (make test-fast skips the whole module)

CONTRACT = settings(
    derandomize=True,
    deadline=None,  # a shared CI machine: time is bounded by max_examples instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)
BUNDLED = sorted(Path(_bundled_init).parent.glob("*.yaml"))
DOCUMENTED = (GuardrailError,)


# ---------------------------------------------------------------- the Guard's public calls

_bad_images = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.builds(lambda h, w, c: np.zeros((h, w, c), np.uint8), st.integers(0, 40), st.integers(0, 40), st.integers(1, 5)),
    st.builds(lambda h, w: np.random.default_rng(0).random((h, w, 3)), st.integers(1, 40), st.integers(1, 40)),
    st.builds(lambda n: np.zeros((n,), np.uint8), st.integers(0, 10)),
    st.just(np.zeros((32, 32, 3), np.uint8)),  # a valid image, so bad questions/arguments are reached
)
_questions = st.one_of(st.none(), st.integers(), st.just(""), st.just("   "), st.text(max_size=40),
                       st.just("what " * 5000), st.just("What color?"))
_tags = st.one_of(st.just(()), st.text(max_size=10), st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
                  st.integers(), st.none())
_gen_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=5))
_gen_kwargs = st.dictionaries(
    st.sampled_from(["max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "do_sample", "num_beams",
                     "streamer", "max_length", "no_such_argument", "repetition_penalty"]),
    _gen_values, max_size=3,
)


@pytest.fixture(scope="module")
def contract_guard(tiny_llava, tiny_proxy, calibration_uncertain):
    return Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain)


@settings(CONTRACT, max_examples=120)
@given(image=_bad_images, question=_questions, tags=_tags, kwargs=_gen_kwargs, call=st.sampled_from(["generate", "stream", "batch"]))
def test_guard_calls_raise_only_documented_errors(contract_guard, image, question, tags, kwargs, call):
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("max_new_tokens"), int) and not isinstance(kwargs["max_new_tokens"], bool):
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], 2)  # valid combinations stay cheap
    elif "max_new_tokens" not in kwargs:
        kwargs["max_new_tokens"] = 2
    try:
        if call == "generate":
            out = contract_guard.generate(image, question, tags=tags, **kwargs)
            assert isinstance(out, GuardResult)
        elif call == "stream":
            events = list(contract_guard.stream(image, question, tags=tags, **kwargs))
            assert isinstance(events[-1], GuardResult)
        else:
            out = contract_guard.generate_batch([(image, question), (image, question)], tags=tags, **kwargs)
            assert all(isinstance(r, GuardResult) for r in out)
    except DOCUMENTED:
        pass


@settings(CONTRACT, max_examples=30)
@given(items=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                       st.lists(st.tuples(st.integers()), min_size=1, max_size=2)))
def test_generate_batch_rejects_malformed_items_with_input_error(contract_guard, items):
    if items == []:
        assert contract_guard.generate_batch(items) == []
        return
    with pytest.raises(InputError):
        contract_guard.generate_batch(items)


# ---------------------------------------------------------------- the CLI: one line, exit code, no traceback

@settings(CONTRACT, max_examples=40)
@given(content=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       command=st.sampled_from(["policy check", "view"]))
def test_cli_bad_files_give_an_exit_code_not_a_traceback(tmp_path_factory, content, command):
    path = tmp_path_factory.mktemp("cli") / "input.yaml"
    path.write_text(content, encoding="latin-1", errors="replace")
    buf = io.StringIO()
    code = guardrail_main([*command.split(), str(path)], console=Console(file=buf, width=200, color_system=None))
    assert code in (0, 1, 2)
    assert "Traceback" not in buf.getvalue()


# ---------------------------------------------------------------- fuzzing the loaders

_YAML_SNIPPETS = ["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "\n  ", ".nan", ".inf", "!!python/object:os.system ",
                  "<<: *a", "9" * 50, "'", '"', "\t", "~", "? ", "|", "\x00", "\xe9", "&b [*a, *a, *a]"]


def _mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, cut, insert in edits:
        pos %= max(len(text), 1)
        text = text[:pos] + insert + text[pos + cut:]
    return text


_edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 8),
                            st.one_of(st.sampled_from(_YAML_SNIPPETS), st.text(max_size=6))), min_size=1, max_size=6)


@settings(CONTRACT, max_examples=400)
@given(which=st.sampled_from(range(len(BUNDLED))), edits=_edits)
def test_fuzz_policy_loader(which, edits):
    text = _mutate(BUNDLED[which].read_text(encoding="utf-8"), edits)
    try:
        assert isinstance(parse_policy(text, source="fuzz.yaml"), Policy)
    except PolicyError as exc:
        assert str(exc).startswith("fuzz.yaml")


_JSON_SNIPPETS = ["null", "true", "1e308", "-1e308", '"0.5"', "[", "]", "{", "}", ",", ":", '"threshold": 0,',
                  "9" * 5000, "[" * 3000, "\xe9", "NaN", "Infinity", '"x": 1,', '"schema_version": 9,']


@pytest.fixture(scope="module")
def calibration_text():
    from shapesvqa.assets import reference_calibration_path

    return reference_calibration_path().read_text(encoding="utf-8")


@settings(CONTRACT, max_examples=200)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 12),
                                st.one_of(st.sampled_from(_JSON_SNIPPETS), st.text(max_size=6))), min_size=1, max_size=5),
       encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_fuzz_calibration_loader(tmp_path_factory, calibration_text, edits, encoding):
    path = tmp_path_factory.mktemp("cal") / "calibration.json"
    path.write_bytes(_mutate(calibration_text, edits).encode(encoding, errors="replace"))
    try:
        assert isinstance(Calibration.load(path), Calibration)
    except CalibrationError as exc:
        assert "calibration" in str(exc)


@pytest.fixture(scope="module")
def proxy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("proxy")
    FastRMProxy(ProxyConfig(hidden_size=16, n_image_tokens=4, grid=(2, 2), head_dim=8)).save_pretrained(folder)
    return folder


_PROXY_FIELDS = ["hidden_size", "head_dim", "n_image_tokens", "grid", "label_threshold", "classification_threshold",
                 "layer_norm_eps", "format", "training", "adapter", "unknown_field"]
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


@settings(CONTRACT, max_examples=150)
@given(changes=st.dictionaries(st.sampled_from(_PROXY_FIELDS), _json_values, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(_PROXY_FIELDS), max_size=2))
def test_fuzz_proxy_config_loader(tmp_path_factory, proxy_folder, changes, drop):
    folder = tmp_path_factory.mktemp("p")
    shutil.copy(proxy_folder / "model.safetensors", folder / "model.safetensors")
    config = json.loads((proxy_folder / "config.json").read_text())
    for key in drop:
        config.pop(key, None)
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    try:
        assert isinstance(FastRMProxy.from_pretrained(folder), FastRMProxy)
    except (DataError, ConfigMismatchError):
        pass

"""The dataset builder: contents, bad records, atomic shards, resume after a kill."""

import os
import subprocess
import sys

import pytest
import torch

from fastrm_common.tokens import content_token_mask, eos_token_ids

from fastrm_core.adapters import get_adapter
from fastrm_core.capturing import capture
from fastrm_core.distill.dataset import (
    BuildSettings,
    iter_records,
    load_manifest,
    read_shard,
    save_manifest,
)
from fastrm_core.distill.runner import build_dataset
from fastrm_core.distill.generation import build_prompt, greedy_kwargs, load_image, prepare_inputs
from fastrm_common.errors import ConfigMismatchError, InputError
from fastrm_core.relevancy import gradient_relevancy

N_GOOD = 6  # as in conftest.py
SETTINGS = dict(max_new_tokens=3, records_per_shard=2)


def test_manifest_records_inputs_and_skipped_records(distill_world):
    m = load_manifest(distill_world["dataset"])
    assert m.complete and m.format == "fastrm-distill/1"
    assert m.n_input_records == N_GOOD + 2 and m.n_shards == 4  # 8 valid lines, 2 per shard
    assert m.n_records == N_GOOD and m.n_tokens == N_GOOD * SETTINGS["max_new_tokens"]
    assert m.model == str(distill_world["model_dir"]) and m.adapter == "llava"
    assert m.hidden_size == 64 and m.grid == (4, 4) and m.n_image_tokens == 16
    assert m.label_threshold == 0.3 and m.settings["max_new_tokens"] == 3 and m.prompt_template == "plain"
    from fastrm_common.records import dataset_hash

    assert m.data_hash == dataset_hash(distill_world["data"])
    assert m.library_version and m.versions["torch"] == torch.__version__
    reasons = {(s.id or f"line {s.line}"): s.reason for s in m.skipped}
    assert set(reasons) == {"missing", "broken", "line 9"}
    assert "image not found" in reasons["missing"] and "unreadable image" in reasons["broken"]
    assert "invalid JSON" in reasons["line 9"]
    assert [s.records for s in m.shards] == [["q0", "q1"], ["q2"], ["q3"], ["q4", "q5"]]
    assert [k.id for k in m.shards[1].skipped] == ["missing"]
    assert all((distill_world["dataset"] / s.file).is_file() for s in m.shards)
    assert not list(distill_world["dataset"].glob(".*tmp*"))  # no temporary file left behind


def test_shard_tensors_are_the_exact_maps_and_captured_states(distill_world, distill_model):
    model, processor = distill_model
    adapter = get_adapter(model)
    m = load_manifest(distill_world["dataset"])
    tensors, records = read_shard(distill_world["dataset"] / m.shards[0].file)
    assert [r["id"] for r in records] == ["q0", "q1"]
    assert tensors["token_offsets"].tolist() == [0, 3, 6]
    assert tensors["image_states"].shape == (2, 16, 64) and tensors["token_states"].shape == (6, 64)
    assert tensors["maps"].shape == (6, 16) and tensors["maps"].dtype == torch.float32
    # recompute record q1 by hand
    prompt, _ = build_prompt(processor, "how many objects?")
    inputs = prepare_inputs(model, processor, load_image(distill_world["root"] / "images" / "1.png"), prompt)
    with torch.no_grad(), capture(model, keep_states=True) as cap:
        out = model.generate(**inputs, **greedy_kwargs(adapter, 3))
    rel = gradient_relevancy(model, inputs, out)
    torch.testing.assert_close(tensors["maps"][3:6], rel.maps.reshape(3, 16))
    torch.testing.assert_close(tensors["token_states"][3:6], cap.queries[0])
    torch.testing.assert_close(tensors["image_states"][1], cap.image_states[0])
    assert tensors["token_ids"][3:6].tolist() == rel.token_ids.tolist()
    assert records[1]["answer"] == processor.tokenizer.decode(rel.token_ids, skip_special_tokens=True).strip()
    tok = processor.tokenizer
    expected = content_token_mask(tensors["token_ids"], tok, extra_excluded_ids=eos_token_ids(model, tok))
    assert tensors["content"].dtype == torch.bool and tensors["content"].tolist() == expected.tolist()


def test_prompt_uses_the_chat_template_when_present(distill_model):
    _, processor = distill_model
    assert build_prompt(processor, "what?", "Answer briefly.") == ("USER: <image>\nwhat? Answer briefly. ASSISTANT:", "plain")

    class WithTemplate:
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return "chat:" + messages[0]["content"][1]["text"]

    assert build_prompt(WithTemplate(), "what?") == ("chat:what?", "chat")


def test_empty_answer_is_skipped_with_its_reason(distill_world, distill_model, tmp_path):
    model, processor = distill_model
    head = model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.zero_()  # every logit 0: greedy picks token 0, <pad>, which decodes to ""
        manifest = build_dataset(distill_world["data"], tmp_path / "ds", model=model, processor=processor,
                                 settings=BuildSettings(**SETTINGS))
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert manifest.complete and manifest.n_records == 0 and manifest.n_tokens == 0
    empty = [s for s in manifest.skipped if s.id and s.id.startswith("q")]
    assert len(empty) == N_GOOD and all(s.reason.startswith("empty answer") for s in empty)
    assert all(s.file is None for s in manifest.shards)


def test_settings_are_validated_and_a_resume_must_match(distill_world, distill_model, tmp_path):
    with pytest.raises(InputError, match="records_per_shard"):
        BuildSettings(records_per_shard=0)
    with pytest.raises(InputError, match="unknown states_dtype 'fp8'"):
        BuildSettings(states_dtype="fp8")
    model, processor = distill_model
    out = tmp_path / "ds"
    build_dataset(distill_world["data"], out, model=model, processor=processor,
                  settings=BuildSettings(max_new_tokens=1, records_per_shard=8))
    with pytest.raises(ConfigMismatchError, match="use a new --out folder or --overwrite"):
        build_dataset(distill_world["data"], out, model=model, processor=processor,
                      settings=BuildSettings(max_new_tokens=2, records_per_shard=8))
    m = build_dataset(distill_world["data"], out, model=model, processor=processor,
                      settings=BuildSettings(max_new_tokens=2, records_per_shard=8), overwrite=True)
    assert m.n_tokens == 2 * N_GOOD


def test_a_shard_written_but_not_yet_in_the_manifest_is_redone(distill_world, distill_model, tmp_path,
                                                              assert_same_dataset):
    model, processor = distill_model
    out = tmp_path / "ds"
    build_dataset(distill_world["data"], out, model=model, processor=processor, settings=BuildSettings(**SETTINGS))
    m = load_manifest(out)
    m.shards = m.shards[:2]  # as if killed between the rename of shard 2 and the manifest update
    save_manifest(out, m)
    assert not load_manifest(out).complete
    seen = []
    final = build_dataset(distill_world["data"], out, model=model, processor=processor,
                          settings=BuildSettings(**SETTINGS), on_record=lambda rid, n: seen.append(rid))
    assert seen == ["q3", "broken", "q4", "q5"] and final.complete
    assert_same_dataset(out, distill_world["dataset"])


_RUN = """
import sys, torch
torch.set_num_threads(1)
from fastrm_core.cli import main
code = main(sys.argv[1:])
assert "ray" not in sys.modules, "a local run imported ray"
sys.exit(code)
"""

# The same run, killed by os._exit (no cleanup, no finally) once 5 records are done: inside shard 2.
_KILLED_RUN = """
import os, sys, torch
torch.set_num_threads(1)
from fastrm_core.distill import runner
from fastrm_core.cli import main
build = runner.build_dataset
done = []

def kill_after_five(record_id, n_tokens):
    done.append(record_id)
    if len(done) == 5:
        os._exit(17)

runner.build_dataset = lambda *a, **kw: build(*a, **{**kw, "on_record": kill_after_five})
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # two subprocesses, each loading torch and the model
def test_resume_after_a_kill_gives_the_records_of_an_uninterrupted_run(distill_world, tmp_path, assert_same_dataset):
    out = tmp_path / "ds"
    args = ["distill", "build", "--data", str(distill_world["data"]), "--out", str(out),
            "--model", str(distill_world["model_dir"]), "--max-new-tokens", "3", "--records-per-shard", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == 17, killed.stderr[-2000:]  # killed after 5 records, inside shard 2
    m = load_manifest(out)
    assert not m.complete and [s.index for s in m.shards] == [0, 1]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    resumed = subprocess.run([sys.executable, "-c", _RUN, *args], env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = load_manifest(out)
    ref = load_manifest(distill_world["dataset"])
    assert final.complete and final.n_records == ref.n_records and final.n_tokens == ref.n_tokens
    assert [s.records for s in final.shards] == [s.records for s in ref.shards]
    assert [[k.id for k in s.skipped] for s in final.shards] == [[k.id for k in s.skipped] for s in ref.shards]
    assert_same_dataset(out, distill_world["dataset"])
    ids = [meta["id"] for meta, _ in iter_records(out)]
    assert ids == [f"q{i}" for i in range(N_GOOD)]  # none lost, none twice

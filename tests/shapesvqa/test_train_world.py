"""The trainer's world option: batches from the hallucination world, its rates overridable, old
checkpoints still resumable, and the POPE monitor in the log."""

from __future__ import annotations

import json

import pytest
import torch

from shapesvqa.train import Batcher, TrainConfig, pope_quick, train, train_examples
from shapesvqa.world import world_config

TINY = dict(steps=2, batch=2, vision_steps=1, vision_batch=2, text_hidden=32, text_heads=2,
            text_intermediate=64, text_layers=2, answer_attn_layers="1", keyword_attn_layers="0")


def test_train_batches_come_from_the_chosen_world():
    cfg = TrainConfig(world="cooccur", batch=64)
    exs = [ex for step in range(3000, 3003) for ex in train_examples(step, cfg)]
    assert all(ex.world == json.loads(json.dumps(ex.world)) and ex.world["bias_rate"] == 0.55 for ex in exs)
    assert any(ex.biased for ex in exs)
    truthful = TrainConfig(world="cooccur", world_bias_rate=0.0, batch=64)
    assert truthful.world_config((1, 6)) == world_config("cooccur", n_objects=(1, 6), bias_rate=0.0)
    assert not any(ex.biased for step in range(3000, 3003) for ex in train_examples(step, truthful))
    some = TrainConfig(world="cooccur-confident", world_bias_partners="blue square, yellow cross")
    assert some.world_config((1, 6)).bias_partners == ("blue square", "yellow cross")
    assert TrainConfig(world="cooccur-confident", world_bias_partners="all").world_config((1, 6)).bias_partners == ()
    # the default run's batches carry no world record (they are the shipped model's data)
    assert all(ex.world is None for ex in train_examples(0, TrainConfig()))


@pytest.mark.slow
def test_cooccur_run_logs_pope_and_an_old_checkpoint_resumes(tmp_path, monkeypatch):
    import shapesvqa.train as tr

    # The monitor's own figures are tested elsewhere; here, only that a cooccur run logs POPE.
    monkeypatch.setattr(tr, "evaluate_quick", lambda model, batcher: {"attribute": 0.0})
    real = tr.pope_quick
    monkeypatch.setattr(tr, "pope_quick", lambda model, batcher, world: real(model, batcher, world, n_scenes=3,
                                                                              stats_scenes=20))
    cfg = TrainConfig(world="cooccur", **TINY)
    run = tmp_path / "run"
    train(run, cfg, eval_every=2)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"pope_adv", "pope_ran", "pope_pop", "pope_adv_yes"} <= set(log[-1])
    # A checkpoint written before the world fields existed resumes as a default-world run.
    old = TrainConfig(**TINY)
    train(tmp_path / "old", old, eval_every=0)
    state = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    for k in ("world", "world_bias_rate", "world_bias_partners", "init_from"):
        state["config"].pop(k)
    torch.save(state, tmp_path / "old" / "checkpoint.pt")
    train(tmp_path / "old", old, eval_every=0)  # resumes at its end without complaint
    with pytest.raises(SystemExit, match="another config"):
        train(tmp_path / "old", cfg, eval_every=0)


@pytest.mark.slow
def test_pope_quick_reports_every_sampling():
    from shapesvqa.model import build_model, build_tokenizer

    cfg = TrainConfig(**TINY)
    tok = build_tokenizer()
    model = build_model(tok, cfg.spec(), seed=0)
    res = pope_quick(model, Batcher(tok, cfg.spec()), world_config("cooccur"), n_scenes=4)
    assert set(res) == {f"pope_{s}{x}" for s in ("ran", "pop", "adv") for x in ("", "_yes")}
    assert all(0.0 <= v <= 1.0 for v in res.values())
    assert model.training  # left as it was found

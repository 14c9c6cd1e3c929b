"""The trainer: loss goes down, deterministic, best checkpoint, a loadable proxy that says where it came from."""

import json

import numpy as np
import pytest
import torch

from fastrm_core.distill.dataset import load_manifest
from fastrm_core.distill.metrics import binarize_maps
from fastrm_core.distill.trainer import PairStore, TrainConfig, split_records, train_proxy
from fastrm_common.errors import DataError, InputError
from fastrm_core.proxy import FastRMProxy

FAST = dict(lr=1e-2, batch_size=8, steps=40, eval_every=10, val_fraction=0.2)


def test_loss_goes_down_on_a_tiny_set(distill_world):
    result = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.7 * first, (first, last)
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]


def test_training_is_deterministic_from_the_seed(distill_world):
    a = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3))
    b = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3))
    c = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=4))
    assert a.losses == b.losses
    for (k, va), vb in zip(a.proxy.state_dict().items(), b.proxy.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.losses != c.losses
    weighted = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3, pos_weight=3.0))
    assert weighted.losses[0] != a.losses[0] and weighted.proxy.config.training["pos_weight"] == 3.0
    f1 = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3, f1_weight=1.0))
    assert f1.proxy.config.training["f1_weight"] == 1.0
    assert a.losses[0] < f1.losses[0] <= a.losses[0] + 1.0  # BCE plus 1 - soft F1 (in [0, 1]) on the same first batch


def test_record_balance_changes_the_draw_and_stays_deterministic(distill_world):
    a = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3, record_balance=1.0))
    b = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3, record_balance=1.0))
    plain = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, seed=3))
    assert a.losses == b.losses and a.losses != plain.losses
    assert a.proxy.config.training["record_balance"] == 1.0


def test_the_soft_f1_term_is_one_minus_the_soft_f1():
    from fastrm_core import FastRMProxy, ProxyConfig
    from fastrm_core.distill.trainer import _loss_and_counts

    torch.manual_seed(0)
    proxy = FastRMProxy(ProxyConfig(hidden_size=8))
    q, img, maps = torch.randn(4, 8), torch.randn(4, 6, 8), torch.rand(4, 6)
    bce, _ = _loss_and_counts(proxy, q, img, maps, 0.5)
    both, _ = _loss_and_counts(proxy, q, img, maps, 0.5, f1_weight=2.0)
    from fastrm_core.distill.metrics import binarize_maps

    p, y = torch.sigmoid(proxy(q[:, None], img)[:, 0]), binarize_maps(maps, 0.5).float()
    tp = (p * y).sum()
    soft_f1 = 2 * tp / (2 * tp + (p * (1 - y)).sum() + ((1 - p) * y).sum())
    torch.testing.assert_close(both, bce + 2.0 * (1 - soft_f1))


def test_best_checkpoint_and_saved_folder(distill_world, tmp_path):
    result = train_proxy(distill_world["dataset"], tmp_path / "proxy", TrainConfig(**FAST))
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_step == best["step"] and result.best_val_loss == best["val_loss"]
    proxy = FastRMProxy.from_pretrained(tmp_path / "proxy")
    for k, v in result.proxy.state_dict().items():
        assert torch.equal(proxy.state_dict()[k], v)
    cfg = proxy.config
    manifest = load_manifest(distill_world["dataset"])
    assert cfg.distilled_from == manifest.model_id and cfg.training_data_hash == manifest.data_hash
    assert (cfg.hidden_size, cfg.n_image_tokens, tuple(cfg.grid), cfg.label_threshold) == (64, 16, (4, 4), 0.3)
    t = cfg.training
    assert (t["lr"], t["batch_size"], t["steps"], t["seed"]) == (1e-2, 8, 40, 0)
    assert t["best_step"] == result.best_step and t["n_train_tokens"] + t["n_val_tokens"] == manifest.n_tokens
    assert len(t["dataset_manifest_sha256"]) == 64
    log = json.loads((tmp_path / "proxy" / "training_log.json").read_text())
    assert len(log["losses"]) == 40 and len(log["history"]) == 4
    # the best checkpoint's validation loss is reproduced by the saved proxy
    store = PairStore(distill_world["dataset"])
    _, val = split_records(store.n_records, 0.2, 0)
    tokens = torch.isin(store.token_record, torch.from_numpy(val)).nonzero(as_tuple=True)[0]
    q, img, maps = store.batch(tokens)
    with torch.no_grad():
        logits = proxy(q[:, None], img)[:, 0]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, binarize_maps(maps, 0.3).float())
    assert loss.item() == pytest.approx(result.best_val_loss, rel=1e-5)


def test_validation_split_is_by_record_and_seeded():
    train, val = split_records(10, 0.2, seed=1)
    assert len(val) == 2 and not set(train) & set(val) and sorted([*train, *val]) == list(range(10))
    assert split_records(10, 0.2, seed=1)[1].tolist() == val.tolist()
    assert len(split_records(3, 0.01, 0)[1]) == 1 and len(split_records(3, 0.0, 0)[1]) == 0


def test_lazy_and_in_memory_stores_agree(distill_world):
    lazy = PairStore(distill_world["dataset"], in_memory=False)
    eager = PairStore(distill_world["dataset"], in_memory=True)
    assert lazy.n_tokens == eager.n_tokens == 18 and lazy.n_records == 6
    idx = torch.tensor([17, 0, 4, 9, 3])
    for a, b in zip(lazy.batch(idx), eager.batch(idx)):
        assert torch.equal(a, b)
    assert lazy.token_record[idx].tolist() == [5, 0, 1, 3, 1]


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(InputError, match="pos_weight must be > 0"):
        TrainConfig(pos_weight=0)
    with pytest.raises(InputError, match="f1_weight must be >= 0"):
        TrainConfig(f1_weight=-1)
    with pytest.raises(InputError, match="record_balance must be in"):
        TrainConfig(record_balance=1.5)
    with pytest.raises(DataError, match="not a distillation dataset"):
        train_proxy(tmp_path, None, TrainConfig(steps=1))


def _rewrite_content(src, dst, flags):
    """A copy of dataset ``src`` whose shards carry ``flags(token_ids)`` as content flags (None: no flags)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    shutil.copytree(src, dst)
    for shard in sorted(dst.glob("shard-*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(shard)
        content = flags(tensors["token_ids"])
        if content is None:
            tensors.pop("content")
        else:
            tensors["content"] = content
        save_file(tensors, shard, metadata=meta)
    # as a rebuild would: the manifest records the new files' hashes (PairStore checks them)
    from fastrm_core.distill.dataset import _sha256, load_manifest, save_manifest

    manifest = load_manifest(dst)
    for entry in manifest.shards:
        if entry.file:
            entry.sha256 = _sha256(dst / entry.file)
    save_manifest(dst, manifest)
    return dst


def test_content_tokens_only_by_default(distill_world, tmp_path):
    every = PairStore(distill_world["dataset"])
    half = _rewrite_content(distill_world["dataset"], tmp_path / "half",
                            lambda ids: torch.arange(ids.numel()) % 2 == 0)  # every other token is "EOS"
    store = PairStore(half)
    from fastrm_core.distill.dataset import read_shard

    expected = torch.cat([torch.arange(read_shard(f)[0]["token_ids"].numel()) % 2 == 0
                          for f in sorted(half.glob("shard-*.safetensors"))])
    assert store.token_mask("content").tolist() == expected.tolist()
    assert store.token_mask("all").all()
    content = train_proxy(half, None, TrainConfig(**FAST))
    t = content.proxy.config.training
    assert t["tokens"] == "content" and t["n_train_tokens"] + t["n_val_tokens"] == int(expected.sum())
    full = train_proxy(half, None, TrainConfig(**FAST, tokens="all"))
    t = full.proxy.config.training
    assert t["tokens"] == "all" and t["n_train_tokens"] + t["n_val_tokens"] == every.n_tokens
    assert content.losses != full.losses


def test_a_dataset_without_content_flags_needs_a_rebuild_or_all_tokens(distill_world, tmp_path):
    old = _rewrite_content(distill_world["dataset"], tmp_path / "old", lambda ids: None)
    with pytest.raises(DataError, match="no content-token flags.*rebuild"):
        train_proxy(old, None, TrainConfig(**FAST))
    result = train_proxy(old, None, TrainConfig(**FAST, tokens="all"))
    assert result.proxy.config.training["n_train_tokens"] + result.proxy.config.training["n_val_tokens"] == 18
    with pytest.raises(InputError, match="tokens must be one of content, all"):
        TrainConfig(tokens="eos")


def test_cosine_schedule_decays_the_learning_rate_to_zero(distill_world):
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        cosine = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST, lr_schedule="cosine"))
    finally:
        torch.optim.Adam.step = real_step
    assert len(seen) == FAST["steps"]
    assert seen[0] == pytest.approx(FAST["lr"], rel=1e-2) and seen[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(seen, seen[1:]))
    assert cosine.proxy.config.training["lr_schedule"] == "cosine"
    constant = train_proxy(distill_world["dataset"], None, TrainConfig(**FAST))
    assert constant.losses[:1] == cosine.losses[:1] and constant.losses != cosine.losses
    with pytest.raises(InputError, match="lr_schedule must be one of constant, cosine"):
        TrainConfig(lr_schedule="linear")


def test_select_f1_keeps_the_checkpoint_of_highest_validation_f1(distill_world):
    slow = {**FAST, "lr": 3e-4, "steps": 60}  # F1 saturates before the loss stops falling
    result = train_proxy(distill_world["dataset"], None, TrainConfig(**slow, select="f1"))
    f1s = [h["val_f1"] for h in result.history]
    best = result.history[f1s.index(max(f1s))]  # the earliest step among ties
    assert result.best_step == best["step"] and result.best_val_loss == best["val_loss"]
    assert result.proxy.config.training["best_val_f1"] == best["val_f1"]
    assert result.proxy.config.training["select"] == "f1"
    by_loss = train_proxy(distill_world["dataset"], None, TrainConfig(**slow))
    assert by_loss.best_step == min(by_loss.history, key=lambda h: h["val_loss"])["step"] != result.best_step
    # the kept weights are those of that step: a run stopped there ends on the same weights
    prefix = train_proxy(distill_world["dataset"], None, TrainConfig(**{**slow, "steps": best["step"]}, select="f1"))
    assert prefix.best_step == best["step"]
    for k, v in result.proxy.state_dict().items():
        assert torch.equal(prefix.proxy.state_dict()[k], v), k
    with pytest.raises(InputError, match="select must be one of"):
        TrainConfig(select="accuracy")

import json

import pytest
import torch

from fastrm_core.adapters import get_adapter
from fastrm_common.errors import ConfigMismatchError, DataError
from fastrm_core.proxy import FastRMProxy, ProxyConfig


def make_proxy(hidden=64, n=16, grid=(4, 4), **kw):
    torch.manual_seed(0)
    return FastRMProxy(ProxyConfig(hidden_size=hidden, n_image_tokens=n, grid=grid, **kw)).eval()


def test_round_trip_is_safetensors_and_json(tmp_path):
    proxy = make_proxy(head_dim=8, distilled_from="tiny")
    proxy.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["distilled_from"] == "tiny"
    loaded = FastRMProxy.from_pretrained(tmp_path)
    h, img = torch.randn(2, 3, 64), torch.randn(2, 16, 64)
    torch.testing.assert_close(loaded(h, img), proxy(h, img))


def test_incremental_equals_batched():
    proxy = make_proxy()
    h, img = torch.randn(2, 5, 64), torch.randn(2, 16, 64)
    keys = proxy.image_keys(img)
    steps = torch.cat([proxy.token_logits(h[:, t : t + 1], keys) for t in range(5)], dim=1)
    torch.testing.assert_close(steps, proxy(h, img))
    probs = proxy.predict(h, img)
    assert probs.shape == (2, 5, 4, 4) and ((probs > 0) & (probs < 1)).all()


def test_head_dim_defaults_to_hidden_size():
    assert make_proxy().q_proj.out_features == 64
    assert make_proxy(head_dim=8).q_proj.out_features == 8


def test_mismatches_are_named():
    proxy = make_proxy()
    with pytest.raises(ConfigMismatchError, match="hidden size mismatch: the proxy expects 64"):
        proxy(torch.randn(1, 1, 32), torch.randn(1, 16, 32))
    with pytest.raises(ConfigMismatchError, match="image-token count mismatch"):
        proxy(torch.randn(1, 1, 64), torch.randn(1, 9, 64))
    with pytest.raises(ValueError, match="grid"):
        ProxyConfig(hidden_size=8, n_image_tokens=10, grid=(3, 3))


def test_check_compatible_with_model(tiny_llava, tiny_llava_gqa):
    make_proxy().check_compatible(get_adapter(tiny_llava[0]))
    make_proxy().check_compatible(get_adapter(tiny_llava_gqa[0]))  # the CLS token is not a patch
    with pytest.raises(ConfigMismatchError, match=r"hidden size 32 \(proxy\) != 64 \(model\)"):
        make_proxy(hidden=32).check_compatible(get_adapter(tiny_llava[0]))
    with pytest.raises(ConfigMismatchError, match=r"image tokens 9 \(proxy\) != 16"):
        make_proxy(n=9, grid=(3, 3)).check_compatible(get_adapter(tiny_llava[0]))


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="not a FastRM proxy folder"):
        FastRMProxy.from_pretrained(tmp_path)
    make_proxy().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hiden_size"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="hiden_size"):
        FastRMProxy.from_pretrained(tmp_path)

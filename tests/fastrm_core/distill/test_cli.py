"""``fastrm distill build | train | eval`` invoked in-process."""

import json

import pytest

from fastrm_core.cli import main
from fastrm_core.distill.dataset import load_manifest
from fastrm_core.proxy import FastRMProxy


@pytest.mark.slow  # distils and evaluates a proxy end to end
def test_build_train_eval(distill_world, tmp_path, capsys):
    model = str(distill_world["model_dir"])
    ds, proxy, report = tmp_path / "ds", tmp_path / "proxy", tmp_path / "out" / "report.json"
    assert main(["distill", "build", "--data", str(distill_world["data"]), "--out", str(ds), "--model", model,
                 "--max-new-tokens", "2", "--records-per-shard", "4"]) == 0
    err = capsys.readouterr().err
    assert "tok/s" in err and "6 records, 12 tokens, 3 skipped" in err and "skipped missing: image not found" in err
    assert load_manifest(ds).complete
    assert main(["distill", "train", "--data", str(ds), "--out", str(proxy), "--lr", "1e-2", "--batch-size", "4",
                 "--steps", "6", "--eval-every", "3", "--val-fraction", "0.3"]) == 0
    assert "loss" in capsys.readouterr().err
    assert FastRMProxy.from_pretrained(proxy).config.training["steps"] == 6
    assert main(["distill", "eval", "--data", str(distill_world["data"]), "--out", str(report), "--model", model,
                 "--proxy", str(proxy), "--n", "2", "--max-new-tokens", "2", "--no-perturbation"]) == 0
    out = capsys.readouterr().out
    assert "proxy vs binarised baseline" in out and "Pearson" in out
    data = json.loads(report.read_text())
    assert data["n_records"] == 2 and "perturbation" not in data and data["settings"]["perturbation"] is False


def test_user_errors_exit_2_with_a_message(distill_world, tmp_path, capsys):
    ds = tmp_path / "ds"
    ds.mkdir()
    assert main(["distill", "train", "--data", str(ds), "--out", str(tmp_path / "p"), "--steps", "1"]) == 2
    assert "not a distillation dataset" in capsys.readouterr().err
    assert main(["distill", "build", "--data", str(distill_world["data"]), "--out", str(ds),
                 "--model", str(distill_world["model_dir"]), "--backend", "local", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens must be >= 1" in capsys.readouterr().err


def test_eval_defaults_to_the_shipped_reference_assets(monkeypatch, tmp_path, capsys):
    from fastrm_common import presets

    def missing():
        raise FileNotFoundError("the reference proxy is not in X")

    presets.list_presets()  # load the entry points first, then shadow the shipped preset for this test
    monkeypatch.setitem(presets.PRESETS._entries, "reference",
                        presets.Preset("reference", model=lambda: tmp_path, proxy=missing))
    assert main(["distill", "eval", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "r.json")]) == 2
    assert "pass --proxy" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    assert "build" in capsys.readouterr().out

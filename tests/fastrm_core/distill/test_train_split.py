"""`fastrm distill train` says how many records and tokens each split has, and warns when the
validation split is too small to select a checkpoint on."""

from __future__ import annotations

from fastrm_core.distill.trainer import TrainConfig, split_warnings, train_proxy

TINY = dict(lr=1e-2, batch_size=4, steps=2, eval_every=1)


def test_a_tiny_validation_split_is_counted_and_warned_about(distill_world):
    seen = []
    result = train_proxy(distill_world["dataset"], None, TrainConfig(val_fraction=0.2, **TINY),
                         on_split=lambda split, warnings: seen.append((split, warnings)))
    (split, warnings), = seen  # once, before training
    assert split["n_train_records"] + split["n_val_records"] == 6 and split["n_val_records"] == 1
    assert split["n_val_tokens"] >= 1 and split["n_train_tokens"] >= 1
    assert len(warnings) == 1 and "only 1 record and" in warnings[0] and "too few to select a checkpoint" in warnings[0]
    assert result.split == split and result.warnings == warnings
    assert result.proxy.config.training["warnings"] == warnings
    assert result.proxy.config.training["n_val_tokens"] == split["n_val_tokens"]


def test_split_warnings_thresholds():
    assert split_warnings({"n_val_records": 20, "n_val_tokens": 50}) == []
    assert split_warnings({"n_val_records": 0, "n_val_tokens": 0}) == []  # no validation asked for
    assert "F1 moves by chance" in split_warnings({"n_val_records": 19, "n_val_tokens": 500}, "f1")[0]
    assert split_warnings({"n_val_records": 200, "n_val_tokens": 49})


def test_train_cli_prints_the_split_and_the_warning(distill_world, tmp_path, capsys):
    from fastrm_core.cli import main

    assert main(["distill", "train", "--data", str(distill_world["dataset"]), "--out", str(tmp_path / "p"),
                 "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--val-fraction", "0.2"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "split (content tokens): train 5 records" in err and "validation 1 records" in err
    assert err.count("too few to select a checkpoint on") == 2  # before training and under the result

"""`shapesvqa export` writes a valid JSONL split that the calibration reader accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from shapesvqa.cli import main
from shapesvqa.export import read_jsonl
from shapesvqa.world import make_example


def test_export_cli_writes_valid_jsonl(tmp_path):
    out = tmp_path / "split"
    assert main(["export", "--n", "12", "--seed", "5", "--out", str(out)]) == 0
    lines = (out / "data.jsonl").read_text().splitlines()
    assert len(lines) == 12
    ids = set()
    for line in lines:
        rec = json.loads(line)
        assert {"id", "image", "question", "answers", "family", "evidence_masks"} <= set(rec)
        assert not rec["image"].startswith("/")
        assert rec["answers"] and all(isinstance(a, str) for a in rec["answers"])
        ids.add(rec["id"])
        img = Image.open(out / rec["image"])
        assert img.mode == "RGB" and img.size == (96, 96)
        ex = make_example(5, int(rec["id"].split("-")[1]))
        assert rec["question"] == ex.question and rec["answers"] == ex.answers
        assert np.array_equal(np.asarray(img), ex.scene.image)  # PNG is lossless
        for k, rel in enumerate(rec["evidence_masks"]):
            m = np.asarray(Image.open(out / rel)) > 0
            assert np.array_equal(m, ex.evidence_masks[k])
    assert len(ids) == 12
    recs = read_jsonl(out / "data.jsonl")
    assert all((out / "images").exists() and r["image"].endswith(".png") for r in recs)


def test_export_readable_by_calibration_reader(tmp_path):
    try:
        from fastrm_common.records import read_vqa_jsonl
    except ImportError:  # pragma: no cover - calibration is another package of the repo
        return
    out = tmp_path / "split"
    main(["export", "--n", "5", "--seed", "1", "--out", str(out)])
    records, problems = read_vqa_jsonl(out / "data.jsonl", strict=True)
    assert len(records) == 5 and not problems


def test_export_works_without_options(tmp_path, monkeypatch):
    # the first try of a new user: `shapesvqa export --n 3` (no seed, no folder)
    from shapesvqa.cli import EXPORT_OUT, EXPORT_SEED, build_parser

    monkeypatch.chdir(tmp_path)
    assert main(["export", "--n", "3"]) == 0
    recs = read_jsonl(tmp_path / EXPORT_OUT / "data.jsonl")
    assert [r["question"] for r in recs] == [make_example(EXPORT_SEED, i).question for i in range(3)]
    defaults = build_parser().parse_args(["export"])
    assert (defaults.n, defaults.seed, str(defaults.out)) == (100, 0, "shapesvqa-data")
    assert str(build_parser().parse_args(["eval"]).out) == "shapesvqa-eval.json"


@pytest.mark.parametrize("argv", [["export", "--n", "-3"], ["export", "--n", "0"], ["eval", "--pope", "--n", "-3"],
                                  ["eval", "--batch-size", "0"], ["export", "--max-objects", "two"]])
def test_counts_below_one_are_usage_errors_not_tracebacks(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "expected a" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_a_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--n", "2", "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot load a model from" in err and "Traceback" not in err

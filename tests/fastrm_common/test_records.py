import hashlib
import json

import pytest

from calibration import dataset_hash, read_vqa_jsonl
from fastrm_common.errors import DataError


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "images" / name).write_bytes(b"\x89PNG fake")
    return tmp_path


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = [
    {"id": "q1", "image": "images/a.png", "question": "How many cubes?", "answers": ["2", "two"], "split": "val"},
    {"id": 2, "image": "images/b.png", "question": "What color?", "answers": ["red"]},
]


def test_reads_records_resolves_images_and_keeps_extra_fields(data_dir):
    path = write_lines(data_dir / "data.jsonl", [GOOD[0], "", GOOD[1]])
    records, problems = read_vqa_jsonl(path)
    assert problems == []
    assert [r.id for r in records] == ["q1", "2"]
    assert records[0].image == (data_dir / "images" / "a.png").resolve()
    assert records[0].image.is_absolute()
    assert records[0].answers == ["2", "two"]
    assert records[0].model_extra == {"split": "val"}
    assert records[1].model_extra == {}


def test_image_paths_are_relative_to_the_file_not_the_cwd(data_dir, monkeypatch, tmp_path_factory):
    sub = data_dir / "nested"
    sub.mkdir()
    path = write_lines(sub / "data.jsonl", [{**GOOD[0], "image": "../images/a.png"}])
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    records, _ = read_vqa_jsonl(path)
    assert records[0].image.resolve() == (data_dir / "images" / "a.png").resolve()


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(data_dir):
    lines = [
        GOOD[0],  # 1
        "{not json",  # 2
        {"id": "q3", "image": "images/c.png", "question": "Q?", "answers": []},  # 3
        {"id": "q4", "image": "images/c.png", "answers": ["x"]},  # 4 no question
        {"id": "q1", "image": "images/c.png", "question": "dup?", "answers": ["x"]},  # 5 duplicate id
        {"id": "q6", "image": "images/missing.png", "question": "Q?", "answers": ["x"]},  # 6
        [1, 2],  # 7
        {"id": "q8", "image": "images/c.png", "question": "Q?", "answers": "red"},  # 8 not a list
        {"id": "q9", "image": "images/c.png", "question": "  ", "answers": ["x"]},  # 9 empty question
        GOOD[1],  # 10
    ]
    path = write_lines(data_dir / "data.jsonl", lines)
    records, problems = read_vqa_jsonl(path)
    assert [r.id for r in records] == ["q1", "2"]
    assert [p.line for p in problems] == [2, 3, 4, 5, 6, 7, 8, 9]
    messages = {p.line: p.message for p in problems}
    assert "invalid JSON" in messages[2]
    assert messages[3].startswith("answers:")
    assert messages[4] == "question: Field required"
    assert "duplicate id 'q1' (first on line 1)" in messages[5]
    assert "image not found" in messages[6] and "missing.png" in messages[6]
    assert "expected a JSON object, got list" in messages[7]
    assert messages[8].startswith("answers:")
    assert "question is empty" in messages[9]
    assert str(problems[0]).endswith("data.jsonl:2: " + messages[2])
    # without the image check, line 6 is kept
    records, problems = read_vqa_jsonl(path, check_images=False)
    assert "q6" in [r.id for r in records]


def test_strict_mode_rejects_the_file(data_dir):
    path = write_lines(data_dir / "data.jsonl", [GOOD[0], "{oops", GOOD[1]])
    with pytest.raises(DataError, match=r"1 malformed line\(s\) in .*data\.jsonl.*\n  .*data\.jsonl:2: invalid JSON"):
        read_vqa_jsonl(path, strict=True)
    records, _ = read_vqa_jsonl(write_lines(data_dir / "ok.jsonl", GOOD), strict=True)
    assert len(records) == 2


def test_strict_mode_lists_at_most_ten_problems(data_dir):
    path = write_lines(data_dir / "data.jsonl", [GOOD[0]] + ["{"] * 13)
    with pytest.raises(DataError, match=r"13 malformed(.|\n)*and 3 more"):
        read_vqa_jsonl(path, strict=True)


def test_empty_or_unreadable_files(data_dir):
    with pytest.raises(DataError, match="the file is empty"):
        read_vqa_jsonl(write_lines(data_dir / "empty.jsonl", [""]))
    with pytest.raises(DataError, match="no valid record.*1 malformed line"):
        read_vqa_jsonl(write_lines(data_dir / "bad.jsonl", ["{"]))
    with pytest.raises(DataError, match="cannot read data file"):
        read_vqa_jsonl(data_dir / "nope.jsonl")


def test_dataset_hash(data_dir):
    path = write_lines(data_dir / "data.jsonl", GOOD)
    assert dataset_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(dataset_hash(path)) == 64
    with pytest.raises(DataError, match="cannot read"):
        dataset_hash(data_dir / "nope.jsonl")

"""Issue #31, the first hour round 2: a calibration without threshold, explanations that name the
novelty gate, content cropped away, an empty answer, and `guardrail run` checking its input
before the model loads."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from calibration import AnswerSignals, fit_calibration
from guardrail import Guard
from guardrail.calibrate import ScoredAnswer, calibrate_scores, write_signals
from guardrail.cli import main


def run_cli(*argv, width=200):
    buf = io.StringIO()
    code = main(list(map(str, argv)), console=Console(file=buf, width=width, color_system=None))
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def saved(tiny_proxy, tmp_path_factory):
    """A tiny model that answers with words, its proxy and calibration on disk, and images."""
    from fastrm_core.testing import blank_image, build_tiny_llava

    root = tmp_path_factory.mktemp("first-hour")
    model, processor = build_tiny_llava()
    tok = processor.tokenizer
    model.generation_config.suppress_tokens = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id,
                                               *tok.convert_tokens_to_ids(["<image>", "?", ".", ",", ":", "!"])]
    model.generation_config.min_new_tokens = 1
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    tiny_proxy.save_pretrained(root / "proxy")
    rng = np.random.default_rng(0)
    cal = fit_calibration(np.concatenate([rng.normal(0.5, 0.05, 40), rng.normal(0.9, 0.05, 40)]),
                          np.array([True] * 40 + [False] * 40), entropy_normalized=True)
    cal.save(root / "calibration.json")
    # what `calibrate --rule guaranteed_precision` writes when nothing qualifies
    cal.model_copy(update={"rule": "guaranteed_precision", "threshold": None}).save(root / "no-threshold.json")
    blank_image(32, (200, 30, 30)).save(root / "scene.png")
    tall = Image.new("RGB", (32, 80), "white")
    tall.paste((0, 0, 255), (10, 2, 22, 14))  # a blue object above the centre square the model sees
    tall.save(root / "tall.png")
    Image.new("RGB", (32, 80), "white").save(root / "tall-blank.png")
    return root


def _run(saved, *extra):
    return run_cli("run", "--model", saved / "model", "--proxy", saved / "proxy", "--max-new-tokens", "3", *extra)


# ---------------------------------------------------------------- 1. a calibration whose threshold is null


def test_run_on_a_calibration_without_threshold_says_every_answer_is_uncertain(saved):
    code, out = _run(saved, "--calibration", saved / "no-threshold.json", "--image", saved / "scene.png",
                     "--question", "What color is it?")
    assert code == 0, out
    assert "uncertain" in out and "marks no answer confident" in out
    assert "Traceback" not in out


def _signal_rows(n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):  # half right, and the score says nothing about which
        lp = np.log(rng.uniform(0.2, 1.0, 2))
        rows.append(ScoredAnswer(id=str(k), answer="a", correct=bool(k % 2),
                                 signals=AnswerSignals(content=np.array([True, True]), token_logprob=lp)))
    return rows


def test_calibrate_says_loudly_when_it_writes_a_calibration_without_threshold(tmp_path):
    sig = write_signals(tmp_path / "s.jsonl", _signal_rows(), meta={"model_id": "m"})
    out = tmp_path / "cal.json"
    code, text = run_cli("calibrate", "--from-signals", sig, "--out", out, "--score", "token_nll",
                         "--rule", "guaranteed_precision", "--novelty-quantile", "0")
    assert code == 0, text
    assert json.loads(out.read_text())["threshold"] is None
    assert "WARNING: this calibration marks NO answer confident" in text
    assert "needs at least" in text and "roughly" in text and "labelled answers" in text


# ---------------------------------------------------------------- 2. explanations that match the verdict


def _gated_rows(n, seed, width=16):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(5 * width, 5 * width)) / 8
    rows = []
    for k in range(n):
        ok = bool(rng.random() < 0.8)
        lp = np.log(rng.uniform(0.7, 1.0, 1) if ok else rng.uniform(0.1, 0.8, 1))
        rows.append(ScoredAnswer(id=str(k), answer="a", correct=ok, signals=AnswerSignals(
            content=np.array([True]), token_logprob=lp, features=rng.normal(size=5 * width) @ mix)))
    return rows


def test_when_the_novelty_gate_fires_the_explanation_names_it():
    from guardrail.answers.pipeline import Scorer, explain_verdict

    rows = _gated_rows(600, seed=0)
    cal, _ = calibrate_scores(rows, score="token_nll", rule="paper_midpoint", novelty_quantile=0.9, table=False)
    scorer = Scorer(cal)
    # a confident-looking answer (probability 1: score 0) on an input far from the calibration data
    far = AnswerSignals(content=np.array([True]), token_logprob=np.array([0.0]),
                        features=rows[0].signals.features * 50)
    values, score, verdict = scorer.evaluate(far)
    assert verdict == "uncertain" and score < cal.threshold  # the gate, not the score, decided
    why = explain_verdict(cal, score, verdict, novelty=values["novelty"])
    assert why.startswith("uncertain") and "novelty gate" in why
    assert "at or above the threshold" not in why


def test_explanations_of_the_other_cases():
    from guardrail.answers.pipeline import explain_verdict

    cal = fit_calibration(np.r_[np.linspace(0.1, 0.5, 40), np.linspace(0.5, 0.9, 40)],
                          np.r_[np.ones(40, bool), np.zeros(40, bool)])
    assert "no content token" in explain_verdict(cal, None, "uncertain")
    assert explain_verdict(cal, 0.1, "confident").startswith("confident")
    assert "at or above the threshold" in explain_verdict(cal, 0.9, "uncertain")
    none = cal.model_copy(update={"threshold": None})
    assert "marks no answer confident" in explain_verdict(none, 0.1, "uncertain")
    assert explain_verdict(None, None, None) is None


def test_the_result_the_cli_and_the_report_say_why_and_never_contradict_the_verdict(saved, tmp_path):
    trace = tmp_path / "trace.jsonl"
    code, out = _run(saved, "--calibration", saved / "no-threshold.json", "--image", saved / "scene.png",
                     "--question", "What color is it?", "--trace", trace, "--capture-content")
    assert code == 0, out
    assert "why" in out and "marks no answer confident" in out
    # the bundled policy's reason no longer claims a cause the verdict may not have had
    assert "at or above its threshold" not in out
    html = tmp_path / "report.html"
    code, _ = run_cli("view", trace, "--html", html)
    page = html.read_text()
    assert code == 0 and "marks no answer confident" in page
    assert "below: confident" not in page  # the report no longer derives a verdict of its own


# ---------------------------------------------------------------- 3. content cropped away


def test_content_cropped_away_is_a_result_field_a_cli_line_and_a_span_attribute(saved, tmp_path):
    trace = tmp_path / "trace.jsonl"
    code, out = _run(saved, "--calibration", saved / "calibration.json", "--image", saved / "tall.png",
                     "--question", "What color is it?", "--trace", trace)
    assert code == 0, out
    assert "warning" in out and "cut away" in out
    guard_span = next(json.loads(line) for line in trace.read_text().splitlines()
                      if json.loads(line)["name"] == "apply_guardrail fastrm")
    attrs = {a["key"]: a["value"] for a in guard_span["attributes"]}
    assert "fastrm.image.cropped" in attrs
    code, out = _run(saved, "--calibration", saved / "calibration.json", "--image", saved / "tall.png",
                     "--question", "What color is it?", "--json")
    result = json.loads(out)
    assert result["image_cropped"] == pytest.approx(0.6, abs=0.01)
    assert any("cut away" in w for w in result["warnings"])


def test_a_flat_border_cut_away_is_no_warning(saved):
    code, out = _run(saved, "--calibration", saved / "calibration.json", "--image", saved / "tall-blank.png",
                     "--question", "What color is it?", "--json")
    result = json.loads(out)
    assert code == 0 and result["image_cropped"] is None and result["warnings"] == []


def test_the_frame_of_what_the_model_saw_shows_on_a_white_image(tmp_path):
    from guardrail.traces.render import explained_figure

    img = Image.new("RGB", (64, 160), "white")

    def dark_pixels(box):
        path = explained_figure(tmp_path / "f.png", img, np.ones((4, 4)) / 16, box=box)
        px = np.asarray(Image.open(path).convert("L"))
        return int((px[:, : px.shape[1] // 3] < 60).sum())  # the left panel: the image as it is

    # a frame inside a white image is drawn in a colour that shows (a white frame added no dark pixel)
    assert dark_pixels((0, 48, 64, 112)) > dark_pixels((0, 0, 64, 160)) + 50


# ---------------------------------------------------------------- 4. an empty answer


def test_an_empty_answer_is_said_in_words(tiny_llava, tiny_proxy, calibration_uncertain, image):
    model, processor = tiny_llava
    guard = Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)
    eos = processor.tokenizer.eos_token_id
    result = guard.generate(image, "What?", max_new_tokens=1, forced_eos_token_id=eos)
    assert result.answer == "" and result.verdict == "uncertain"
    assert any("empty answer" in w for w in result.warnings)
    assert "no content token" in result.verdict_reason


# ---------------------------------------------------------------- 6. checks before the model loads


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("the model was loaded before the arguments were checked")

    import fastrm_core
    import guardrail.guard

    monkeypatch.setattr(guardrail.guard, "load_vlm", refuse)
    monkeypatch.setattr(fastrm_core, "load_vlm", refuse)


def test_run_checks_the_image_before_loading_the_model(saved, no_model):
    code, out = _run(saved, "--calibration", saved / "calibration.json", "--image", saved / "nope.png",
                     "--question", "What?")
    assert code == 2 and "image not found" in out


def test_run_checks_the_calibration_before_loading_the_model(saved, no_model, tmp_path):
    bad = tmp_path / "cal.json"
    bad.write_text("{not json")
    code, out = _run(saved, "--calibration", bad, "--image", saved / "scene.png", "--question", "What?")
    assert code == 2 and "calibration" in out


def test_run_refuses_a_bad_policy_before_loading_the_model_one_problem_per_line(saved, no_model, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("id: p\nversion: 1.10\ndefault: {action: abstian}\n")
    code, out = _run(saved, "--calibration", saved / "calibration.json", "--image", saved / "scene.png",
                     "--question", "What?", "--policy", bad)
    lines = out.strip().splitlines()
    assert code == 2 and lines[0].startswith("error: invalid policy")
    assert any(line.startswith(f"{bad}:2: version") for line in lines)
    assert any(line.startswith(f"{bad}:3: default.action") for line in lines)


# ---------------------------------------------------------------- 5. calibrate's defaults are what ships


def test_calibrate_defaults_are_the_shipped_recipe_and_help_says_so(capsys):
    from guardrail.cli.main import PRESETS, build_parser
    from shapesvqa.assets import reference_calibration_path

    shipped = json.loads(reference_calibration_path().read_text())
    args = build_parser().parse_args(["calibrate", "--out", "o.json"])
    assert args.score == shipped["score"]["name"] and args.rule == shipped["rule"]
    assert (args.target_precision, args.delta) == (shipped["target_precision"], shipped["delta"])
    assert PRESETS["shipped"]["aggregation"] == shipped["score"]["params"]["aggregation"]
    assert PRESETS["shipped"]["novelty_quantile"] == shipped["novelty_gate"]["quantile"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["calibrate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: low_margin" in help_text and "default: guaranteed_precision" in help_text
    assert "--preset paper" in help_text


def test_calibrate_names_the_recipe_it_ran(tmp_path):
    sig = write_signals(tmp_path / "s.jsonl", _signal_rows(200), meta={"model_id": "m"})
    code, text = run_cli("calibrate", "--from-signals", sig, "--out", tmp_path / "b.json", "--score", "token_nll")
    assert code == 0, text
    # the signals carry no features: the default gate is left out with a note, not an error
    assert "recipe: score token_nll(max), rule guaranteed_precision" in text and "no novelty gate" in text


# ---------------------------------------------------------------- 8. calibrate's tables at 80 columns


def test_calibrate_tables_keep_every_header_whole_at_80_columns():
    from guardrail.cli.main import _print_calibration, _print_score_table

    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0.3, 0.05, 400), rng.normal(0.6, 0.05, 40)]
    c = np.r_[np.ones(400, bool), np.zeros(40, bool)]
    cal = fit_calibration(s[::2], c[::2], heldout=(s[1::2], c[1::2]), rule="guaranteed_precision")
    fams = ["attribute", "counting", "describe", "existence", "relational"]
    rows = [{"label": label, "auroc": 0.8, "families": {f: 0.7 for f in fams}}
            for label in ("predictive_entropy(mean)", "low_margin(max)")]
    buf = io.StringIO()
    con = Console(file=buf, width=80, color_system=None)
    _print_calibration(con, cal, {"n_fit": 220, "n_heldout": 220, "accuracy_heldout": 0.9})
    _print_score_table(con, {"n_heldout": 220, "families": fams, "score_label": "low_margin(max)", "score_table": rows})
    out = buf.getvalue()
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    for word in ("guaranteed_precision *", "confident", "uncertain", "precision", *fams):
        assert word in out, word


# ---------------------------------------------------------------- 10. no progress bar in Python


def test_guard_from_pretrained_prints_no_loading_bar_and_leaves_the_setting_alone(saved, capfd):
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    guard = Guard.from_pretrained(saved / "model", proxy=saved / "proxy", calibration=saved / "calibration.json")
    assert guard.calibration is not None
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()  # as the app had it

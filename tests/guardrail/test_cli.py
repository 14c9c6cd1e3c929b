"""The guardrail command, invoked in-process on tiny artifacts saved to disk."""

import io
import json

import pytest
from rich.console import Console

from guardrail.cli.main import main


def run_cli(*argv):
    buf = io.StringIO()
    code = main(list(map(str, argv)), console=Console(file=buf, width=200, color_system=None))
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def saved(tiny_llava, tiny_proxy, tmp_path_factory):
    import numpy as np

    from calibration import fit_calibration

    from fastrm_core import load_vlm
    from fastrm_core.testing import build_tiny_llava

    root = tmp_path_factory.mktemp("artifacts")
    # a random model that answers with words: special tokens other than EOS are suppressed
    model, processor = build_tiny_llava()
    tok = processor.tokenizer
    model.generation_config.suppress_tokens = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id,
                                               *tok.convert_tokens_to_ids(["<image>", "?", ".", ",", ":", "!"])]
    model.generation_config.min_new_tokens = 1
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    proxy_dir = tiny_proxy.save_pretrained(root / "proxy")
    rng = np.random.default_rng(0)
    cal = fit_calibration(np.concatenate([rng.normal(0.5, 0.05, 40), rng.normal(0.9, 0.05, 40)]) - 0.6,
                          np.array([True] * 40 + [False] * 40), entropy_normalized=True)
    cal_path = cal.save(root / "calibration.json")
    image = root / "scene.png"
    from fastrm_core.testing import blank_image

    blank_image(32, (200, 30, 30)).save(image)
    return {"model": model_dir, "proxy": proxy_dir, "calibration": cal_path, "image": image, "root": root,
            "vlm": load_vlm(model_dir)}


def test_run_prints_verdict_and_writes_trace(saved, tmp_path):
    trace = tmp_path / "trace.jsonl"
    code, out = run_cli("run", "--model", saved["model"], "--proxy", saved["proxy"], "--calibration",
                        saved["calibration"], "--image", saved["image"], "--question", "What color is it?",
                        "--max-new-tokens", "4", "--trace", trace, "--capture-content", "--png", tmp_path / "o.png")
    assert code == 0, out
    assert "verdict" in out and "uncertain" in out and "action" in out
    assert (tmp_path / "o.png").is_file()
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {s["name"] for s in lines} >= {"apply_guardrail fastrm"}
    code, view = run_cli("view", trace, "--png", tmp_path / "view")
    assert code == 0 and "guarded call 0" in view and "What color is it?" in view
    figures = list((tmp_path / "view").glob("*-token*.png"))
    span_id = next(s["spanId"] for s in lines if s["name"] == "apply_guardrail fastrm")
    assert figures and all(f.name.startswith(f"{lines[0]['traceId']}-{span_id}-token") for f in figures)


def test_run_json_and_bad_input(saved):
    code, out = run_cli("run", "--model", saved["model"], "--proxy", saved["proxy"], "--calibration",
                        saved["calibration"], "--image", saved["image"], "--question", "What?", "--json")
    assert code == 0 and json.loads(out)["verdict"] == "uncertain"
    assert "visual_contrast" not in json.loads(out)["scores"]
    code, out = run_cli("run", "--model", saved["model"], "--proxy", saved["proxy"], "--calibration",
                        saved["calibration"], "--image", saved["image"], "--question", "What?", "--json",
                        "--visual-contrast")
    assert code == 0 and isinstance(json.loads(out)["scores"]["visual_contrast"], float)
    code, out = run_cli("run", "--model", saved["model"], "--proxy", saved["proxy"], "--calibration",
                        saved["calibration"], "--image", saved["root"] / "nope.png", "--question", "What?")
    assert code == 2 and "image not found" in out


def test_policy_check(tmp_path):
    code, out = run_cli("policy", "check", "default")
    assert code == 0 and "default" in out
    bad = tmp_path / "p.yaml"
    bad.write_text("id: x\nversion: '1'\ndefault:\n  action: abstian\n")
    code, out = run_cli("policy", "check", bad)
    assert code == 1 and "unknown action 'abstian'" in out


def test_view_of_empty_trace(tmp_path):
    empty = tmp_path / "t.jsonl"
    empty.write_text("")
    assert run_cli("view", empty)[0] == 1


@pytest.mark.slow
def test_calibrate_end_to_end_on_exported_set(saved, tiny_proxy, tmp_path):
    from calibration import read_vqa_jsonl
    from guardrail.calibrate import score_records
    from shapesvqa.export import export_examples
    from shapesvqa.world import generate

    jsonl = export_examples(generate(40, seed=5), tmp_path / "set")
    # A random tiny model is never right on ShapesVQA; label half of the records with its own answer
    # so that both classes exist, the other half with an answer it never gives.
    records, _ = read_vqa_jsonl(jsonl)
    rows, _ = score_records(*saved["vlm"], tiny_proxy, records, max_new_tokens=3)
    answers = {r.id: r.answer for r in rows}
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for k, rec in enumerate(lines):
        rec["answers"] = [answers[rec["id"]]] if k % 2 == 0 and rec["id"] in answers else ["zzz"]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")
    out = tmp_path / "cal.json"
    code, text = run_cli("calibrate", "--model", saved["model"], "--proxy", saved["proxy"], "--data", jsonl,
                         "--out", out, "--max-new-tokens", "3", "--plot", tmp_path / "kde.png", "--scores-out",
                         tmp_path / "scores.jsonl", "--preset", "paper")
    assert code == 0, text
    assert "41" in text and "skipped" in text  # the malformed line is reported with its number
    cal = json.loads(out.read_text())
    n_right = sum(1 for k, rec in enumerate(lines) if k % 2 == 0 and rec["id"] in answers)
    assert len(rows) >= 30 and n_right >= 10
    assert cal["rule"] == "paper_midpoint" and cal["heldout_metrics"]["n"] == len(rows) // 2
    assert cal["proxy_hash"] == tiny_proxy.fingerprint()
    assert (tmp_path / "kde.png").is_file()
    assert "density_crossing" in text and "guaranteed_precision" in text
    # the table of every score's held-out AUROC, the chosen one marked
    assert "held-out AUROC of each score" in text and "map_entropy(mean) *" in text and "token_nll(max)" in text
    assert "fused" in text and "novelty" in text
    assert set(cal["score_aurocs"]) >= {"map_entropy(mean)", "token_nll(max)", "fused", "novelty"}
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == len(rows) and sum(s["correct"] for s in scores) == n_right
    # re-fit from stored signals, on another score and rule, without the model
    sig_path, out2 = tmp_path / "signals.jsonl", tmp_path / "cal2.json"
    from guardrail.calibrate import write_signals

    import dataclasses

    labelled = {sc["id"]: sc["correct"] for sc in scores}
    write_signals(sig_path, [dataclasses.replace(r, correct=labelled[r.id]) for r in rows],
                  meta={"model_id": "m", "proxy_hash": cal["proxy_hash"]})
    code, text = run_cli("calibrate", "--from-signals", sig_path, "--out", out2, "--score", "token_nll",
                         "--rule", "guaranteed_precision", "--target-precision", "0.9", "--novelty-quantile", "0.9")
    assert code == 0, text
    cal2 = json.loads(out2.read_text())
    assert cal2["score"]["name"] == "token_nll" and cal2["rule"] == "guaranteed_precision"
    assert cal2["novelty_gate"]["quantile"] == 0.9 and "guarantee" in text
    # a fused variant in use is the marked row; flags that need the image-free pass say what to do, before any work
    code, text = run_cli("calibrate", "--from-signals", sig_path, "--out", tmp_path / "cal3.json", "--score", "fused",
                         "--with-grounding", "--rule", "paper_midpoint", "--novelty-quantile", "0")
    assert code == 0, text
    assert "fused(+grounding) *" in text
    code, text = run_cli("calibrate", "--from-signals", sig_path, "--out", tmp_path / "cal4.json", "--visual-contrast")
    assert code == 2 and "holds no image-free pass" in text and "--visual-contrast --signals-out" in text
    code, text = run_cli("calibrate", "--from-signals", sig_path, "--out", tmp_path / "cal4.json",
                         "--with-visual-contrast")
    assert code == 2 and "add --score fused" in text
    code, text = run_cli("calibrate", "--from-signals", tmp_path / "none.jsonl", "--out", tmp_path / "cal4.json")
    assert code == 2 and "signals file not found" in text


def test_calibrate_refuses_one_class_data(saved, tmp_path):
    from shapesvqa.export import export_examples
    from shapesvqa.world import generate

    jsonl = export_examples(generate(12, seed=6), tmp_path / "set")
    code, text = run_cli("calibrate", "--model", saved["model"], "--proxy", saved["proxy"], "--data", jsonl,
                         "--out", tmp_path / "cal.json", "--max-new-tokens", "2")
    assert code == 2 and "correct" in text
    assert not (tmp_path / "cal.json").exists()


@pytest.mark.slow
def test_demo_command_on_given_artifacts(saved, tmp_path):
    out = tmp_path / "demo"
    code, text = run_cli("demo", "--out", out, "--model", saved["model"], "--proxy", saved["proxy"],
                         "--calibration", saved["calibration"], "--pool", "8")
    assert code == 0, text
    assert "8 scenes" in text and "verdict" in text and "trace" in text
    assert list(out.glob("*_overlay.png"))
    import re

    pope = int(re.search(r"POPE \(adversarial negatives\): (\d+) questions", " ".join(text.split())).group(1))
    assert pope > 0  # the preset's POPE questions are asked too, one traced call each
    described = int(re.search(r"descriptions: (\d+) scenes", " ".join(text.split())).group(1))
    assert described > 0  # and its descriptions, one traced call each, their claims judged
    code, view = run_cli("view", out / "trace.jsonl")
    assert code == 0 and view.count("guarded call") == 8 + pope + described


@pytest.fixture
def otlp_receiver():
    """A loopback HTTP server that records the paths of OTLP posts."""
    import http.server
    import threading

    paths = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", paths
    server.shutdown()


def test_run_honours_the_standard_otlp_variables(saved, otlp_receiver, monkeypatch):
    url, paths = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    code, out = run_cli("run", "--model", saved["model"], "--proxy", saved["proxy"], "--calibration",
                        saved["calibration"], "--image", saved["image"], "--question", "What?", "--max-new-tokens", "2")
    assert code == 0, out
    assert "/v1/traces" in paths and "/v1/metrics" in paths


def test_every_command_that_guards_takes_the_telemetry_options():
    from guardrail.cli.main import build_parser

    for command in (["demo"], ["run", "--image", "x", "--question", "q"]):
        args = build_parser().parse_args([*command, "--otlp-endpoint", "http://h:4318", "--phoenix", "http://h:6006"])
        assert args.otlp_endpoint == "http://h:4318" and args.phoenix == "http://h:6006"


@pytest.mark.slow
def test_demo_exports_to_the_otlp_endpoint_flag(saved, otlp_receiver, tmp_path):
    url, paths = otlp_receiver
    code, text = run_cli("demo", "--out", tmp_path / "demo", "--model", saved["model"], "--proxy", saved["proxy"],
                         "--calibration", saved["calibration"], "--pool", "2", "--otlp-endpoint", url)
    assert code == 0, text
    assert "/v1/traces" in paths and "/v1/metrics" in paths


def test_calibrate_group_by_family_from_stored_signals(tmp_path):
    """Per-family thresholds where a family has enough right and wrong answers, the global one elsewhere."""
    import numpy as np

    from calibration import AnswerSignals, Calibration
    from guardrail.calibrate import ScoredAnswer, write_signals

    rng = np.random.default_rng(0)
    rows = []
    for fam, n, p_right, shift in (("attribute", 240, 0.7, 0.0), ("counting", 240, 0.5, 0.4), ("rare", 40, 1.0, 0.0)):
        for k in range(n):
            ok = bool(rng.random() < p_right)
            lp = np.log(rng.uniform(0.7, 1.0, 2) if ok else rng.uniform(0.1, 0.8, 2)) - shift
            rows.append(ScoredAnswer(id=f"{fam}-{k}", answer="a", correct=ok, extra={"family": fam},
                                     signals=AnswerSignals(content=np.array([True, True]), token_logprob=lp,
                                                           group=fam)))
    sig = write_signals(tmp_path / "signals.jsonl", rows, meta={"model_id": "m", "model_hash": "sha256:abc"})
    out = tmp_path / "cal.json"
    code, text = run_cli("calibrate", "--from-signals", sig, "--out", out, "--score", "token_nll",
                         "--rule", "density_crossing", "--group-by", "family")
    assert code == 0, text
    cal = Calibration.load(out)
    assert cal.groups is not None and cal.groups.key == "family"
    assert set(cal.groups.thresholds) == {"attribute", "counting"}  # 'rare' has no wrong answer: fallback
    assert cal.groups.thresholds["attribute"] != cal.groups.thresholds["counting"]
    assert set(cal.groups.heldout_metrics) == {"attribute", "counting"}
    assert "per-family thresholds" in text and "the global threshold for: rare" in text
    assert cal.model_hash == "sha256:abc"  # the signals' identity reaches the artifact
    assert cal.verdict(cal.groups.thresholds["counting"] - 1e-9, group="counting") == "confident"
    assert cal.verdict(cal.groups.thresholds["counting"] + 1e-9, group="counting") == "uncertain"
    assert cal.threshold_for("rare") == cal.threshold


# ---------------------------------------------------------------- exit codes (the property tests: test_error_contract.py)


@pytest.mark.parametrize("argv", [["run"], ["policy"], ["calibrate", "--data"], ["nonsense"], ["run", "--max-new-tokens", "x"]])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_input_errors_print_one_line_and_exit_2(tmp_path):
    buf = io.StringIO()
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: p\nversion: 1\ndefault: {action: allow}\nrules: [1, 2]\n")
    code = main(["calibrate", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "c.json")],
                console=Console(file=buf, width=300, color_system=None))
    assert code == 2
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")

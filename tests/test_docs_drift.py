"""What the docs say about the shipped defaults, checked against the program (issue #31, item 12).

test_docs_commands.py runs the docs' commands; these tests catch the statements that go stale
when a default changes: which score the shipped calibration uses, calibrate's defaults, the
policy conditions the validator accepts, what the demo shows, how to run the tests without a browser.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# How the docs name each score in words, beside its registry name.
SCORE_WORDS = {
    "low_margin": ("low_margin", "token margin"),
    "map_entropy": ("map_entropy", "map entropy", "relevancy-map entropy"),
    "token_nll": ("token_nll",),
    "predictive_entropy": ("predictive_entropy",),
    "map_spread": ("map_spread",),
    "fused": ("fused",),
}


def text_of(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


def shipped() -> dict:
    from shapesvqa.assets import reference_calibration_path

    return json.loads(reference_calibration_path().read_text())


def test_every_shipped_default_named_in_the_docs_is_the_shipped_calibrations_score():
    score = shipped()["score"]["name"]
    others = [w for name, words in SCORE_WORDS.items() if name != score for w in words]
    bad = []
    for doc in DOCS:
        for m in re.finditer(r"shipped default[^.;|]{0,80}", text_of(doc)):
            said = m.group(0)
            if not any(w in said for w in SCORE_WORDS[score]) and any(w in said for w in others):
                bad.append(f"{doc.name}: {said!r}")
    assert not bad, f"the shipped calibration's score is {score}, but the docs say:\n" + "\n".join(bad)


def test_the_docs_do_not_call_the_verdicts_score_an_entropy_unless_it_is_one():
    if shipped()["score"]["name"] == "map_entropy":
        return
    stale = [r"score itself is an entropy", r"answer \*\*score\*\* \(aggregated relevancy-map entropy",
             r"looked at a focused part of the image", r"verdict's score is the (map )?entropy"]
    bad = [f"{doc.name}: {pat}" for doc in DOCS for pat in stale if re.search(pat, text_of(doc))]
    assert not bad, "the shipped score is not map entropy:\n" + "\n".join(bad)


def test_policies_md_names_the_shipped_score_where_it_says_what_the_score_is():
    intro = text_of(ROOT / "docs" / "policies.md").split("## ")[0]
    assert any(w in intro for w in SCORE_WORDS[shipped()["score"]["name"]])


def test_calibrate_defaults_in_the_docs_are_the_parsers_and_the_shipped_calibrations():
    from guardrail.cli.main import PRESETS, build_parser

    text = text_of(ROOT / "docs" / "calibration.md")
    m = re.search(r"defaults: the shipped recipe, `--score (\w+) --aggregation (\w+) --rule (\w+) "
                  r"--target-precision ([\d.]+) --delta ([\d.]+) --novelty-quantile ([\d.]+)`", text)
    assert m, "docs/calibration.md no longer states calibrate's defaults"
    score, agg, rule, target, delta, quantile = m.groups()
    args = build_parser().parse_args(["calibrate", "--out", "o.json"])
    assert (args.score, args.rule, args.target_precision, args.delta) == (score, rule, float(target), float(delta))
    assert (PRESETS["shipped"]["aggregation"], PRESETS["shipped"]["novelty_quantile"]) == (agg, float(quantile))
    cal = shipped()
    assert (cal["score"]["name"], cal["score"]["params"]["aggregation"], cal["rule"]) == (score, agg, rule)
    assert (cal["target_precision"], cal["delta"], cal["novelty_gate"]["quantile"]) == (
        float(target), float(delta), float(quantile))
    flags = re.search(r"^CALIBRATION_FLAGS := (.*?)(?<!\\)$", (ROOT / "Makefile").read_text(),
                      re.MULTILINE | re.DOTALL).group(1)
    for flag, value in (("--score", score), ("--aggregation", agg), ("--rule", rule), ("--target-precision", target),
                        ("--delta", delta), ("--novelty-quantile", quantile)):
        assert f"{flag} {value}" in " ".join(flags.replace("\\\n", " ").split()), flag
    # the rules table marks the default rule
    assert f"| `{rule}` (default) |" in text


def test_policies_md_lists_every_condition_and_verdict_the_validator_accepts():
    from policies.schema import Conditions, VerdictCondition

    text = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
    table = text.split("### Conditions (`when`)", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert documented == set(Conditions.model_fields), "the conditions table and the schema differ"
    verdict_row = next(line for line in table.splitlines() if line.startswith("| `verdict`"))
    for verdict in get_args(VerdictCondition):
        assert f"`{verdict}`" in verdict_row, verdict


def test_the_readme_says_what_the_demo_shows():
    from guardrail.cli.main import build_parser
    from guardrail.cli.demo import run_demo

    text = text_of(ROOT / "README.md")
    m = re.search(r"The demo answers (\d+) scenes and (\d+) more POPE .*? up to (\d+) answers it got right and "
                  r"(\d+) it got wrong", text)
    assert m, "README no longer says what the demo shows"
    args = build_parser().parse_args(["demo"])
    defaults = {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}
    assert tuple(map(int, m.groups())) == (args.pool, args.pope_scenes, defaults["show_right"], defaults["show_wrong"])
    assert "prints each answer" not in text


def test_the_readme_says_what_make_test_installs_and_how_to_skip_the_browser():
    text = text_of(ROOT / "README.md")
    assert "chromium-headless-shell" in text and "MB of system packages" in text
    assert 'pytest -q -m "not browser"' in text
    makefile = (ROOT / "Makefile").read_text()
    assert "apt-get install -y -q chromium-headless-shell" in makefile  # what the README warns about
    report_tests = (ROOT / "tests" / "guardrail" / "test_report.py").read_text()
    assert report_tests.count("@pytest.mark.browser") == report_tests.count("def test_") - report_tests.count(
        "def test_report_calls_without") - report_tests.count("def test_batch_rows")

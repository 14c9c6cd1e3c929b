"""The docs' commands and Python examples, run offline, against what the docs say about them.

Every command shown in a fenced block of README.md and docs/*.md must parse with the real
parsers; the ones that run offline are run (policy check, the quickstart's Python examples,
shapesvqa export), and the numbers and exit codes the quickstart states are checked against
the program, so the docs and the program cannot drift apart unnoticed.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import shlex
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("guardrail", "fastrm", "shapesvqa")


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """(first line number, language, text) of every fenced block of a markdown file."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            lang, start, body = lines[i].strip()[3:], i + 2, []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, lang, "\n".join(body)))
        i += 1
    return blocks


def documented_commands() -> list[tuple[str, str]]:
    """("file:line", command) for every concrete command of ours in a fenced block (placeholders skipped)."""
    found = []
    for doc in DOCS:
        for start, _lang, text in fenced_blocks(doc):
            pending, first = "", start
            for k, line in enumerate(text.splitlines()):
                line = line.strip().removeprefix("$ ")
                if not pending:
                    first = start + k
                line = f"{pending} {line}".strip() if pending else line
                if line.endswith("\\"):  # continued on the next line
                    pending = line[:-1].strip()
                    continue
                pending = ""
                line = re.sub(r"\s+#.*$", "", line)  # a trailing comment
                if line.split(" ", 1)[0] in PROGRAMS and not re.search(r"\[|\.\.\.|──►", line):
                    found.append((f"{doc.name}:{first}", line))
    return found


def parser_of(program: str):
    if program == "guardrail":
        from guardrail.cli.main import build_parser
    elif program == "fastrm":
        from fastrm_core.cli import build_parser
    else:
        from shapesvqa.cli import build_parser
    return build_parser()


def run_guardrail(*argv: str) -> tuple[int, str]:
    from guardrail.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # commands that print with their own console
        code = main(list(argv), console=Console(file=buf, width=200, color_system=None))
    return code, buf.getvalue()


def test_every_documented_command_parses():
    commands = documented_commands()
    assert len(commands) > 20, "the docs' commands were not found: did the extraction break?"
    bad = []
    for where, line in commands:
        argv = shlex.split(line)
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                parser_of(argv[0]).parse_args(argv[1:])
        except SystemExit:
            bad.append(f"{where}: {line}\n    {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, "documented commands the program rejects:\n" + "\n".join(bad)


def test_quickstart_policy_check_output_is_what_the_program_prints():
    block = next(text for _, lang, text in fenced_blocks(QUICKSTART)
                 if lang == "console" and text.startswith("$ guardrail policy check strict"))
    expected = block.splitlines()[1:]
    code, out = run_guardrail("policy", "check", "strict")
    assert code == 0
    assert [line.rstrip() for line in out.splitlines()] == expected


def test_quickstart_exit_codes():
    text = " ".join(QUICKSTART.read_text(encoding="utf-8").split())
    assert ("exits with 0 on success, 1 when a check fails or there is nothing to show, 2 on bad input "
            "(a `GuardrailError` or a missing file") in text
    assert run_guardrail("policy", "check", "nonexist.yaml")[0] == 2  # a missing file
    assert run_guardrail("view", "nonexist.jsonl")[0] == 2
    assert run_guardrail("policy", "check", "strict")[0] == 0


def test_quickstart_numbers_of_the_demo_are_the_program_defaults():
    from guardrail.cli.main import build_parser
    from guardrail.cli.demo import run_demo

    text = " ".join(QUICKSTART.read_text(encoding="utf-8").split())
    scenes, seed = map(int, re.search(r"The demo draws (\d+) ShapesVQA scenes \(seed (\d+)\)", text).groups())
    tokens = int(re.search(r"at most (\d+) new tokens per answer", text).group(1))
    right = int(re.search(r"\(green panels, up to (\d+)\)", text).group(1))
    wrong = int(re.search(r"\(red panels, up to (\d+)\)", text).group(1))
    args = build_parser().parse_args(["demo"])
    defaults = {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}
    assert (args.pool, args.seed, args.out) == (scenes, seed, "guardrail-demo")
    pope_scenes, pope_seed = map(int, re.search(r"about (\d+) more scenes \(seed (\d+)\)", text).groups())
    assert (args.pope_scenes, args.pope_seed) == (pope_scenes, pope_seed)
    assert (defaults["pope_scenes"], defaults["pope_seed"]) == (pope_scenes, pope_seed)
    assert (defaults["max_new_tokens"], defaults["show_right"], defaults["show_wrong"]) == (tokens, right, wrong)
    run_default = int(re.search(r"`--max-new-tokens N` \(default (\d+)\)", text).group(1))
    assert build_parser().parse_args(["run", "--image", "i", "--question", "q"]).max_new_tokens == run_default


def test_quickstart_make_extras_are_the_makefile_extras():
    text = " ".join(QUICKSTART.read_text(encoding="utf-8").split())
    documented = re.search(r"`make` installs the extras `([\w,]+)`", text).group(1)
    makefile = re.search(r"^EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert documented == makefile


def test_shapesvqa_export_writes_what_the_docs_list(tmp_path, monkeypatch):
    from shapesvqa.cli import main

    doc = (ROOT / "docs" / "shapesvqa.md").read_text(encoding="utf-8")
    argv = shlex.split(re.search(r"^shapesvqa export (.+)$", doc, re.MULTILINE).group(1))
    argv[argv.index("--n") + 1] = "3"  # the documented command, on fewer questions
    monkeypatch.chdir(tmp_path)
    assert main(["export", *argv]) == 0
    out = Path(argv[argv.index("--out") + 1])
    listed = re.findall(r"^(\S+/(?:data\.jsonl|images/\{id\}\.png|masks/\{id\}_\{k\}\.png))", doc, re.MULTILINE)
    assert len(listed) == 3
    for pattern in listed:
        glob = pattern.replace("{id}", "*").replace("{k}", "*")
        assert list(Path().glob(glob)), f"docs/shapesvqa.md lists {pattern}, export wrote none"
    assert (out / "data.jsonl").read_text().count("\n") == 3
    assert main(["export", "--n", "2"]) == 0  # a first try without options works too


def test_quickstart_python_examples_run_offline(tmp_path, monkeypatch):
    """Sections 3 (first call), 4 (streaming), 5 (batching) and 7 (traces), in order, in one namespace."""
    blocks = [text for _, lang, text in fenced_blocks(QUICKSTART) if lang == "python"]
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for k, code in enumerate(blocks):
            exec(compile(code, f"docs/quickstart.md python block {k + 1}", "exec"), namespace)
    printed = out.getvalue()
    assert "(T, 8, 8)" in QUICKSTART.read_text() and re.search(r"^\(\d+, 8, 8\)$", printed, re.MULTILINE)
    assert "What color is the circle? ->" in printed
    result = namespace["result"]
    assert result.maps.shape[1:] == (8, 8) and result.verdict in ("confident", "uncertain")
    assert (tmp_path / "scene.png").is_file() and (tmp_path / "trace.jsonl").stat().st_size > 0
    assert "apply_guardrail fastrm" in printed

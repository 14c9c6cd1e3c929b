"""The claim guard on descriptions, measured on a fresh ShapesVQA split (issue 27).

Every scene of the split is described by the model under the Guard (claims cut by ShapesVQA's
``shapes`` splitter: one claim per object mention, judged by the claim calibration; a ``redact``
policy removes the uncertain ones). Each mention is labelled by the scene
(:func:`shapesvqa.world.label_description`: correct, wrong size, or invented). Reported:

- per score: claim-level AUROC of a wrong mention (invented or wrong size) against a correct one,
  and of an invented mention alone; fitted scores (``state_probe``, ``fused``) are fitted on
  ``--fit-signals`` (the claim calibration's stored signals) and left out without it;
- the shipped claim verdict: share of invented and wrong mentions marked uncertain, share of correct
  mentions kept;
- after ``redact``: CHAIR_s, CHAIR_i and Cover of the redacted descriptions against the originals,
  and the share of correct mentions kept;
- the cost: the Guard's time per description over a plain ``model.generate`` of the same prompt and
  length, measured side by side in this run (interleaved), and where the difference goes: the guarded
  ``generate`` over the plain one, and the scoring, claims and policy after it (``GuardResult.timings``).

    python benchmarks/claims_guard.py --n 300 --seed 8087 --fit-signals runs/claim-calibration-signals.jsonl \\
        --out runs/claims-guard.json

Seeds: 8087 reports (docs/shapesvqa.md); develop on another (2726).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from calibration import auroc, fit_score, lookup_score, table_scores
from fastrm_core.inputs import prepare_inputs
from guardrail import Guard
from guardrail.answers.claims import claim_signals, split_and_align
from guardrail.calibrate import read_signals
from policies import Policy
from shapesvqa.world import DESCRIBE, WORLDS, chair_metrics, label_description, make_example

REDACT = Policy.model_validate({"id": "redact-uncertain-claims", "version": "1", "default": {"action": "allow"},
                                "rules": [{"name": "redact", "when": {"claims": {"any_uncertain": True}},
                                           "action": "redact"}]})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="reference")
    ap.add_argument("--world", default=None, help="the model's world (default: the shipped model's)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=8087)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--fit-signals", type=Path, default=None, help="the claim calibration's --signals-out file")
    ap.add_argument("--timing-n", type=int, default=40, help="descriptions timed side by side (guard vs plain)")
    ap.add_argument("--timing-rounds", type=int, default=2, help="passes over the timed descriptions (medians over all)")
    ap.add_argument("--cost-only", action="store_true", help="only the cost (no quality figures, no --out file)")
    ap.add_argument("--visual-contrast", action="store_true",
                    help="run the image-free pass even if the claim calibration does not use it (its cost, its score)")
    ap.add_argument("--out", type=Path, default=Path("runs/claims-guard.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    from shapesvqa.assets import reference_world

    world = WORLDS[args.world or reference_world()].truthful()
    guard = Guard.from_pretrained(args.model, policy=REDACT, visual_contrast=True if args.visual_contrast else None)
    if guard.claim_calibration is None:
        console.print("[red]no claim calibration: fit one with `make reference-claim-calibration`[/red]")
        return 2
    examples = [make_example(args.seed, i, world, family=DESCRIBE) for i in range(args.n)]
    if args.cost_only:
        cost = _timing(guard, examples[: args.timing_n], args.max_new_tokens, args.timing_rounds)
        _print_cost(console, cost, args.threads)
        return 0

    fitted = {}
    if args.fit_signals is not None:
        fit_rows, _ = read_signals(args.fit_signals)
        sig, ok = [r.signals for r in fit_rows], np.array([r.correct for r in fit_rows])
        for name, params in table_scores():
            cls = lookup_score(name)
            if cls.fitted and name != "novelty" and cls.available(sig, **params):
                fitted[cls.table_label(**params)] = fit_score(name, sig, ok, **params)

    claims, before, after, kept_ok = [], [], [], []
    tok = guard.processor.tokenizer
    for ex in examples:
        r = guard.generate(ex.image, ex.question, max_new_tokens=args.max_new_tokens)
        labels = {(m.start, m.end): m.label for m in label_description(r.answer, ex.scene.objects)}
        extra = {}
        if fitted and r.claims:  # the fitted scores see the same claim signals the Guard built
            from guardrail.answers.pipeline import answer_signals

            aligned = split_and_align(r.answer, tok, r.token_ids, guard.claims)
            sig = _row_signals(guard, ex, r, answer_signals)
            for c in aligned:
                cs = claim_signals(sig, c)
                extra[(c.span.start, c.span.end)] = {k: s(cs) for k, s in fitted.items()}
        for c in r.claims:
            label = labels.get((c.start, c.end))
            if label is None:
                continue
            claims.append({"label": label, "verdict": c.verdict, "redacted": c.redacted,
                           "scores": {**c.scores, **({"claim score": c.score} if c.score is not None else {}),
                                      **extra.get((c.start, c.end), {})}})
        before.append((label_description(r.answer, ex.scene.objects), len(ex.scene.objects)))
        after.append((label_description(r.text, ex.scene.objects), len(ex.scene.objects)))
        kept_ok += [not c.redacted for c in r.claims if labels.get((c.start, c.end)) == "correct"]

    wrong = np.array([c["label"] != "correct" for c in claims])
    invented = np.array([c["label"] == "invented" for c in claims])
    names = sorted({k for c in claims for k, v in c["scores"].items() if v is not None})
    table = []
    for name in names:
        vals = np.array([np.nan if c["scores"].get(name) is None else c["scores"][name] for c in claims])
        ok = np.isfinite(vals)
        table.append({"score": name, "auroc_wrong": auroc(vals[ok], wrong[ok]) if ok.sum() > 1 else None,
                      "auroc_invented": auroc(vals[ok & (invented | ~wrong)], invented[ok & (invented | ~wrong)])
                      if (ok & invented).any() else None, "n": int(ok.sum())})
    uncertain = np.array([c["verdict"] == "uncertain" for c in claims])
    verdict = {"n_claims": len(claims), "n_invented": int(invented.sum()), "n_wrong": int(wrong.sum()),
               "invented_uncertain": float(uncertain[invented].mean()) if invented.any() else None,
               "wrong_uncertain": float(uncertain[wrong].mean()) if wrong.any() else None,
               "correct_kept": float(np.mean(kept_ok)) if kept_ok else None}
    chair = {"original": chair_metrics(before), "redacted": chair_metrics(after)}
    o, rd = chair["original"]["chair_i"], chair["redacted"]["chair_i"]
    chair["chair_i_cut"] = None if not o else round(1 - (rd or 0) / o, 4)
    cost = _timing(guard, examples[: args.timing_n], args.max_new_tokens, args.timing_rounds)
    report = {"model": args.model, "world": args.world or reference_world(), "n": args.n,
              "seed": args.seed, "claim_calibration": guard.claim_calibration.score.name,
              "threshold": guard.claim_calibration.threshold, "scores": table, "verdict": verdict,
              "chair": chair, "cost": cost}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    t = Table(title=f"claim-level AUROC on {len(claims)} mentions ({int(wrong.sum())} wrong, "
                    f"{int(invented.sum())} invented) of {args.n} descriptions, seed {args.seed}")
    for col in ("score", "AUROC wrong vs correct", "AUROC invented vs correct"):
        t.add_column(col, justify="left" if col == "score" else "right")
    for row in sorted(table, key=lambda r: -(r["auroc_wrong"] or 0)):
        t.add_row(row["score"], _f(row["auroc_wrong"]), _f(row["auroc_invented"]))
    console.print(t)
    console.print(f"shipped claim verdict ({guard.claim_calibration.score.name}, threshold "
                  f"{_f(guard.claim_calibration.threshold)}): invented marked uncertain {_f(verdict['invented_uncertain'])}, "
                  f"wrong {_f(verdict['wrong_uncertain'])}, correct mentions kept {_f(verdict['correct_kept'])}")
    c1, c2 = chair["original"], chair["redacted"]
    console.print(f"CHAIR_s {_f(c1['chair_s'])} -> {_f(c2['chair_s'])}, CHAIR_i {_f(c1['chair_i'])} -> "
                  f"{_f(c2['chair_i'])} (cut {_f(chair['chair_i_cut'])}), Cover {_f(c1['cover'])} -> {_f(c2['cover'])}")
    _print_cost(console, cost, args.threads)
    console.print(f"wrote {args.out}")
    return 0


def _row_signals(guard, ex, r, answer_signals):
    """The answer's signals of one guarded description, recomputed the Guard's way (for fitted scores)."""
    from fastrm_core import capture
    from guardrail.answers.pipeline import generation_rows
    from guardrail.answers.token_signals import TokenSignals
    from guardrail.generation import with_recorder

    inputs = guard.prepare([ex.image], [ex.question])
    rec = TokenSignals()
    with torch.no_grad(), capture(guard.model, guard.proxy, adapter=guard.adapter, keep_states=True) as cap:
        out = guard.model.generate(**inputs, **with_recorder({"max_new_tokens": len(r.token_ids), "do_sample": False},
                                                             rec))
    rows = generation_rows(cap, rec, out)
    if guard.visual_contrast:  # the image-free pass, as the Guard ran it
        from guardrail.answers.pipeline import add_imageless_logprobs

        add_imageless_logprobs(rows, guard.model, inputs, out, guard.adapter)
    row = rows[0]
    from fastrm_common.tokens import eos_token_ids

    tok = guard.processor.tokenizer
    eos = set(eos_token_ids(guard.model, tok)) | guard.adapter.stop_token_ids(tok)
    return answer_signals(r.token_ids, tok, maps=row.maps[: len(r.token_ids)], eos_ids=eos, **row.token_signals)


def _print_cost(console, cost: dict, threads: int) -> None:
    console.print(f"cost: guard {cost['guard_s']:.4f} s / plain generate {cost['plain_s']:.4f} s per description "
                  f"= {cost['ratio']:.3f}x ({cost['n']} descriptions x {cost['rounds']} rounds, interleaved, "
                  f"processor call in both, the Guard's input checks on its side, image-free pass {'on' if cost['visual_contrast'] else 'off'}, "
                  f"{threads} thread(s))")
    console.print(f"  of which (medians): generate under guard +{cost['generate_over_plain_s'] * 1e3:.2f} ms over the plain "
                  f"one (capture, signals{', image-free pass' if cost['visual_contrast'] else ''}), scoring, claims and "
                  f"policy after it {cost['after_generate_s'] * 1e3:.2f} ms")


def _timing(guard, examples, max_new_tokens: int, rounds: int = 1) -> dict:
    """Guard time per description over plain generate time, interleaved so load affects both alike.

    Both include the prompt and the processor call (as ``benchmarks/guard_overhead.py`` does): a plain
    caller builds its inputs too, but without the Guard's input checks, which count as the Guard's cost."""
    g_t, p_t, gen_t, model_t, post_t = [], [], [], [], []
    for ex in [ex for _ in range(max(1, rounds)) for ex in examples]:
        t0 = time.perf_counter()
        with torch.no_grad():
            inputs = prepare_inputs(guard.model, guard.processor, [ex.image], [guard.prompt(ex.question)])
            t1 = time.perf_counter()
            guard.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        p_t.append(time.perf_counter() - t0)
        gen_t.append(time.perf_counter() - t1)
        t0 = time.perf_counter()
        r = guard.generate(ex.image, ex.question, max_new_tokens=max_new_tokens)
        g_t.append(time.perf_counter() - t0)
        model_t.append(r.timings.model_s)
        post_t.append(r.timings.guard_s)
    g, p = float(np.median(g_t)), float(np.median(p_t))
    # where the difference goes: the guarded generate (capture, signals) over the plain one, and the
    # scoring, claims and policy after it (GuardResult.timings)
    return {"n": len(examples), "rounds": max(1, rounds), "guard_s": g, "plain_s": p, "ratio": g / p if p else None,
            "visual_contrast": bool(guard.visual_contrast),
            "generate_over_plain_s": float(np.median(model_t)) - float(np.median(gen_t)),
            "after_generate_s": float(np.median(post_t))}


def _f(x):
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``fastrm`` command line (also ``python -m fastrm_core``).

    fastrm distill build --data shapes-train/data.jsonl --out runs/ds
    fastrm distill train --data runs/ds --out runs/proxy
    fastrm distill eval  --data shapes-test/data.jsonl --out runs/report.json --proxy runs/proxy

Each command parses its arguments, calls a library function, saves and prints. Errors the
library raises on purpose (:class:`~fastrm_common.errors.GuardrailError`) are printed without a
traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``fastrm`` argument parser."""
    from fastrm_core.distill.cli import add_distill_parser

    parser = argparse.ArgumentParser(prog="fastrm", description="FastRM relevancy maps: distillation tools.")
    sub = parser.add_subparsers(dest="command", metavar="{distill}")
    sub.required = True
    add_distill_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fastrm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from fastrm_common.errors import GuardrailError

    args = build_parser().parse_args(argv)
    if hasattr(args, "model"):  # a command that loads a model
        from fastrm_core.verbosity import quiet_model_loading

        quiet_model_loading(args.model, verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except GuardrailError as exc:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

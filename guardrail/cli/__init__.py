"""The ``guardrail`` command line: :func:`main` (:mod:`~guardrail.cli.main`), the demo
(:mod:`~guardrail.cli.demo`) and ``guardrail serve``'s arguments (:mod:`~guardrail.cli.serve`)."""

from guardrail.cli.main import main  # noqa: F401  (the console script guardrail.cli:main)

"""The answer pipeline of a guarded call: token signals recorded during ``generate``
(:mod:`~guardrail.answers.token_signals`), then per row the answer's signals, every score and the
verdict (:mod:`~guardrail.answers.pipeline`). Shared by the Guard, ``guardrail calibrate``,
``guardrail serve`` and the benchmarks."""

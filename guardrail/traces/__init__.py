"""Reading guarded calls back from traces: the calls of a JSONL trace (:mod:`~guardrail.traces.calls`),
the terminal viewer (:mod:`~guardrail.traces.viewer`), the HTML report (:mod:`~guardrail.traces.report`)
and the drawing of maps (:mod:`~guardrail.traces.render`)."""

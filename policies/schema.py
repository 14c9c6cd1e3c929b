"""The policy schema: what a policy YAML file may contain.

A policy maps the outcome of a guarded call (verdict, score, number of answer
tokens, per-token entropy, request tags) to an action. Every model here is a
strict pydantic v2 model (``extra="forbid"``, no type coercion), so a typo in a
YAML key or a wrong type fails loudly with the field's name; see
:mod:`policies.loading` for how those errors are reported with file and line.

Shape of a policy (the YAML reference is ``docs/policies.md``)::

    id: default                      # required, a slug
    version: "1"                     # required, a string or an integer
    description: ...                 # optional
    on_error: fail_open              # fail_open | fail_closed
    abstain_message: "..."           # text returned by abstain (overridable per action)
    rules:                           # ordered; the first rule whose `when` matches wins
      - name: confident
        when: {verdict: confident}   # all conditions ANDed; no `when` = always matches
        action: allow
    default:                         # required: used when no rule matches
      action: flag
      reason: "uncertain answer"

Example::

    >>> from policies.schema import Policy
    >>> p = Policy.model_validate({"id": "p", "version": "1", "default": {"action": "allow"}})
    >>> p.default.action
    'allow'
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ACTIONS",
    "ON_ERROR_MODES",
    "RESERVED_RULE_NAMES",
    "VERDICTS",
    "ActionName",
    "ActionSpec",
    "Bounds",
    "ClaimConditions",
    "Conditions",
    "Escalation",
    "OnError",
    "Policy",
    "Rule",
    "Verdict",
]

ActionName = Literal["allow", "flag", "redact", "abstain", "escalate"]
Verdict = Literal["confident", "uncertain"]
#: what a ``when: {verdict: ...}`` condition may ask: a verdict, or ``unscored`` (an observe-only guard gave none)
VerdictCondition = Literal["confident", "uncertain", "unscored"]
OnError = Literal["fail_open", "fail_closed"]

ACTIONS: tuple[str, ...] = get_args(ActionName)
VERDICTS: tuple[str, ...] = get_args(Verdict)
ON_ERROR_MODES: tuple[str, ...] = get_args(OnError)

DEFAULT_ABSTAIN_MESSAGE = "I am not confident enough in this answer to give it."
DEFAULT_WITHHELD_MESSAGE = "This answer is being reviewed and cannot be shown yet."

# The decision engine reports these as the rule of a decision that no rule made.
RESERVED_RULE_NAMES = ("default", "on_error")

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# "package.module:attribute" or "package.module:Class.method"
_HANDLER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class _Strict(BaseModel):
    """Base of every schema model: unknown keys rejected, no coercion, immutable, numbers finite."""

    # allow_inf_nan=False: a bound of .nan never matches and .inf makes a rule vacuous;
    # either is a silent policy bypass, so both are schema errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Bounds(_Strict):
    """A numeric range; every bound is optional but at least one is required.

    ``{gte: 0.2, lt: 0.5}`` means ``0.2 <= x < 0.5``. A value matches when it
    satisfies every bound given.

    >>> Bounds(gte=0.2, lt=0.5).contains(0.3), Bounds(gte=0.2, lt=0.5).contains(0.5)
    (True, False)
    """

    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Bounds:
        if self.gt is not None and self.gte is not None:
            raise PydanticCustomError("bounds", "give at most one of 'gt' and 'gte'")
        if self.lt is not None and self.lte is not None:
            raise PydanticCustomError("bounds", "give at most one of 'lt' and 'lte'")
        lo = self.gt if self.gt is not None else self.gte
        hi = self.lt if self.lt is not None else self.lte
        if lo is None and hi is None:
            raise PydanticCustomError("bounds", "give at least one of 'gt', 'gte', 'lt', 'lte'")
        if lo is not None and hi is not None:
            closed = self.gte is not None and self.lte is not None
            if lo > hi or (lo == hi and not closed):
                raise PydanticCustomError(
                    "bounds", "empty range: no number satisfies {text}", {"text": self.describe("x")}
                )
        return self

    def contains(self, x: float) -> bool:
        """True when ``x`` satisfies every bound given."""
        return (
            (self.gt is None or x > self.gt)
            and (self.gte is None or x >= self.gte)
            and (self.lt is None or x < self.lt)
            and (self.lte is None or x <= self.lte)
        )

    def describe(self, name: str) -> str:
        """The range in words: ``Bounds(gte=0.2, lt=0.5).describe("score") == "0.2 <= score < 0.5"``."""
        left = (
            f"{_num(self.gte)} <= " if self.gte is not None else (f"{_num(self.gt)} < " if self.gt is not None else "")
        )
        right = (
            f" < {_num(self.lt)}" if self.lt is not None else (f" <= {_num(self.lte)}" if self.lte is not None else "")
        )
        return f"{left}{name}{right}"


def _num(x: float) -> str:
    return f"{x:g}"


class ClaimConditions(_Strict):
    """The ``claims`` block of a ``when``: conditions on the answer's claims (their verdicts and scores).

    - ``any_uncertain``: true matches an answer with at least one ``uncertain`` claim (false: with none).
    - ``n_uncertain``: range of the number of uncertain claims.
    - ``share_uncertain``: range of the share of uncertain claims among the claims with a verdict.
    - ``max_score``: range of the largest claim score (the claim calibration's score; higher = more
      uncertain).

    An answer whose claims have no verdict (no claim calibration, more than one claim) matches no
    condition on verdicts.
    """

    any_uncertain: bool | None = None
    n_uncertain: Bounds | None = None
    share_uncertain: Bounds | None = None
    max_score: Bounds | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ClaimConditions:
        if all(getattr(self, n) is None for n in type(self).model_fields):
            raise PydanticCustomError("claims_empty", "give at least one of 'any_uncertain', 'n_uncertain', "
                                      "'share_uncertain', 'max_score'")
        return self

    def describe(self) -> str:
        parts = []
        if self.any_uncertain is not None:
            parts.append("some claim is uncertain" if self.any_uncertain else "no claim is uncertain")
        for name in ("n_uncertain", "share_uncertain", "max_score"):
            bounds = getattr(self, name)
            if bounds is not None:
                parts.append(bounds.describe(f"claims {name}"))
        return " and ".join(parts)


class Conditions(_Strict):
    """The ``when`` block of a rule. Every condition is optional; those given are ANDed.

    - ``verdict``: the calibrated verdict, ``confident`` or ``uncertain``; ``unscored``
      matches a call without a verdict (an observe-only guard, without a calibration).
    - ``score``: range of the answer score (aggregated entropy; higher = more uncertain).
    - ``margin``: range of ``score - threshold`` (positive = on the uncertain side),
      which does not depend on the scale of a particular model's scores.
    - ``n_answer_tokens``: range of the number of answer tokens scored.
    - ``max_token_entropy``: range of the largest per-token entropy in the answer.
    - ``scores``: ranges of named answer scores (each higher = more uncertain), e.g.
      ``scores: {token_nll: {gt: 0.9}}``; the guard rejects names it does not compute,
      listing the ones it does (see docs/calibration.md for each score).
    - ``claims``: conditions on the answer's claims (:class:`ClaimConditions`), e.g.
      ``claims: {any_uncertain: true}``.
    - ``tags_any``: the request carries at least one of these tags.
    - ``tags_all``: the request carries all of these tags.

    An empty ``when`` (or none) matches every request. A condition on a quantity
    the guard could not compute (``None`` in the context) does not match.
    """

    verdict: VerdictCondition | None = None
    score: Bounds | None = None
    margin: Bounds | None = None
    n_answer_tokens: Bounds | None = None
    max_token_entropy: Bounds | None = None
    scores: dict[str, Bounds] | None = Field(default=None, min_length=1)
    claims: ClaimConditions | None = None
    tags_any: list[str] | None = Field(default=None, min_length=1)
    tags_all: list[str] | None = Field(default=None, min_length=1)

    def is_empty(self) -> bool:
        """True when no condition is set, i.e. the block matches every request."""
        return all(getattr(self, name) is None for name in type(self).model_fields)

    def describe(self) -> str:
        """The conditions in words, e.g. ``"verdict is uncertain and 0.1 <= margin"``; ``"always"`` if none."""
        parts: list[str] = []
        if self.verdict is not None:
            parts.append(f"verdict is {self.verdict}")
        for name in ("score", "margin", "n_answer_tokens", "max_token_entropy"):
            bounds = getattr(self, name)
            if bounds is not None:
                parts.append(bounds.describe(name))
        for name, bounds in sorted((self.scores or {}).items()):
            parts.append(bounds.describe(f"score {name}"))
        if self.claims is not None:
            parts.append(self.claims.describe())
        if self.tags_any is not None:
            parts.append(f"tags include any of [{', '.join(self.tags_any)}]")
        if self.tags_all is not None:
            parts.append(f"tags include all of [{', '.join(self.tags_all)}]")
        return " and ".join(parts) if parts else "always"


class Escalation(_Strict):
    """Where an ``escalate`` action sends the case, and what the user sees meanwhile.

    Exactly one of:

    - ``handler``: ``"package.module:callable"``, imported when the escalation
      runs and called with one dict (the escalation record);
    - ``queue``: a JSONL file that receives one line per escalation (append
      only; parents created; a new file is private, ``0600``). A relative path is
      resolved against the directory of the policy file when loaded from a
      file, else the working directory. ``~`` is not expanded (refused), and the
      queue must be a regular file, not a symbolic link, FIFO or device.

    ``withhold`` (default true) replaces the answer by ``message`` while the case
    is reviewed; ``withhold: false`` returns the answer, flagged.
    """

    handler: str | None = None
    queue: str | None = None
    withhold: bool = True
    message: str | None = Field(default=None, min_length=1)

    @field_validator("handler")
    @classmethod
    def _handler_syntax(cls, v: str | None) -> str | None:
        if v is not None and not _HANDLER.match(v):
            raise PydanticCustomError(
                "handler_syntax",
                "invalid handler '{value}'; expected 'package.module:callable'",
                {"value": v},
            )
        return v

    @field_validator("queue")
    @classmethod
    def _queue_nonempty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise PydanticCustomError("queue_empty", "queue path is empty")
        if v is not None and v.startswith("~"):
            # "~" depends on the HOME of whichever process loads the policy: say where, exactly
            raise PydanticCustomError(
                "queue_home", "queue path '{value}' starts with '~'; write the absolute path", {"value": v}
            )
        return v

    @model_validator(mode="after")
    def _exactly_one_target(self) -> Escalation:
        if (self.handler is None) == (self.queue is None):
            raise PydanticCustomError("escalation_target", "give exactly one of 'handler' and 'queue'")
        return self

    @property
    def target(self) -> str:
        """``"handler:<spec>"`` or ``"queue:<path>"``, for logs and telemetry."""
        return f"handler:{self.handler}" if self.handler is not None else f"queue:{self.queue}"


class ActionSpec(_Strict):
    """An action and its settings; the shape of ``default`` and of each rule's action.

    - ``action``: ``allow`` | ``flag`` | ``redact`` | ``abstain`` | ``escalate``; ``redact`` returns
      the answer without its uncertain claims (the answer unchanged when none is; the abstain message
      when every claim is).
    - ``reason``: text recorded with the decision (and shown with a flag);
      defaults to a description of the rule's conditions.
    - ``message``: for ``abstain`` only, the text returned instead of the answer
      (defaults to the policy's ``abstain_message``).
    - ``escalation``: required for ``escalate``, forbidden otherwise.
    """

    action: ActionName
    reason: str | None = Field(default=None, min_length=1)
    # validate_default so the cross-field checks below run even when the key is absent.
    message: str | None = Field(default=None, min_length=1, validate_default=True)
    escalation: Escalation | None = Field(default=None, validate_default=True)

    @field_validator("message")
    @classmethod
    def _message_only_for_abstain(cls, v: str | None, info: ValidationInfo) -> str | None:
        action = info.data.get("action")
        if v is not None and action is not None and action != "abstain":
            raise PydanticCustomError(
                "message_not_allowed",
                "'message' applies to action 'abstain' only (this action is '{action}'); "
                "for escalate, set escalation.message",
                {"action": action},
            )
        return v

    @field_validator("escalation")
    @classmethod
    def _escalation_iff_escalate(cls, v: Escalation | None, info: ValidationInfo) -> Escalation | None:
        action = info.data.get("action")
        if action == "escalate" and v is None:
            raise PydanticCustomError(
                "escalation_missing", "action 'escalate' needs an 'escalation' block with a 'handler' or a 'queue'"
            )
        if v is not None and action is not None and action != "escalate":
            raise PydanticCustomError(
                "escalation_not_allowed",
                "'escalation' applies to action 'escalate' only (this action is '{action}')",
                {"action": action},
            )
        return v


class Rule(ActionSpec):
    """A named rule: if every condition in ``when`` holds, take the action."""

    name: str = Field(min_length=1)
    when: Conditions = Field(default_factory=Conditions)

    @field_validator("name")
    @classmethod
    def _name_slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise PydanticCustomError(
                "name_syntax",
                "invalid rule name '{value}'; use letters, digits, '_', '-', '.'",
                {"value": v},
            )
        if v in RESERVED_RULE_NAMES:
            raise PydanticCustomError(
                "name_reserved",
                "rule name '{value}' is reserved; choose another name",
                {"value": v},
            )
        return v


class Policy(_Strict):
    """A complete policy: ordered rules (first match wins) and a default action.

    ``on_error`` says what the Guard does when the guard itself fails (proxy
    error, bad map): ``fail_open`` returns the answer flagged as unguarded,
    ``fail_closed`` abstains with ``abstain_message``.
    """

    id: str = Field(min_length=1)
    version: str
    description: str | None = None
    on_error: OnError = "fail_open"
    abstain_message: str = Field(default=DEFAULT_ABSTAIN_MESSAGE, min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    default: ActionSpec

    @field_validator("id")
    @classmethod
    def _id_slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise PydanticCustomError(
                "id_syntax", "invalid policy id '{value}'; use letters, digits, '_', '-', '.'", {"value": v}
            )
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: object) -> object:
        # YAML reads `version: 2` as an int: accept it as "2". Floats (`1.10` -> 1.1) are
        # rejected by the string check, so the user quotes them.
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, float):
            raise PydanticCustomError(
                "version_float",
                'expected a string or an integer, got a number ({value}); quote it: "{value}"',
                {"value": v},
            )
        if isinstance(v, str) and not v.strip():
            raise PydanticCustomError("version_empty", "version is empty")
        return v

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                # `index` lets the loader point at rules[i].name rather than at `rules`.
                raise PydanticCustomError(
                    "duplicate_rule", "duplicate rule name '{name}'", {"name": rule.name, "index": i}
                )
            seen.add(rule.name)
        return rules

    def rule(self, name: str) -> Rule:
        """The rule called ``name``; ``KeyError`` listing the names if there is none."""
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(f"no rule '{name}'; rules: {', '.join(r.name for r in self.rules) or '(none)'}")

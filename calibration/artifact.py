"""The calibration artifact: a fitted threshold plus everything needed to trust it.

A :class:`Calibration` is plain JSON (``model_dump_json``), never a pickle. It records

- *what it applies to*: the model, the proxy and the dataset it was fitted on (ids and
  optional content hashes), and the **score** the threshold applies to (its registry
  name and parameters, :class:`ScoreSpec`; fitted scores carry their coefficients);
- *the decision*: the rule and its threshold; ``score < threshold`` -> ``"confident"``
  (``threshold`` is ``None`` when a guarantee was refused: nothing is confident), an
  optional novelty gate (:class:`NoveltyGate`: inputs unlike the calibration data are
  ``"uncertain"`` whatever their score) and optional per-group thresholds
  (:class:`GroupThresholds`);
- *the evidence*: metrics on the fitting data and on held-out data
  (:class:`ThresholdMetrics`), the other rules' thresholds and metrics side by side
  (``alternatives``), and both class densities sampled on a grid (:class:`KDECurves`)
  for plots.

Every model forbids unknown fields, so a typo in a hand-edited file fails loudly
with the field's name.

Versions: this code writes ``schema_version`` 2 and reads 1 and 2. A version-1 file
has no ``score`` field; it loads as the ``map_entropy`` score with the file's
``aggregation`` and ``entropy_normalized``, and gives the same verdicts as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from calibration.answer_scores import get_score
from calibration.scores import Aggregation
from fastrm_common.errors import CalibrationError, ConfigMismatchError
from fastrm_common.safe_io import read_json

__all__ = [
    "RULES",
    "SCHEMA_VERSION",
    "Calibration",
    "GroupThresholds",
    "KDECurves",
    "NoveltyGate",
    "Rule",
    "RuleResult",
    "ScoreSpec",
    "ThresholdMetrics",
    "Verdict",
]

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

Rule = Literal["paper_midpoint", "density_crossing", "guaranteed_precision", "target_precision"]
#: the rules :func:`calibration.fit.fit_calibration` fits (``target_precision`` is read from version-1 files only)
RULES: tuple[str, ...] = ("paper_midpoint", "density_crossing", "guaranteed_precision")
Verdict = Literal["confident", "uncertain"]
MetadataValue = str | int | float | bool | None

# strict: no coercion ("0.5" or true is not a threshold); integers are still accepted for floats.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)


class ThresholdMetrics(BaseModel):
    """What a threshold does on one labelled set of answer scores.

    The confusion counts treat **"confident" as the positive class** (the paper's
    table): ``tp`` = confident and correct, ``fp`` = confident but wrong,
    ``tn`` = uncertain and wrong, ``fn`` = uncertain but correct. A metric whose
    denominator is zero is ``None``.
    """

    model_config = _STRICT

    threshold: float | None = Field(description="confident when score < threshold; None: nothing is confident")
    n: int = Field(ge=0, description="answers evaluated")
    n_correct: int = Field(ge=0)
    n_wrong: int = Field(ge=0)
    accuracy: float | None = Field(description="the model's accuracy on these answers: n_correct / n")
    auroc: float | None = Field(
        description="AUROC of the score for predicting a wrong answer (1 = perfect, 0.5 = chance); "
        "None when one class is absent"
    )
    share_confident: float | None = Field(description="fraction of answers below the threshold")
    precision_confident: float | None = Field(description="correct among confident: tp / (tp + fp)")
    precision_uncertain: float | None = Field(description="wrong among uncertain: tn / (tn + fn)")
    recall_confident: float | None = Field(description="correct answers marked confident: tp / (tp + fn)")
    tp: int = Field(ge=0, description="confident and correct")
    fp: int = Field(ge=0, description="confident but wrong")
    tn: int = Field(ge=0, description="uncertain and wrong")
    fn: int = Field(ge=0, description="uncertain but correct")

    @model_validator(mode="after")
    def _counts_add_up(self) -> ThresholdMetrics:
        if self.tp + self.fp + self.tn + self.fn != self.n:
            raise ValueError(f"tp + fp + tn + fn = {self.tp + self.fp + self.tn + self.fn} but n = {self.n}")
        if self.tp + self.fn != self.n_correct or self.fp + self.tn != self.n_wrong:
            raise ValueError("confusion counts do not match n_correct / n_wrong")
        return self


class KDECurves(BaseModel):
    """Both classes' score densities on a shared grid, for plotting (each integrates to 1).

    Multiply ``density_correct`` by ``prior_correct`` and ``density_wrong`` by
    ``1 - prior_correct`` for the prior-weighted curves whose crossing the
    ``density_crossing`` rule finds.
    """

    model_config = _STRICT

    xs: list[float]
    density_correct: list[float]
    density_wrong: list[float]
    prior_correct: float = Field(ge=0.0, le=1.0, description="share of correct answers in the fitting data")
    mean_correct: float
    mean_wrong: float
    std_correct: float = Field(ge=0.0)
    std_wrong: float = Field(ge=0.0)
    bandwidth_correct: float = Field(gt=0.0, description="Gaussian kernel standard deviation, score units")
    bandwidth_wrong: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _same_length(self) -> KDECurves:
        lengths = {len(self.xs), len(self.density_correct), len(self.density_wrong)}
        if len(lengths) != 1:
            raise ValueError(
                f"xs, density_correct and density_wrong must have the same length, got "
                f"{len(self.xs)}, {len(self.density_correct)}, {len(self.density_wrong)}"
            )
        return self


class RuleResult(BaseModel):
    """One threshold rule's outcome, for side-by-side comparison."""

    model_config = _STRICT

    rule: Rule
    threshold: float | None = Field(description="None when the rule could not produce a threshold (see note)")
    target_precision: float | None = None
    delta: float | None = Field(default=None, description="guaranteed_precision: probability the guarantee fails")
    guarantee: str | None = Field(default=None, description="guaranteed_precision: the guarantee in words")
    fit_metrics: ThresholdMetrics | None = None
    heldout_metrics: ThresholdMetrics | None = None
    note: str | None = None


def _named(kind: str, identity: str | None) -> str:
    """`` (proxy 'x')`` beside a hash in a message, or nothing when that side has no id (never "(None)")."""
    return f" ({kind} {identity!r})" if identity is not None else ""


class ScoreSpec(BaseModel):
    """Which score a threshold applies to: a registry name and its parameters.

    ``get_score(spec.name, **spec.params)`` (:mod:`calibration.answer_scores`) rebuilds it;
    a fitted score's parameters hold its fitted state (plain numbers).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return get_score(self.name, **self.params).label


class NoveltyGate(BaseModel):
    """Inputs whose novelty is at least ``threshold`` are ``"uncertain"``, whatever their score.

    ``threshold`` is the ``quantile`` of the novelty of the fitting split's inputs, so about
    ``1 - quantile`` of in-distribution inputs are gated out.
    """

    model_config = _STRICT

    score: ScoreSpec
    threshold: float
    quantile: float = Field(gt=0.0, le=1.0)
    heldout_share_gated: float | None = Field(default=None, description="held-out inputs at or above the threshold")


class GroupThresholds(BaseModel):
    """Per-group thresholds (by question family or a caller's tag) with a fallback.

    A group with fewer than ``min_per_class`` right or wrong fitting answers is not listed:
    its answers use the global threshold.
    """

    model_config = _STRICT

    key: Literal["family", "tag"] = "family"
    min_per_class: int = Field(ge=1)
    thresholds: dict[str, float | None] = Field(default_factory=dict)
    heldout_metrics: dict[str, ThresholdMetrics] = Field(default_factory=dict)


class Calibration(BaseModel):
    """A fitted entropy threshold for one model + proxy; see :mod:`calibration.artifact`.

    Example:
        >>> cal = Calibration.load("calibration.json")  # doctest: +SKIP
        >>> cal.verdict(0.41)  # doctest: +SKIP
        'confident'
    """

    model_config = _STRICT

    schema_version: int = SCHEMA_VERSION
    model_id: str | None = Field(default=None, description="model name or path it was fitted with")
    model_hash: str | None = Field(default=None, description="content hash of the model weights, if known")
    proxy_id: str | None = Field(default=None, description="FastRM proxy name or path")
    proxy_hash: str | None = None
    dataset_hash: str | None = Field(default=None, description="sha256 of the calibration data file")
    rule: Rule
    level: Literal["answer", "claim"] = Field(
        default="answer", description="what the threshold judges: whole answers, or claims (spans of an answer)")
    splitter: str | None = Field(default=None, description="claim level: the claim splitter the claims were cut with")
    threshold: float | None = Field(description="confident when score < threshold; None: nothing is confident")
    target_precision: float | None = Field(default=None, description="the precision the rule targets or certifies")
    delta: float | None = Field(default=None, description="guaranteed_precision: probability the guarantee fails")
    guarantee: str | None = Field(default=None, description="the guarantee in words, with its assumption")
    score: ScoreSpec = Field(default=None, description="the score the threshold applies to")  # type: ignore[assignment]
    aggregation: Aggregation = "mean"
    entropy_normalized: bool = Field(default=False, description="entropies divided by log(N_img)")
    novelty_gate: NoveltyGate | None = None
    groups: GroupThresholds | None = None
    score_aurocs: dict[str, float | None] = Field(
        default_factory=dict, description="held-out AUROC of every score compared when fitting (label -> AUROC)")
    fit_metrics: ThresholdMetrics
    heldout_metrics: ThresholdMetrics | None = None
    kde: KDECurves
    alternatives: dict[Rule, RuleResult] = Field(
        default_factory=dict, description="the other rules, fitted on the same data"
    )
    notes: list[str] = Field(default_factory=list, description="warnings raised while fitting")
    command: str | None = Field(default=None, description="the command line that produced this file")
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="free-form provenance (seed, fit fraction, data path, ...)"
    )

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value not in READABLE_VERSIONS:
            raise ValueError(f"unsupported schema_version {value}; this version reads {READABLE_VERSIONS}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, raw: Any) -> Any:
        """A version-1 file (no ``score``) is a map-entropy calibration: upgrade it in memory."""
        if isinstance(raw, dict) and raw.get("score") is None:
            raw = dict(raw)
            raw["score"] = {"name": "map_entropy", "params": {"aggregation": raw.get("aggregation", "mean"),
                                                              "normalized": bool(raw.get("entropy_normalized", False))}}
            raw["schema_version"] = SCHEMA_VERSION
        return raw

    @model_validator(mode="after")
    def _thresholds_within_fitted_scores(self) -> Calibration:
        # A threshold far outside the scores it was fitted on (1e308, -1e308) makes every
        # answer confident (or none): it cannot come from fitting, so the file was edited.
        if not self.kde.xs:
            return self
        lo, hi = min(self.kde.xs[0], self.kde.xs[-1]), max(self.kde.xs[0], self.kde.xs[-1])
        named = [("threshold", self.threshold)]
        if self.groups is not None:
            named += [(f"groups.thresholds[{k!r}]", v) for k, v in self.groups.thresholds.items()]
        for name, value in named:
            if value is not None and not lo <= value <= hi:
                raise ValueError(
                    f"{name} {value:g} lies outside the score range it was fitted on "
                    f"({lo:g} .. {hi:g}, kde.xs); re-run `guardrail calibrate`"
                )
        return self

    # ---- decisions -------------------------------------------------------------------

    def threshold_for(self, group: str | None = None) -> float | None:
        """The threshold that applies to an answer of ``group`` (the global one when the group has none)."""
        if group is not None and self.groups is not None and group in self.groups.thresholds:
            return self.groups.thresholds[group]
        return self.threshold

    def verdict(self, score: float, *, novelty: float | None = None, group: str | None = None) -> Verdict:
        """``"confident"`` when ``score < threshold``, else ``"uncertain"``.

        Args:
            score: the answer's value of :attr:`score` (higher = more uncertain).
            novelty: the input's novelty, when the calibration has a :attr:`novelty_gate`;
                at or above the gate's threshold the verdict is ``"uncertain"``.
            group: the answer's family or tag, for per-group thresholds.

        Raises:
            CalibrationError: the score is NaN or infinite, or the gate needs a novelty that is missing.
        """
        value = float(score)
        if value != value or value in (float("inf"), float("-inf")):
            raise CalibrationError(f"cannot give a verdict on a non-finite score ({score!r})")
        if self.novelty_gate is not None:
            if novelty is None:
                raise CalibrationError("this calibration gates on input novelty, but no novelty was given")
            if float(novelty) >= self.novelty_gate.threshold or float(novelty) != float(novelty):
                return "uncertain"
        threshold = self.threshold_for(group)
        return "confident" if threshold is not None and value < threshold else "uncertain"

    def rules_table(self) -> list[RuleResult]:
        """Every rule's result, the chosen rule first, then the alternatives in rule order."""
        chosen = RuleResult(
            rule=self.rule,
            threshold=self.threshold,
            target_precision=self.target_precision,
            delta=self.delta,
            guarantee=self.guarantee,
            fit_metrics=self.fit_metrics,
            heldout_metrics=self.heldout_metrics,
        )
        others = [self.alternatives[r] for r in RULES if r in self.alternatives and r != self.rule]
        return [chosen, *others]

    def check_compatible(
        self,
        *,
        model_id: str | None = None,
        proxy_id: str | None = None,
        model_hash: str | None = None,
        proxy_hash: str | None = None,
    ) -> None:
        """Raise :class:`ConfigMismatchError` when this calibration was fitted for another model/proxy.

        For each of model and proxy: when both this file and the caller know a hash, the
        hashes decide (the same weights loaded from another path are compatible). An id
        recorded here without a hash, while the caller identifies the artifact by hash
        only, cannot be verified (a name says nothing about changed weights) and is refused.
        Otherwise the ids are compared as strings when both are known. Identity that either
        side does not know is not checked: the :class:`~guardrail.Guard` therefore passes the
        proxy's hash only, and the model's weights hash only whenever this file names a model
        (unless told ``allow_unhashed_calibration=True``: then the model's name).
        """
        for kind, recorded_id, recorded_hash, given_id, given_hash in (
            ("model", self.model_id, self.model_hash, model_id, model_hash),
            ("proxy", self.proxy_id, self.proxy_hash, proxy_id, proxy_hash),
        ):
            if recorded_hash is None and recorded_id is not None and given_hash is not None and given_id is None:
                optout = " (or, for the model, accept a check by name only: Guard(..., " \
                         "allow_unhashed_calibration=True))" if kind == "model" else ""
                raise ConfigMismatchError(
                    f"calibration names {kind} {recorded_id!r} but records no {kind}_hash, so the {kind} in use "
                    f"(hash {given_hash!r}) cannot be verified against it; re-run `guardrail calibrate`, which "
                    f"records the hash{optout}"
                )
            if recorded_hash is not None and given_hash is not None:
                if recorded_hash != given_hash:
                    what = "config and weights" if kind == "proxy" else "weights"
                    raise ConfigMismatchError(
                        f"this calibration was fitted for another {kind}: it records {kind} hash {recorded_hash}"
                        f"{_named(kind, recorded_id)}, but the {kind} in use has {kind} hash {given_hash}"
                        f"{_named(kind, given_id)}. The hash covers the {kind}'s {what}, wherever they are "
                        f"loaded from, so these {kind}s differ; re-run `guardrail calibrate` with this {kind}, "
                        "or use the calibration fitted for it"
                    )
                continue
            if recorded_id is not None and given_id is not None and recorded_id != given_id:
                raise ConfigMismatchError(
                    f"this calibration was fitted for the {kind} {recorded_id!r} but the {kind} in use is "
                    f"{given_id!r} (compared by name, as one side has no hash); re-run `guardrail calibrate` "
                    f"with this {kind}, or use the calibration fitted for it"
                )

    # ---- I/O (thin) ----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write this calibration as indented JSON; returns the path."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration JSON file.

        Raises:
            CalibrationError: the file cannot be read, is over 32 MiB, is not UTF-8 JSON
                (or nests too deeply, has a key twice or an integer too long), has another
                schema version, or a field is missing, unknown or invalid (the message
                names the file and the field), e.g. a threshold outside the fitted scores.
        """
        path = Path(path)
        raw = read_json(path, error=CalibrationError, what="calibration file")
        if not isinstance(raw, dict):
            raise CalibrationError(
                f"calibration file {str(path)!r} must hold a JSON object, got {type(raw).__name__}"
            )
        version = raw.get("schema_version", SCHEMA_VERSION)
        if version not in READABLE_VERSIONS:
            raise CalibrationError(
                f"calibration file {str(path)!r} has schema_version {version!r}; "
                f"this version of fastrm-guard reads {', '.join(map(str, READABLE_VERSIONS))}"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise CalibrationError(f"calibration file {str(path)!r} is invalid: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    """``field.path: message`` for each error, e.g. ``fit_metrics.tpp: Extra inputs are not permitted``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)

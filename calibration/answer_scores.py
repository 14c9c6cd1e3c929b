"""Answer scores as plug-ins: each turns one answer's signals into one number, higher = more uncertain.

The signals of one answer (:class:`AnswerSignals`) are gathered during the one
``model.generate`` that produced it, with no extra pass: the FastRM maps' entropies,
the chosen tokens' log-probabilities, the next-token distributions' entropies and
top-2 margins, and pooled hidden states of the prompt. A :class:`Score` declares which
of them it ``needs`` and returns a float (or ``None`` when it cannot score the answer,
e.g. no content token). Scores are built by name from a registry::

    >>> from calibration.answer_scores import get_score, list_scores
    >>> "token_nll" in list_scores()
    True
    >>> get_score("map_entropy", aggregation="max").label
    'map_entropy(max)'

Built-ins (all aggregate over the answer's content tokens):

``map_entropy``
    the FastRM paper's score: entropy of each token's relevancy map (normalised by
    ``log N_img`` unless ``normalized=False``), aggregated ``mean`` | ``max`` | ``first``.
``map_spread``
    one minus the share of a map's mass on its ``k`` strongest patches (default 4), mean
    over content tokens: a cruder view of focus than the entropy.
``token_nll``
    negative log-probability of each chosen token, ``max`` (the least likely token:
    ``-log`` of the minimum probability) or ``mean``.
``predictive_entropy``
    entropy of the next-token distribution at each step (nats), ``max`` or ``mean``.
``low_margin``
    one minus the probability margin between the top two next tokens, ``max`` or ``mean``.
``novelty``
    how far the input's pooled hidden states lie from those of the calibration data:
    the largest of per-view Mahalanobis distances (image tokens' mean and spread, the
    question's token embeddings), each scaled to 1 at a high quantile of calibration
    inputs (:mod:`calibration.novelty`); fitted.
``fused``
    a logistic regression over standardised base scores (:mod:`calibration.fused`),
    fitted on the calibration's fitting split only; its value is the log-odds of a
    wrong answer.

A fitted score (``novelty``, ``fused``) is built with :func:`fit_score` from the
fitting split; its fitted state lives in its ``params`` (plain JSON), so
``get_score(spec.name, **spec.params)`` rebuilds it from a calibration file.

Register your own with :func:`register_score`. This module is pure (numpy only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from calibration.fused import DEFAULT_BASES, FusedModel
from calibration.novelty import ViewsNovelty
from fastrm_common.errors import CalibrationError, RegistryError
from fastrm_common.registry import Registry

__all__ = [
    "SIGNALS",
    "TOKEN_MEMO",
    "AnswerSignals",
    "PerTokenScore",
    "Score",
    "SCORES",
    "ScoreFactory",
    "fit_score",
    "get_score",
    "list_scores",
    "lookup_score",
    "observed_scores",
    "register_score",
    "table_scores",
]

#: The signal names a score may declare in ``needs``.
SIGNALS: tuple[str, ...] = ("map_entropy", "maps", "token_logprob", "predictive_entropy", "margin", "features",
                            "grounding", "token_states", "evidence", "imageless_logprob")

#: signals stored compactly (base64 float16) in signal files: per-token hidden-state vectors
_STATE_SIGNALS = ("token_states", "evidence")


@dataclass
class AnswerSignals:
    """Everything gathered about one answer during its ``generate``; per-token arrays have shape ``(T,)``.

    Attributes:
        content: which generated tokens count (special, end-of-sequence and punctuation excluded).
        map_entropy: each token's map entropy in nats, or None without a proxy.
        n_patches: patches per map (``N_img``), to normalise ``map_entropy`` by ``log N_img``.
        maps: ``(T, rows, cols)`` map probabilities, or None when not kept.
        token_logprob: log-probability of each chosen token, or None.
        predictive_entropy: entropy (nats) of each step's next-token distribution, or None.
        margin: top-1 minus top-2 probability of each step's distribution, or None.
        features: ``(F,)`` pooled hidden states of the prompt (for ``novelty``), or None.
        grounding: each token's grounding consistency, the cosine between its predicting state and
            the image evidence its map points at (``sum_j m_j H_j`` with the map normalised to sum 1
            and ``H`` the image tokens' final hidden states), or None.
        token_states: ``(T, D)`` the predicting positions' final hidden states, or None.
        evidence: ``(T, D)`` the map-weighted image states each token's map points at, or None.
        imageless_logprob: log-probability of each chosen token in a second pass with the image's
            evidence removed (:func:`fastrm_core.contrast.imageless_logprobs`), or None (the pass is
            optional: ``Guard(visual_contrast=True)``, ``guardrail calibrate --visual-contrast``).
        group: the question family or caller tag used by per-group thresholds, or None.
    """

    content: np.ndarray
    map_entropy: np.ndarray | None = None
    n_patches: int | None = None
    maps: np.ndarray | None = None
    token_logprob: np.ndarray | None = None
    predictive_entropy: np.ndarray | None = None
    margin: np.ndarray | None = None
    features: np.ndarray | None = None
    grounding: np.ndarray | None = None
    token_states: np.ndarray | None = None
    evidence: np.ndarray | None = None
    imageless_logprob: np.ndarray | None = None
    group: str | None = None

    def has(self, name: str) -> bool:
        return getattr(self, name) is not None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (lists), for storing calibration data next to the scores."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in _STATE_SIGNALS and value is not None:
                out[key] = _encode_states(value)
            elif key in _STATE_SIGNALS or (key in ("grounding", "imageless_logprob") and value is None):
                continue  # an absent new signal leaves the stored form as it was
            elif isinstance(value, np.ndarray):
                out[key] = np.round(value.astype(np.float64), 7).tolist() if value.dtype != bool else value.tolist()
            else:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AnswerSignals:
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in cls.__dataclass_fields__:
                raise CalibrationError(f"unknown signal field {key!r}; expected one of: {', '.join(cls.__dataclass_fields__)}")
            if key == "content":
                kwargs[key] = np.asarray(value, dtype=bool)
            elif key in _STATE_SIGNALS and isinstance(value, dict):
                kwargs[key] = _decode_states(value)
            elif key in ("n_patches", "group") or value is None:
                kwargs[key] = value
            else:
                kwargs[key] = np.asarray(value, dtype=np.float64)
        return cls(**kwargs)


def _encode_states(a: np.ndarray) -> dict[str, Any]:
    import base64

    a = np.asarray(a, dtype=np.float16)
    return {"shape": list(a.shape), "float16_base64": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_states(raw: dict[str, Any]) -> np.ndarray:
    import base64

    try:
        data = np.frombuffer(base64.b64decode(raw["float16_base64"]), dtype=np.float16)
        return data.reshape([int(n) for n in raw["shape"]]).astype(np.float32)
    except (KeyError, ValueError, TypeError) as exc:
        raise CalibrationError(f"bad stored hidden states: {exc}") from None


_ADD, _MAX = np.add.reduce, np.maximum.reduce


def _content(sig: AnswerSignals, values: np.ndarray) -> np.ndarray | None:
    mask = np.asarray(sig.content, dtype=bool)
    if values.shape[0] != mask.shape[0]:
        raise CalibrationError(f"{values.shape[0]} per-token values but {mask.shape[0]} content flags")
    picked = values[mask]  # (T_content,)
    return picked if picked.size else None


def _aggregate(values: np.ndarray | None, how: str) -> float | None:
    if values is None:
        return None
    if how == "mean":  # np.mean's own sum and division, without its wrapper (the same bits for float64)
        return float(_ADD(values) / values.shape[0]) if values.dtype == np.float64 and values.ndim == 1 \
            else float(values.mean())
    if how == "max":
        return float(_MAX(values))
    if how == "min":
        return float(values.min())
    return float(values[0])  # "first"


_ABSENT = object()


class Score:
    """One answer score: ``score(signals) -> float | None``, higher = more uncertain.

    Subclasses set ``name``, ``needs`` (signal names from :data:`SIGNALS`, or
    ``"scores"`` for scores built on other scores), ``fitted`` (True when built from
    data with :meth:`fit`) and implement :meth:`compute`. Their constructor keywords
    are their parameters; :attr:`params` returns them for the calibration file.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    fitted: ClassVar[bool] = False
    #: the accepted values of each choice parameter, checked by the constructor
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {}
    #: parameters under which every guarded call reports this score (``GuardResult.scores``);
    #: None: not reported unless a calibration uses it
    observe: ClassVar[dict[str, Any] | None] = None
    #: the parameter sets compared in ``guardrail calibrate``'s score table, in print order
    table: ClassVar[tuple[dict[str, Any], ...]] = ()
    #: where the score sits in the table and the observed list (lower first)
    order: ClassVar[int] = 100
    #: an observed score whose signals come from an optional extra pass: reported only for answers
    #: that carry them (absent otherwise, rather than None)
    on_demand: ClassVar[bool] = False

    @classmethod
    def table_label(cls, **params: Any) -> str:
        """The label of this score under ``params`` before it is fitted (a fitted score's name and what
        tells its table variants apart)."""
        return cls.name if cls.fitted else cls(**params).label

    @classmethod
    def signals_needed(cls, **params: Any) -> frozenset[str]:
        """The signals (:data:`SIGNALS`) this score reads, those of the scores it is built on included."""
        return frozenset(n for n in cls.needs if n in SIGNALS)

    @classmethod
    def available(cls, signals: Sequence[AnswerSignals], **params: Any) -> bool:
        """Whether every answer of ``signals`` carries what this score needs."""
        need = cls.signals_needed(**params)
        return all(s.has(n) for s in signals for n in need)

    def __init__(self, **params: Any):
        for key, allowed in self.choices.items():
            if key in params and params[key] not in allowed:
                raise CalibrationError(
                    f"score {self.name}: {key}={params[key]!r} is not one of: {', '.join(map(str, allowed))}")
        self._params = params

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def label(self) -> str:
        """A short name with the choice parameters, e.g. ``map_entropy(max)``."""
        shown = [str(v) for k, v in self._params.items() if k in self.choices and not isinstance(v, bool)]
        shown += [k if v else f"no {k}" for k, v in self._params.items() if isinstance(v, bool) and not v]
        return f"{self.name}({', '.join(shown)})" if shown else self.name

    def compute(self, signals: AnswerSignals) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, signals: AnswerSignals, memo: dict | None = None) -> float | None:
        """The score of one answer. ``memo``: a dict shared by the scores of the same ``signals`` (one
        answer or claim), so a score built on others (``fused``) reuses the values already computed."""
        if memo is not None:
            key = self.memo_key
            value = memo.get(key, _ABSENT)
            if value is not _ABSENT:
                return value
        needs = self.__dict__.get("_signal_needs")
        if needs is None:
            needs = self.__dict__["_signal_needs"] = tuple(n for n in self.needs if n in SIGNALS)
        if any(getattr(signals, n) is None for n in needs):
            missing = [n for n in needs if getattr(signals, n) is None]
            raise CalibrationError(f"score {self.name} needs the signal(s) {', '.join(sorted(missing))}, "
                                   "which were not gathered for this answer")
        if memo is None:
            value = self.compute(signals)
            if value is not None and not math.isfinite(value):
                raise CalibrationError(f"score {self.name} is not finite ({value!r})")
            return value
        return self._shared(signals, memo, key)

    def _shared(self, signals: AnswerSignals, memo: dict, key: tuple | None = None) -> float | None:
        """:meth:`__call__` with a memo, for a caller that has checked the signals this score needs."""
        if key is None:
            key = self.memo_key
            value = memo.get(key, _ABSENT)
            if value is not _ABSENT:
                return value
        value = self.compute_shared(signals, memo)
        if value is not None and not math.isfinite(value):
            raise CalibrationError(f"score {self.name} is not finite ({value!r})")
        memo[key] = value
        return value

    def compute_shared(self, signals: AnswerSignals, memo: dict) -> float | None:
        """:meth:`compute` with a memo of the other scores of the same signals (see :meth:`__call__`);
        scores built on others override it."""
        return self.compute(signals)

    @property
    def memo_key(self) -> tuple[str, str]:
        """What identifies this score's value for given signals: its name and parameters."""
        key = self.__dict__.get("_memo_key")
        if key is None:
            key = self.__dict__["_memo_key"] = (self.name, json.dumps(self._params, sort_keys=True, default=repr))
        return key

    def many(self, signals: Sequence[AnswerSignals]) -> np.ndarray:
        """Scores of many answers, shape ``(n,)``; NaN where an answer cannot be scored."""
        return np.array([np.nan if (v := self(s)) is None else v for s in signals], dtype=np.float64)

    @classmethod
    def fit(cls, signals: Sequence[AnswerSignals], correct: Any, **params: Any) -> Score:
        """Build a fitted score from the fitting split (only for ``fitted`` scores)."""
        return cls(**params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"


#: the key, in a memo handed to :meth:`Score.__call__`, of a dict the claims of one answer share:
#: per-token values (:class:`PerTokenScore`) computed once for the answer and reused by each claim
TOKEN_MEMO = "per-token values"


class PerTokenScore(Score):
    """A score that aggregates one value per token over the content tokens.

    Subclasses set ``token_signal`` (the signal the values are read from) and implement
    :meth:`token_values`; the aggregation is the ``aggregation`` parameter (``mean`` if it has
    none). A claim's signals are its answer's with another content mask, so with a shared
    :data:`TOKEN_MEMO` the per-token values are computed once per answer.
    """

    token_signal: ClassVar[str] = ""

    def token_values(self, sig: AnswerSignals) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self, sig: AnswerSignals) -> float | None:
        return _aggregate(_content(sig, self.token_values(sig)), self._params.get("aggregation", "mean"))

    def compute_shared(self, sig: AnswerSignals, memo: dict) -> float | None:
        shared = memo.get(TOKEN_MEMO)
        if shared is None:
            return self.compute(sig)
        # the same array object (alive as long as the answer's signals) gives the same values
        key = (self.name, self._values_key, id(getattr(sig, self.token_signal)), sig.n_patches)
        values = shared.get(key)
        if values is None:
            values = shared[key] = self.token_values(sig)
        return _aggregate(_content(sig, values), self._params.get("aggregation", "mean"))

    @property
    def _values_key(self) -> str:
        """The parameters the per-token values depend on (all but the aggregation)."""
        key = self.__dict__.get("_values_key_")
        if key is None:
            rest = {k: v for k, v in self._params.items() if k != "aggregation"}
            key = self.__dict__["_values_key_"] = json.dumps(rest, sort_keys=True, default=repr)
        return key


class MapEntropy(PerTokenScore):
    name = "map_entropy"
    needs = frozenset({"map_entropy"})
    choices = {"aggregation": ("mean", "max", "first"), "normalized": (True, False)}

    observe = {"aggregation": "mean", "normalized": True}
    table = ({"aggregation": "mean"}, {"aggregation": "max"}, {"aggregation": "first"})
    order = 10

    def __init__(self, aggregation: str = "mean", normalized: bool = True):
        super().__init__(aggregation=aggregation, normalized=normalized)

    token_signal = "map_entropy"

    def token_values(self, sig: AnswerSignals) -> np.ndarray:
        h = np.asarray(sig.map_entropy, dtype=np.float64)
        if self._params["normalized"]:
            if not sig.n_patches or sig.n_patches < 2:
                raise CalibrationError("normalised map entropy needs n_patches >= 2")
            h = np.minimum(h / math.log(sig.n_patches), 1.0)
        return h


class MapSpread(PerTokenScore):
    name = "map_spread"
    needs = frozenset({"maps"})
    observe: ClassVar[dict[str, Any]] = {}
    table = ({},)
    order = 20

    def __init__(self, k: int = 4):
        if int(k) < 1:
            raise CalibrationError(f"score map_spread: k must be at least 1, got {k!r}")
        super().__init__(k=int(k))

    token_signal = "maps"

    def token_values(self, sig: AnswerSignals) -> np.ndarray:
        maps = np.asarray(sig.maps, dtype=np.float64)
        flat = maps.reshape(maps.shape[0], -1)  # (T, N_img)
        k = min(self._params["k"], flat.shape[1])
        top = -np.sort(-flat, axis=1)[:, :k].sum(axis=1)  # (T,)
        return 1.0 - top / np.maximum(flat.sum(axis=1), 1e-12)


class TokenNLL(PerTokenScore):
    name = "token_nll"
    needs = frozenset({"token_logprob"})
    choices = {"aggregation": ("max", "mean")}
    observe = {"aggregation": "max"}
    table = ({"aggregation": "max"}, {"aggregation": "mean"})
    order = 30

    def __init__(self, aggregation: str = "max"):
        super().__init__(aggregation=aggregation)

    token_signal = "token_logprob"

    def token_values(self, sig: AnswerSignals) -> np.ndarray:
        return -np.asarray(sig.token_logprob, dtype=np.float64)


class PredictiveEntropy(PerTokenScore):
    name = "predictive_entropy"
    needs = frozenset({"predictive_entropy"})
    choices = {"aggregation": ("max", "mean")}
    observe = {"aggregation": "max"}
    table = ({"aggregation": "max"}, {"aggregation": "mean"})
    order = 40

    def __init__(self, aggregation: str = "max"):
        super().__init__(aggregation=aggregation)

    token_signal = "predictive_entropy"

    def token_values(self, sig: AnswerSignals) -> np.ndarray:
        return np.asarray(sig.predictive_entropy, dtype=np.float64)


class LowMargin(PerTokenScore):
    name = "low_margin"
    needs = frozenset({"margin"})
    choices = {"aggregation": ("max", "mean")}
    observe = {"aggregation": "max"}
    table = ({"aggregation": "max"}, {"aggregation": "mean"})
    order = 50

    def __init__(self, aggregation: str = "max"):
        super().__init__(aggregation=aggregation)

    token_signal = "margin"

    def token_values(self, sig: AnswerSignals) -> np.ndarray:
        return 1.0 - np.asarray(sig.margin, dtype=np.float64)


class Grounding(PerTokenScore):
    """How little a token's own state agrees with what its map points at: ``1 - cos(h_t, m_t H)``
    (the ``grounding`` signal), aggregated over the content tokens. A "circle" whose attended patches
    look like a square scores high. Training-free; needs a capture that kept the hidden states."""

    name = "grounding"
    needs = frozenset({"grounding"})
    choices = {"aggregation": ("max", "mean")}
    observe = {"aggregation": "max"}
    table = ({"aggregation": "max"}, {"aggregation": "mean"})
    order = 60

    def __init__(self, aggregation: str = "max"):
        super().__init__(aggregation=aggregation)

    token_signal = "grounding"

    def token_values(self, sig: AnswerSignals) -> np.ndarray:
        return 1.0 - np.asarray(sig.grounding, dtype=np.float64)


class VisualContrast(Score):
    """How little the image supports the answer: ``log p(token | image removed) - log p(token | image)``
    per content token (minus the *visual contrast*), aggregated by ``mean`` or ``max`` (the least
    supported token). High when the language prior alone writes the token as likely as the picture
    does, as for an object named because its usual partner is in the text or the scene.

    Needs the optional image-free pass (:func:`fastrm_core.contrast.imageless_logprobs`: one extra
    forward over prompt and answer, the image tokens replaced by their mean), so it is reported only
    where that pass ran: ``Guard(visual_contrast=True)``, or a calibration that uses it."""

    name = "visual_contrast"
    needs = frozenset({"token_logprob", "imageless_logprob"})
    choices = {"aggregation": ("mean", "max")}
    observe = {"aggregation": "mean"}
    on_demand = True
    table = ({"aggregation": "mean"}, {"aggregation": "max"})
    order = 70

    def __init__(self, aggregation: str = "mean"):
        super().__init__(aggregation=aggregation)

    def compute(self, sig: AnswerSignals) -> float | None:
        lp = np.asarray(sig.token_logprob, dtype=np.float64)
        blind = np.asarray(sig.imageless_logprob, dtype=np.float64)
        n = min(lp.shape[0], blind.shape[0])
        if n != np.asarray(sig.content).shape[0]:
            raise CalibrationError(f"score visual_contrast: {blind.shape[0]} image-free log-probabilities for "
                                   f"{np.asarray(sig.content).shape[0]} tokens")
        return _aggregate(_content(sig, blind[:n] - lp[:n]), self._params["aggregation"])


def _probe_inputs(sig: AnswerSignals, with_evidence: bool) -> np.ndarray | None:
    """The probe's input for one answer (or claim): the mean and the last of its content tokens'
    states, and with ``with_evidence`` the mean of what their maps point at."""
    mask = np.asarray(sig.content, dtype=bool)
    if not mask.any():
        return None
    h = np.asarray(sig.token_states, dtype=np.float64)[: mask.shape[0]][mask]  # (k, D)
    parts = [h.mean(0), h[-1]]
    if with_evidence:
        parts.append(np.asarray(sig.evidence, dtype=np.float64)[: mask.shape[0]][mask].mean(0))
    return np.concatenate(parts)


class StateProbe(Score):
    """A linear probe on the final-norm hidden states of the answer's (or claim's) content tokens
    (their mean and the last one; ``with_evidence``: also the mean of what their maps point at),
    fitted at calibration on the fitting split only (L2 logistic regression on standardised inputs).
    Its value is the log-odds of a wrong answer. The weights are stored in the calibration as
    safetensors bytes (base64) with their SHA-256, checked when the score is built; the calibration's
    model hash ties them to the model."""

    name = "state_probe"
    needs = frozenset({"token_states"})
    fitted = True
    table = ({}, {"with_evidence": True})
    order = 80

    def __init__(self, **params: Any):
        self.with_evidence = bool(params.get("with_evidence", False))
        self._model = _probe_model(params) if "weights_safetensors" in params else None
        super().__init__(**params)

    @classmethod
    def signals_needed(cls, with_evidence: bool = False, **params: Any) -> frozenset[str]:
        return frozenset({"token_states", "evidence"} if with_evidence else {"token_states"})

    @classmethod
    def table_label(cls, with_evidence: bool = False, **params: Any) -> str:
        return "state_probe(with evidence)" if with_evidence else "state_probe"

    @property
    def label(self) -> str:
        return "state_probe(with evidence)" if self.with_evidence else "state_probe"

    def compute(self, sig: AnswerSignals) -> float | None:
        if self._model is None:
            raise CalibrationError("score state_probe is not fitted; fit it with fit_score('state_probe', ...)")
        if self.with_evidence and sig.evidence is None:
            raise CalibrationError("score state_probe(with evidence) needs the evidence signal")
        x = _probe_inputs(sig, self.with_evidence)
        if x is None:
            return None
        if x.shape != self._model.center.shape:
            raise CalibrationError(f"score state_probe was fitted on inputs of size {self._model.center.shape[0]}, "
                                   f"got {x.shape[0]}: another model's hidden size")
        return self._model.log_odds(x)

    @classmethod
    def fit(cls, signals: Sequence[AnswerSignals], correct: Any, *, with_evidence: bool = False, l2: float = 10.0,
            seed: int = 0, **_: Any) -> StateProbe:
        rows, wrong = [], []
        for sig, ok in zip(signals, np.asarray(correct, dtype=bool)):
            x = _probe_inputs(sig, with_evidence) if sig.token_states is not None else None
            if x is not None:
                rows.append(x)
                wrong.append(not ok)
        if not rows:
            raise CalibrationError("score state_probe: no answer carries hidden states (token_states)")
        model = FusedModel.fit(np.stack(rows), np.array(wrong), bases=[{"name": "state"}] * len(rows[0]), l2=l2,
                               seed=seed)
        return cls(with_evidence=with_evidence, **_probe_params(model))


def _probe_params(model: FusedModel) -> dict[str, Any]:
    import base64
    import hashlib

    from safetensors.numpy import save

    blob = save({"center": model.center.astype(np.float32), "scale": model.scale.astype(np.float32),
                 "weights": model.weights.astype(np.float32),
                 "intercept": np.array([model.intercept], dtype=np.float32)})
    return {"weights_safetensors": base64.b64encode(blob).decode("ascii"),
            "sha256": hashlib.sha256(blob).hexdigest(), "l2": model.l2, "n_fit": model.n_fit}


def _probe_model(params: dict[str, Any]) -> FusedModel:
    import base64
    import hashlib

    from safetensors.numpy import load

    try:
        blob = base64.b64decode(params["weights_safetensors"])
        if hashlib.sha256(blob).hexdigest() != params.get("sha256"):
            raise CalibrationError("score state_probe: its weights do not match their recorded SHA-256 "
                                   "(the calibration file was altered)")
        t = load(blob)
        center, scale = t["center"].astype(np.float64), t["scale"].astype(np.float64)
        weights, intercept = t["weights"].astype(np.float64), float(t["intercept"][0])
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"score state_probe: unreadable weights ({type(exc).__name__}: {exc})") from None
    if not (center.shape == scale.shape == weights.shape) or (scale <= 0).any():
        raise CalibrationError("score state_probe: weights of mismatched shapes")
    return FusedModel([{"name": "state"}] * len(center), center, scale, weights, intercept,
                      float(params.get("l2", 10.0)), 0, int(params.get("n_fit", 0)))


#: the fused score's bases with the evidence score added (``fused(bases=EVIDENCE_BASES)`` in the table)
EVIDENCE_BASES: tuple[dict[str, Any], ...] = (*DEFAULT_BASES, {"name": "grounding", "params": {"aggregation": "max"}})
#: the same with the visual contrast added (needs the optional image-free pass)
CONTRAST_BASES: tuple[dict[str, Any], ...] = (*EVIDENCE_BASES, {"name": "visual_contrast", "params": {"aggregation": "mean"}})


class Novelty(Score):
    """How far the prompt's pooled hidden states lie from the calibration inputs' (see :mod:`calibration.novelty`).

    The largest of several views' Mahalanobis distances, each divided by its value at the
    ``quantile`` of reference inputs the Gaussians were not fitted on: about 1 at the
    edge of the calibration inputs, higher = more novel.
    """

    name = "novelty"
    needs = frozenset({"features"})
    fitted = True
    table = ({},)
    order = 90

    def __init__(self, **stats: Any):
        self.model = ViewsNovelty.from_params(stats)
        super().__init__(**self.model.to_params())

    @property
    def label(self) -> str:
        return self.name

    def compute(self, sig: AnswerSignals) -> float | None:
        return self.model.distance(np.asarray(sig.features, dtype=np.float64))

    def many(self, signals: Sequence[AnswerSignals]) -> np.ndarray:
        """Vectorised over answers (every answer must carry features)."""
        if any(s.features is None for s in signals) or not signals:
            return super().many(signals)
        return self.model.distances(np.stack([np.asarray(s.features, dtype=np.float64) for s in signals]))

    @classmethod
    def fit(cls, signals: Sequence[AnswerSignals], correct: Any = None, *, reference: Sequence[AnswerSignals] | None = None,
            views: dict[str, Sequence[str]] | None = None, rank: int = 64, quantile: float = 0.995, seed: int = 0,
            **_: Any) -> Novelty:
        """Fit on ``signals``' features; the views' scales on ``reference`` (default: a random half of ``signals``,
        the Gaussians then fitted on the other half). ``correct`` is not used: novelty is about inputs only."""
        rows = [np.asarray(s.features, dtype=np.float64) for s in signals if s.features is not None]
        if not rows:
            raise CalibrationError("score novelty: no answer carries pooled hidden states (features)")
        feats = np.stack(rows)  # (n, F)
        if reference is None:
            order = np.random.default_rng(seed).permutation(len(feats))
            half = len(feats) // 2
            feats, ref = feats[order[half:]], feats[order[:half]]
        else:
            ref_rows = [np.asarray(s.features, dtype=np.float64) for s in reference if s.features is not None]
            if not ref_rows:
                raise CalibrationError("score novelty: no reference answer carries pooled hidden states (features)")
            ref = np.stack(ref_rows)
        model = ViewsNovelty.fit(feats, ref, views=views, rank=rank, quantile=quantile)
        return cls(**model.to_params())


class Fused(Score):
    """Logistic regression over base scores (see :mod:`calibration.fused`); value = log-odds of a wrong answer."""

    name = "fused"
    needs = frozenset({"scores"})
    fitted = True
    table = ({}, {"bases": [dict(b) for b in EVIDENCE_BASES]}, {"bases": [dict(b) for b in CONTRAST_BASES]})
    order = 95

    @classmethod
    def table_label(cls, bases: Sequence[Any] | None = None, **params: Any) -> str:
        if bases is None:
            return cls.name
        extra = [b if isinstance(b, str) else b["name"] for b in bases[len(DEFAULT_BASES):]]
        return f"fused(+{', '.join(extra)})" if list(bases[: len(DEFAULT_BASES)]) == list(DEFAULT_BASES) and extra \
            else f"fused({len(bases)} bases)"

    @classmethod
    def signals_needed(cls, *, bases: Sequence[Any] | None = None, **params: Any) -> frozenset[str]:
        need: set[str] = set()
        for b in bases if bases is not None else DEFAULT_BASES:
            name, bparams = (b, {}) if isinstance(b, str) else (b["name"], dict(b.get("params", {})))
            need |= lookup_score(name).signals_needed(**bparams)
        return frozenset(need)

    def __init__(self, **params: Any):
        self.model = FusedModel.from_params(params)
        self.bases = [get_score(spec["name"], **spec.get("params", {})) for spec in self.model.bases]
        super().__init__(**self.model.to_params())

    @property
    def label(self) -> str:
        return f"fused({', '.join(b.label for b in self.bases)})"

    def compute(self, sig: AnswerSignals) -> float | None:
        return self._fuse([b(sig) for b in self.bases])

    def compute_shared(self, sig: AnswerSignals, memo: dict) -> float | None:
        return self._fuse([b(sig, memo) for b in self.bases])

    def _fuse(self, values: list) -> float | None:
        if any(v is None for v in values):
            return None
        return self.model.log_odds(np.asarray(values, dtype=np.float64))

    @classmethod
    def fit(cls, signals: Sequence[AnswerSignals], correct: Any, *, bases: Sequence[Any] | None = None,
            l2: float = 1.0, seed: int = 0, **_: Any) -> Fused:
        specs = []
        base_scores = []
        for b in bases if bases is not None else DEFAULT_BASES:
            name, params = (b, {}) if isinstance(b, str) else (b["name"], dict(b.get("params", {})))
            score = fit_score(name, signals, correct, **params) if lookup_score(name).fitted else get_score(name, **params)
            specs.append({"name": score.name, "params": score.params})
            base_scores.append(score.many(signals))
        x = np.stack(base_scores, axis=1)  # (n, k)
        y_wrong = ~np.asarray(correct, dtype=bool)
        ok = np.isfinite(x).all(axis=1)
        model = FusedModel.fit(x[ok], y_wrong[ok], bases=specs, l2=l2, seed=seed)
        return cls(**model.to_params())


ScoreFactory = Callable[..., Score]


class ScoreRegistryError(RegistryError, CalibrationError):
    """An unknown or taken score name (a :class:`RegistryError` and a :class:`CalibrationError`)."""


#: every registered score class by name (:class:`fastrm_common.registry.Registry`)
SCORES: Registry[type[Score]] = Registry("score", error=ScoreRegistryError)


def register_score(cls: type[Score], *, replace: bool = False) -> type[Score]:
    """Add a :class:`Score` subclass to the registry under its ``name`` (usable as a decorator).

    Once registered, a score is everywhere a score goes: the Guard reports it when it declares
    ``observe``, ``guardrail calibrate`` compares it under each parameter set of ``table``,
    calibrations may name it, and spans and serve carry its value.

    Raises:
        CalibrationError: no name, or the name is taken (pass ``replace=True`` to override).
    """
    if not isinstance(cls, type) or not issubclass(cls, Score) or not cls.name:
        raise CalibrationError("register_score needs a Score subclass with a non-empty name")
    SCORES.add(cls.name, cls, replace=replace)
    return cls


def list_scores() -> list[str]:
    """The registered score names, sorted."""
    return SCORES.names()


def lookup_score(name: str) -> type[Score]:
    """The registered :class:`Score` class ``name``.

    Raises:
        CalibrationError: unknown name (the message lists the registered ones).
    """
    return SCORES.get(name)


def observed_scores() -> list[tuple[str, dict[str, Any]]]:
    """The scores every guarded call reports, (name, parameters), from the registry's ``observe``."""
    classes = sorted((c for c in SCORES.values() if c.observe is not None), key=lambda c: (c.order, c.name))
    return [(c.name, dict(c.observe)) for c in classes]


def table_scores() -> list[tuple[str, dict[str, Any]]]:
    """The (name, parameters) pairs ``guardrail calibrate`` compares, from the registry's ``table``."""
    classes = sorted(SCORES.values(), key=lambda c: (c.order, c.name))
    return [(c.name, dict(params)) for c in classes for params in c.table]


def get_score(name: str, **params: Any) -> Score:
    """Build the score ``name`` with ``params`` (a fitted score needs its fitted params).

    Raises:
        CalibrationError: unknown name (the message lists the registered ones) or bad parameters.
    """
    cls = lookup_score(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise CalibrationError(f"score {name}: bad parameters {sorted(params)}: {exc}") from exc


def fit_score(name: str, signals: Sequence[AnswerSignals], correct: Any, **params: Any) -> Score:
    """Build ``name``, fitting it on ``(signals, correct)`` when it is a fitted score.

    Pass the fitting split only: the held-out answers must not shape the score.
    """
    cls = lookup_score(name)
    if not cls.fitted:
        return get_score(name, **params)
    return cls.fit(signals, correct, **params)


for _cls in (MapEntropy, MapSpread, TokenNLL, PredictiveEntropy, LowMargin, Grounding, VisualContrast, StateProbe,
             Novelty, Fused):
    register_score(_cls)

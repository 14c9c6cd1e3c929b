"""Training a FastRM proxy on a distillation dataset (docs/distillation.md).

Each training example is one generated token: its predicting state q (D,), its record's image
states (N_img, D) and its exact gradient map m (N_img,). Labels binarise the map with the
labelling threshold tau (default 0.3, from the dataset manifest)::

    y_j = 1  if m_j >= tau * max(m) and max(m) > 0   else 0

and the loss is the binary cross-entropy between sigmoid(proxy logits) and y, averaged over
patches and tokens (``pos_weight`` > 1 weighs the relevant patches more, for sparse labels). Adam; the paper's defaults are lr 2e-5, batch 128, 3,500 steps.

Which tokens: by default the *content* tokens only (``tokens="content"``), the ones whose maps
the Guard scores, calibrates and shows; end-of-sequence, special and punctuation-only tokens
are left out. Their maps are unlike the answer's (on the reference model the EOS token's map
spreads over the whole scene) and a proxy of D x D parameters spends capacity on them that no
verdict uses. ``tokens="all"`` distils every generated token, as a plain reading of the paper.

The validation split is by record (tokens of one answer never straddle the split), chosen
from the seed; ``lr_schedule="cosine"`` decays the learning rate to 0 over the run (the paper
keeps it constant); every ``eval_every`` steps the validation loss and F1 (at 0.5) are measured
and the best checkpoint is kept: lowest validation loss (``select="loss"``, the default) or
highest validation F1 (``select="f1"``, the metric the evaluation reports; ties keep the earlier
step). Everything random (initialisation, split, batches) derives from ``seed``: two runs with
the same inputs give identical weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastrm_common.errors import DataError, InputError
from fastrm_core.proxy import FastRMProxy, ProxyConfig

from .dataset import MANIFEST_NAME, Manifest, load_manifest, pad_tokens, verify_shard
from .metrics import binarize_maps

__all__ = [
    "LR_SCHEDULES", "SELECTION_METRICS", "TOKEN_SETS",
    "PairStore", "TrainConfig", "TrainResult", "train_proxy",
]

TOKEN_SETS = ("content", "all")
LR_SCHEDULES = ("constant", "cosine")
SELECTION_METRICS = ("loss", "f1")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_proxy` (paper defaults)."""

    lr: float = 2e-5
    batch_size: int = 128
    steps: int = 3500
    seed: int = 0
    val_fraction: float = 0.1
    eval_every: int = 250
    head_dim: int | None = None
    label_threshold: float | None = None  # None: the dataset's
    weight_decay: float = 0.0
    pos_weight: float = 1.0  # BCE weight of relevant patches (1 = the paper's plain BCE)
    f1_weight: float = 0.0  # weight of (1 - soft F1) over the batch's patches added to the BCE (0 = BCE only)
    record_balance: float = 0.0  # tokens drawn with weight n^-alpha, n = their record's training tokens (0: uniform)
    tokens: str = "content"  # "content": the tokens the Guard scores; "all": every generated token (EOS too)
    lr_schedule: str = "constant"  # "constant" (the paper) or "cosine": lr * (1 + cos(pi * step / steps)) / 2
    select: str = "loss"  # which checkpoint is kept: lowest validation "loss" or highest validation "f1" (at 0.5)
    device: str = "cpu"
    max_memory_gb: float = 4.0  # datasets larger than this are read lazily from the shards

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.pos_weight > 0, f"pos_weight must be > 0, got {self.pos_weight}"),
            (self.f1_weight >= 0, f"f1_weight must be >= 0, got {self.f1_weight}"),
            (0 <= self.record_balance <= 1, f"record_balance must be in [0, 1], got {self.record_balance}"),
            (self.tokens in TOKEN_SETS, f"tokens must be one of {', '.join(TOKEN_SETS)}, got {self.tokens!r}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"),
            (self.select in SELECTION_METRICS,
             f"select must be one of {', '.join(SELECTION_METRICS)}, got {self.select!r}"),
            (self.label_threshold is None or 0 < self.label_threshold <= 1,
             f"label_threshold must be in (0, 1], got {self.label_threshold}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


@dataclass
class TrainResult:
    """What :func:`train_proxy` did. ``history``: one dict per evaluation (step, train/val loss, val F1)."""

    proxy: FastRMProxy
    path: Path | None
    best_step: int
    best_val_loss: float | None
    history: list[dict] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    split: dict = field(default_factory=dict)  # records and tokens per split: n_train_records, n_val_tokens ...
    warnings: list[str] = field(default_factory=list)


# Below these, a validation split's loss and F1 move by chance from one checkpoint to the next.
MIN_VAL_RECORDS, MIN_VAL_TOKENS = 20, 50


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def split_warnings(split: dict, select: str = "loss") -> list[str]:
    """Why a validation split cannot be trusted to select a checkpoint, in words (empty when it can).

    >>> split_warnings({"n_val_records": 3, "n_val_tokens": 1})[0].split(":")[0]
    'the validation split has only 3 records and 1 token'
    """
    n_rec, n_tok = split["n_val_records"], split["n_val_tokens"]
    if n_rec == 0:
        return []  # no validation split asked for: the last step is kept, and the CLI says so
    if n_rec >= MIN_VAL_RECORDS and n_tok >= MIN_VAL_TOKENS:
        return []
    return [
        f"the validation split has only {_count(n_rec, 'record')} and {_count(n_tok, 'token')}: too few to "
        "select a checkpoint on "
        f"(its {'F1' if select == 'f1' else 'loss'} moves by chance between evaluations, and the validation "
        f"figures are a rough guess). Use more data or a larger --val-fraction: at least {MIN_VAL_RECORDS} "
        f"records and {MIN_VAL_TOKENS} tokens, and judge the proxy with `fastrm distill eval` on held-out questions"
    ]


# --------------------------------------------------------------------------------------
# data access


class PairStore:
    """Random access to the (token, map) pairs of a dataset folder.

    Small datasets (under ``max_memory_gb``) are loaded once; larger ones are read from the
    memory-mapped shards per batch, so memory stays bounded for any dataset size.
    Token t of the flattened dataset belongs to record ``token_record[t]``.
    """

    def __init__(self, folder: str | Path, *, max_memory_gb: float = 4.0, in_memory: bool | None = None):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.manifest: Manifest = load_manifest(self.folder)
        shards = [s for s in sorted(self.manifest.shards, key=lambda s: s.index) if s.file]
        if not shards or self.manifest.n_tokens == 0:
            raise DataError(f"the dataset in {self.folder} holds no token (build it first, or check its skipped records)")
        self._handles = []
        token_shard, token_local, token_record, record_shard, record_local = [], [], [], [], []
        record_counts: list[int] = []  # image tokens of each record (rows beyond are padding)
        content: list[torch.Tensor] = []  # per shard, when the shard has content flags
        n_bytes = 0
        for s_idx, shard in enumerate(shards):
            path = verify_shard(self.folder, shard)  # the bytes the manifest recorded, or DataError
            try:
                fh = safe_open(str(path), framework="pt")
            except Exception as exc:  # SafetensorError: truncated or damaged
                raise DataError(f"cannot read shard {path}: {exc}") from None
            self._handles.append(fh)
            offsets = fh.get_tensor("token_offsets")  # (R + 1,)
            n_rec = offsets.numel() - 1
            counts = (offsets[1:] - offsets[:-1]).tolist()
            base = len(record_shard)
            for r, c in enumerate(counts):
                token_shard += [s_idx] * c
                token_local += list(range(int(offsets[r]), int(offsets[r]) + c))
                token_record += [base + r] * c
            record_shard += [s_idx] * n_rec
            if "content" in fh.keys():
                content.append(fh.get_tensor("content").bool())
            record_local += list(range(n_rec))
            n_max = fh.get_slice("image_states").get_shape()[1]
            record_counts += fh.get_tensor("image_counts").tolist() if "image_counts" in fh.keys() else [n_max] * n_rec
            for name in ("image_states", "token_states", "maps"):
                sl = fh.get_slice(name)
                n_bytes += math.prod(sl.get_shape()) * 4
        self.token_shard = torch.tensor(token_shard)
        self.token_local = torch.tensor(token_local)
        self.token_record = torch.tensor(token_record)
        self.record_shard = torch.tensor(record_shard)
        self.record_local = torch.tensor(record_local)
        self.n_records = len(record_shard)
        self.n_tokens = len(token_shard)
        self.record_counts = torch.tensor(record_counts)  # (R,)
        self.n_max = int(self.record_counts.max())
        # variable grids: batches are padded to n_max and the loss reads only each record's own tokens
        self.ragged = bool((self.record_counts != self.n_max).any())
        # (T,) bool; None when any shard predates the content flags
        self._content = torch.cat(content) if len(content) == len(shards) else None
        if in_memory is None:
            in_memory = n_bytes <= max_memory_gb * 2**30
        self.in_memory = in_memory
        if in_memory:
            n = self.n_max
            self._image = torch.cat([pad_tokens(fh.get_tensor("image_states"), n, 1) for fh in self._handles]).float()  # (R, N, D)
            self._tokens = torch.cat([fh.get_tensor("token_states") for fh in self._handles]).float()  # (T, D)
            self._maps = torch.cat([pad_tokens(fh.get_tensor("maps"), n, 1) for fh in self._handles]).float()  # (T, N)

    def token_mask(self, tokens: str = "content") -> torch.Tensor:
        """(T,) bool: the tokens of ``tokens`` ("content": the ones the Guard scores, or "all").

        Raises :class:`DataError` for "content" on a dataset whose shards carry no content flags.
        """
        if tokens == "all":
            return torch.ones(self.n_tokens, dtype=torch.bool)
        if tokens != "content":
            raise InputError(f"unknown token set {tokens!r}; expected one of: {', '.join(TOKEN_SETS)}")
        if self._content is None:
            raise DataError(
                f"the dataset in {self.folder} has no content-token flags (built by an earlier version): "
                "rebuild it with `fastrm distill build --overwrite`, or train on every token (tokens='all')"
            )
        return self._content

    def batch(self, token_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(token_states (B, D), image_states (B, N_max, D), maps (B, N_max))`` float32 for global token
        indices; entries beyond a record's own image tokens are zero (see :meth:`valid`)."""
        records = self.token_record[token_indices]
        if self.in_memory:
            return self._tokens[token_indices], self._image[records], self._maps[token_indices]
        q, img, maps = [], [], []
        for t, r in zip(token_indices.tolist(), records.tolist()):
            fh = self._handles[int(self.token_shard[t])]
            lt, lr = int(self.token_local[t]), int(self.record_local[r])
            q.append(fh.get_slice("token_states")[lt : lt + 1])
            maps.append(pad_tokens(fh.get_slice("maps")[lt : lt + 1], self.n_max, 1))
            img.append(pad_tokens(fh.get_slice("image_states")[lr : lr + 1], self.n_max, 1))
        return torch.cat(q).float(), torch.cat(img).float(), torch.cat(maps).float()

    def valid(self, token_indices: torch.Tensor) -> torch.Tensor | None:
        """(B, N_max) bool: which entries of :meth:`batch` are real image tokens; ``None`` when all are."""
        if not self.ragged:
            return None
        counts = self.record_counts[self.token_record[token_indices]]  # (B,)
        return torch.arange(self.n_max)[None] < counts[:, None]


def split_records(n_records: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_records, val_records)`` indices; at least one validation record when val_fraction > 0."""
    order = np.random.RandomState(seed).permutation(n_records)
    n_val = 0 if val_fraction <= 0 else min(max(1, int(round(val_fraction * n_records))), n_records - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# --------------------------------------------------------------------------------------
# training


def _loss_and_counts(proxy: FastRMProxy, q, img, maps, threshold: float, pos_weight: float = 1.0, valid=None,
                     f1_weight: float = 0.0):
    logits = proxy(q[:, None], img)[:, 0]  # (B, N_img)
    labels = binarize_maps(maps, threshold).float()  # padding: zero maps, label 0 (and masked below)
    weight = None if pos_weight == 1.0 else torch.tensor(pos_weight, device=logits.device)
    if valid is None:
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)
    else:  # (B, N_max): the mean over each record's own image tokens only
        each = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight, reduction="none")
        loss = (each * valid).sum() / valid.sum().clamp_min(1)
    if f1_weight:  # a differentiable F1 over the batch's patches (probabilities as soft predictions)
        p = torch.sigmoid(logits) if valid is None else torch.sigmoid(logits) * valid
        tp = (p * labels).sum()
        soft_f1 = 2 * tp / (2 * tp + (p * (1 - labels)).sum() + ((1 - p) * labels).sum()).clamp_min(1e-6)
        loss = loss + f1_weight * (1 - soft_f1)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))  # padding never predicted positive
    pred = logits > 0  # probability > 0.5
    tp = (pred & labels.bool()).sum().item()
    fp = (pred & ~labels.bool()).sum().item()
    fn = (~pred & labels.bool()).sum().item()
    return loss, (tp, fp, fn)


@torch.no_grad()
def _validate(proxy, store: PairStore, tokens: torch.Tensor, threshold: float, batch_size: int, device,
              pos_weight: float, f1_weight: float = 0.0) -> dict:
    proxy.eval()
    total, n, tp, fp, fn = 0.0, 0, 0, 0, 0
    for start in range(0, tokens.numel(), max(batch_size, 256)):
        idx = tokens[start : start + max(batch_size, 256)]
        q, img, maps = (x.to(device) for x in store.batch(idx))
        valid = store.valid(idx)
        valid = None if valid is None else valid.to(device)
        loss, (a, b, c) = _loss_and_counts(proxy, q, img, maps, threshold, pos_weight, valid, f1_weight)
        total += loss.item() * idx.numel()
        n += idx.numel()
        tp, fp, fn = tp + a, fp + b, fn + c
    proxy.train()
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return {"val_loss": total / max(n, 1), "val_f1": f1}


def _manifest_digest(folder: Path) -> str:
    return hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()


def train_proxy(
    data: str | Path | PairStore,
    out: str | Path | None = None,
    config: TrainConfig = TrainConfig(),
    *,
    on_step: Callable[[int, float, dict | None], None] | None = None,
    on_split: Callable[[dict, list[str]], None] | None = None,
) -> TrainResult:
    """Distil a :class:`FastRMProxy` from a dataset folder written by :func:`build_dataset`.

    Args:
        data: the dataset folder (or an open :class:`PairStore`).
        out: where to save the best checkpoint (a proxy folder for
            :meth:`FastRMProxy.from_pretrained`, plus ``training_log.json``); ``None`` saves nothing.
        config: hyper-parameters (:class:`TrainConfig`).
        on_step: called after each step as ``on_step(step, train_loss, evaluation_or_None)``.
        on_split: called once before the first step as ``on_split(split, warnings)``: the records and
            tokens of each split (``n_train_records``, ``n_val_records``, ``n_train_tokens``,
            ``n_val_tokens``) and :func:`split_warnings` (a validation split too small to select on).

    Returns:
        A :class:`TrainResult` whose ``proxy`` holds the best weights (by validation loss, or F1
        with ``config.select="f1"``; the last weights when ``val_fraction`` is 0).

    Example::

        result = train_proxy("runs/ds", "runs/proxy", TrainConfig(steps=2000))
        FastRMProxy.from_pretrained("runs/proxy").config.training["best_step"]
    """
    store = data if isinstance(data, PairStore) else PairStore(data, max_memory_gb=config.max_memory_gb)
    manifest = store.manifest
    threshold = config.label_threshold or manifest.label_threshold
    device = torch.device(config.device)

    train_rec, val_rec = split_records(store.n_records, config.val_fraction, config.seed)
    in_train = torch.zeros(store.n_records, dtype=torch.bool)
    in_train[torch.from_numpy(train_rec)] = True
    selected = store.token_mask(config.tokens)  # (T,)
    train_tokens = (in_train[store.token_record] & selected).nonzero(as_tuple=True)[0]  # (T_train,)
    val_tokens = ((~in_train)[store.token_record] & selected).nonzero(as_tuple=True)[0]  # (T_val,)
    if train_tokens.numel() == 0:
        raise DataError(f"no {config.tokens} token in the training split of {store.folder}")
    split = {"n_train_records": int(len(train_rec)), "n_val_records": int(len(val_rec)),
             "n_train_tokens": int(train_tokens.numel()), "n_val_tokens": int(val_tokens.numel())}
    warnings = split_warnings(split, config.select)
    if on_split is not None:
        on_split(split, warnings)

    proxy_config = ProxyConfig(
        hidden_size=manifest.hidden_size,
        head_dim=config.head_dim,
        n_image_tokens=manifest.n_image_tokens,  # None for a variable-grid family: any regions
        grid=None if manifest.grid is None else tuple(manifest.grid),
        label_threshold=threshold,
        distilled_from=manifest.model_id,
        adapter=manifest.adapter,
        training_data_hash=manifest.data_hash,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        proxy = FastRMProxy(proxy_config).to(device).train()
    optim = torch.optim.Adam(proxy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)

    def batches():
        if config.record_balance:  # long answers (descriptions) weigh less per token: n^-alpha each
            records = store.token_record[train_tokens]
            per_record = torch.bincount(records)[records].double()  # (T_train,) tokens of each one's record
            weights = per_record.pow(-config.record_balance)
            while True:
                yield train_tokens[torch.multinomial(weights, config.batch_size, replacement=True, generator=gen)]
        while True:  # epochs of a seeded permutation of the training tokens
            perm = train_tokens[torch.randperm(train_tokens.numel(), generator=gen)]
            for start in range(0, perm.numel(), config.batch_size):
                chunk = perm[start : start + config.batch_size]
                if chunk.numel() == config.batch_size or perm.numel() < config.batch_size:
                    yield chunk

    def better(evaluation: dict, best: dict | None) -> bool:
        if best is None:
            return True
        if config.select == "f1":
            return evaluation["val_f1"] > best["val_f1"]
        return evaluation["val_loss"] < best["val_loss"]

    best_state, best_eval = None, None
    history: list[dict] = []
    losses: list[float] = []
    stream = batches()
    for step in range(1, config.steps + 1):
        idx = next(stream)
        q, img, maps = (x.to(device) for x in store.batch(idx))
        valid = store.valid(idx)
        valid = None if valid is None else valid.to(device)
        loss, _ = _loss_and_counts(proxy, q, img, maps, threshold, config.pos_weight, valid, config.f1_weight)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if config.lr_schedule == "cosine":  # decays to 0 at the last step
            for group in optim.param_groups:
                group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
        optim.step()
        losses.append(loss.item())
        evaluation = None
        if val_tokens.numel() and (step % config.eval_every == 0 or step == config.steps):
            evaluation = {"step": step, "train_loss": float(np.mean(losses[-config.eval_every :]))}
            evaluation.update(_validate(proxy, store, val_tokens, threshold, config.batch_size, device,
                                        config.pos_weight, config.f1_weight))
            history.append(evaluation)
            if better(evaluation, best_eval):
                best_eval = evaluation
                best_state = copy.deepcopy(proxy.state_dict())
        if on_step is not None:
            on_step(step, losses[-1], evaluation)
    best_step = config.steps if best_eval is None else best_eval["step"]
    best_loss = None if best_eval is None else best_eval["val_loss"]
    if best_state is not None:
        proxy.load_state_dict(best_state)
    proxy.eval()

    training = {
        **{k: v for k, v in asdict(config).items() if k not in ("device", "max_memory_gb")},
        "label_threshold": threshold,
        "best_step": best_step,
        "best_val_loss": best_loss,
        "best_val_f1": None if best_eval is None else best_eval["val_f1"],
        **split,
        "warnings": warnings,
        "dataset": str(store.folder.resolve()),
        "dataset_manifest_sha256": _manifest_digest(store.folder),
        "data": manifest.data,
    }
    proxy.config = proxy_config.model_copy(update={"training": training})
    path = None
    if out is not None:
        path = proxy.save_pretrained(out)
        log = {"history": history, "losses": [round(x, 6) for x in losses]}
        (path / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return TrainResult(proxy=proxy, path=path, best_step=best_step, best_val_loss=best_loss, history=history,
                       losses=losses, split=split, warnings=warnings)

"""Distillation datasets: (hidden state, exact gradient map) pairs written as sharded safetensors.

For every record of a VQA JSONL file (``id``, ``image``, ``question``, ``answers``) the
builder generates an answer greedily and keeps, for each generated token t:

* ``token_states[t]`` (D,): the last hidden state of the position that predicted t
  (:func:`fastrm_core.capturing.capture` with ``keep_states=True``);
* ``maps[t]`` (N_img,): the exact gradient relevancy map over the image patches
  (:func:`fastrm_core.relevancy.gradient_relevancy`), float32, flat over the prompt's image
  regions (row-major within each);
* ``token_ids[t]`` and ``content[t]``, whether t is a content token (the trainer distils
  those by default: they are the maps the Guard scores);

and once per record ``image_states`` (N_img, D), the image patches' last hidden states.

Layout of the output folder::

    OUT/manifest.json                  Manifest (model, adapter, data hash, settings, shards, skipped records)
    OUT/shard-00000.safetensors        records [0, S) of the input file, S = records_per_shard
    OUT/shard-00001.safetensors        records [S, 2S) ...

A shard holds flat tensors and offsets::

    image_states   (R, N_max, D)   states dtype (the model's by default)
    token_states   (T_tot, D)      states dtype
    maps           (T_tot, N_max)  float32
    image_counts   (R,)            int64: record r's image tokens N_r; rows beyond N_r are zero padding
                                   (every N_r equals N_max for a fixed-grid model; shards from earlier
                                   builders lack it: all N_max)
    token_ids      (T_tot,)        int64
    content        (T_tot,)        bool: the tokens the Guard scores (no special, EOS or punctuation-only
                                   token; :func:`fastrm_common.tokens.content_token_mask`). Datasets
                                   from earlier builders lack it: rebuild them, or train on all tokens
    token_offsets  (R + 1,)        int64: record r owns rows token_offsets[r]:token_offsets[r+1]

and its safetensors metadata ``records`` is a JSON list of ``{"id", "answer", "regions"}``
(``regions``: ``[{"image", "kind", "grid"}]``, the order of the flat maps).

**Resumable.** Shard k always covers input records ``[k S, (k+1) S)``, whatever happens, so a
run can be killed at any moment and started again with the same command: shards listed in the
manifest are kept, the others are (re)computed. Each shard is written to a temporary file and
renamed, and the manifest is rewritten (atomically) after every shard, so a kill loses at most
the shard in progress and never leaves a half-written file behind. Memory is bounded by one
shard's worth of records.

**Bad records** (missing or unreadable image, an empty answer, a sequence the model cannot
explain) are skipped and listed in the manifest with their reason; malformed JSONL lines are
listed with their line number.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fastrm_core.adapters import VLMAdapter
from fastrm_common.errors import ConfigMismatchError, DataError, GuardrailError, InputError
from fastrm_common.records import dataset_hash, read_vqa_jsonl
from fastrm_core.capturing import capture
from fastrm_core.integrity import weights_fingerprint
from fastrm_core.relevancy import gradient_relevancy

from .generation import content_mask, greedy_kwargs, load_image, prepare_inputs

__all__ = [
    "BuildSettings",
    "Manifest",
    "ModelInfo",
    "RecordExample",
    "ShardEntry",
    "SkippedRecord",
    "build_shard",
    "load_manifest",
    "read_shard",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "fastrm-distill/1"

OnRecord = Callable[[str, int], None]  # (record id, number of tokens; 0 when skipped)


# --------------------------------------------------------------------------------------
# configuration and manifest


@dataclass(frozen=True)
class BuildSettings:
    """What the builder does with each record (recorded in the manifest; a resume must match).

    ``states_dtype``: dtype the hidden states are stored in; ``"auto"`` keeps the model's.
    ``label_threshold`` is not applied here (maps are stored continuous); it is the default
    the trainer binarises with.
    """

    max_new_tokens: int = 10
    prompt_suffix: str | None = None
    records_per_shard: int = 64
    label_threshold: float = 0.3
    states_dtype: str = "auto"

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.records_per_shard < 1:
            raise InputError(f"records_per_shard must be >= 1, got {self.records_per_shard}")
        if not 0 < self.label_threshold <= 1:
            raise InputError(f"label_threshold must be in (0, 1], got {self.label_threshold}")
        if self.states_dtype not in _STATE_DTYPES:
            raise InputError(f"unknown states_dtype {self.states_dtype!r}; expected one of: {', '.join(_STATE_DTYPES)}")


_STATE_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SkippedRecord(BaseModel):
    """A record (or a malformed input line) that is not in the dataset, and why."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    line: int | None = None
    reason: str


class ShardEntry(BaseModel):
    """One finished shard: input records ``[index * S, (index + 1) * S)``."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    file: str | None  # None when every record of the shard was skipped
    records: list[str]
    n_tokens: int = Field(ge=0)
    sha256: str | None = None
    skipped: list[SkippedRecord] = Field(default_factory=list)
    seconds: float = 0.0


class Manifest(BaseModel):
    """``manifest.json`` of a distillation dataset (rewritten after each finished shard)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["fastrm-distill/1"] = FORMAT
    model: str
    model_id: str
    adapter: str
    hidden_size: int
    n_image_tokens: int | None = None  # a fixed-grid model's tokens per image; None: variable grids
    grid: tuple[int, int] | None = None
    data: str
    data_hash: str
    model_hash: str | None = None  # sha256 of the weights (fastrm_core.weights_fingerprint)
    images_hash: str | None = None  # sha256 over every referenced image file's path and bytes
    label_threshold: float
    settings: dict
    prompt_template: str
    library_version: str
    versions: dict[str, str] = Field(default_factory=dict)
    n_input_records: int
    n_shards: int
    complete: bool = False
    n_records: int = 0
    n_tokens: int = 0
    invalid_lines: list[SkippedRecord] = Field(default_factory=list)
    skipped: list[SkippedRecord] = Field(default_factory=list)
    shards: list[ShardEntry] = Field(default_factory=list)

    def refresh_totals(self) -> "Manifest":
        """Sort shards and recompute the totals and the flat ``skipped`` list from them."""
        self.shards.sort(key=lambda s: s.index)
        self.n_records = sum(len(s.records) for s in self.shards)
        self.n_tokens = sum(s.n_tokens for s in self.shards)
        self.skipped = [*self.invalid_lines, *(k for s in self.shards for k in s.skipped)]
        self.complete = len(self.shards) == self.n_shards
        return self

    def identity(self) -> dict:
        """The fields a resumed run must agree on."""
        return {
            "model_id": self.model_id,
            "adapter": self.adapter,
            "hidden_size": self.hidden_size,
            "grid": None if self.grid is None else tuple(self.grid),
            "data_hash": self.data_hash,
            "model_hash": self.model_hash,
            "images_hash": self.images_hash,
            "settings": self.settings,
            "prompt_template": self.prompt_template,
        }


def load_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json``. Raises :class:`DataError` when absent or invalid."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{folder} is not a distillation dataset: no {MANIFEST_NAME}")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (ValidationError, json.JSONDecodeError) as exc:
        raise DataError(f"invalid manifest {path}: {exc}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_manifest(folder: Path, manifest: Manifest) -> None:
    manifest.refresh_totals()
    _write_atomic(folder / MANIFEST_NAME, (manifest.model_dump_json(indent=2) + "\n").encode())


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastrm-guard")
    except PackageNotFoundError:
        return "unknown"


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


# --------------------------------------------------------------------------------------
# one record


@dataclass
class RecordExample:
    """Everything the dataset keeps for one record.

    token_ids (T,), token_states (T, D), maps (T, N_img) float32, image_states (N_img, D),
    content (T,) bool: the tokens the Guard scores (:func:`fastrm_common.tokens.content_token_mask`),
    regions: ``[{"image", "kind", "grid"}]`` of the prompt, the order of the flat maps.
    """

    id: str
    answer: str
    token_ids: torch.Tensor
    token_states: torch.Tensor
    maps: torch.Tensor
    image_states: torch.Tensor
    content: torch.Tensor
    regions: list = None


@dataclass(frozen=True)
class ModelInfo:
    """What a manifest records about the model (from its adapter; Ray workers send it back)."""

    model_id: str
    adapter: str
    hidden_size: int
    grid: tuple[int, int] | None  # None: a variable-grid family
    prompt_template: str
    model_hash: str | None = None  # weights_fingerprint: the weights, not the folder's name

    @classmethod
    def from_model(cls, adapter: VLMAdapter, processor, settings: "BuildSettings") -> "ModelInfo":
        _, template = adapter.build_prompt(processor, "?", settings.prompt_suffix)
        grid = adapter.fixed_grid
        return cls(adapter.model_id, adapter.name, adapter.hidden_size, None if grid is None else tuple(grid), template,
                   weights_fingerprint(adapter.model))


class SkipRecord(Exception):
    """Internal: the record cannot be used; ``str(exc)`` is the reason written to the manifest."""


def process_record(model, processor, adapter: VLMAdapter, record, settings: BuildSettings) -> RecordExample:
    """Generate greedily for one record and compute its states and exact maps.

    Raises :class:`SkipRecord` with the reason when the record cannot be used.
    """
    try:
        image = load_image(record.image)
        prompt, _ = adapter.build_prompt(processor, record.question, settings.prompt_suffix)
        inputs = prepare_inputs(model, processor, image, prompt)
    except (DataError, InputError, ValueError) as exc:
        raise SkipRecord(str(exc)) from exc
    try:
        with torch.no_grad(), capture(model, keep_states=True, adapter=adapter) as cap:
            out = model.generate(**inputs, **greedy_kwargs(adapter, settings.max_new_tokens))
        prompt_len = inputs["input_ids"].shape[1]
        new = out[0, prompt_len:]  # (T,)
        answer = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
        if not answer:
            raise SkipRecord(f"empty answer (generated token ids {new.tolist()})")
        rel = gradient_relevancy(model, inputs, out, adapter=adapter)
    except GuardrailError as exc:
        raise SkipRecord(f"{type(exc).__name__}: {exc}") from exc
    n_tok = len(rel)
    queries = cap.queries[0, :n_tok]  # (T, D)
    if queries.shape[0] != n_tok:
        raise SkipRecord(f"captured {queries.shape[0]} token states for {n_tok} generated tokens")
    dtype = _STATE_DTYPES[settings.states_dtype]
    image_states = cap.row_image_states(0)  # (N_img, D)
    if dtype is not None:
        queries, image_states = queries.to(dtype), image_states.to(dtype)
    return RecordExample(
        id=record.id,
        answer=answer,
        token_ids=rel.token_ids.to(torch.int64),
        token_states=queries.contiguous(),
        maps=rel.flat_maps.float().contiguous(),  # (T, N_img)
        image_states=image_states.contiguous(),
        content=content_mask(model, processor, rel.token_ids),
        regions=[{"image": r.image, "kind": r.kind, "grid": list(r.grid)} for r in rel.regions],
    )


# --------------------------------------------------------------------------------------
# shards


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(folder: Path, index: int, examples: list[RecordExample]) -> tuple[str, str]:
    """Write the shard atomically (temporary file + rename); returns ``(file name, sha256)``."""
    from safetensors.torch import save

    counts = torch.tensor([0] + [int(e.token_ids.numel()) for e in examples], dtype=torch.int64)
    n_img = [int(e.image_states.shape[0]) for e in examples]
    n_max = max(n_img)
    tensors = {
        "image_states": torch.stack([pad_tokens(e.image_states, n_max, dim=0) for e in examples]),  # (R, N_max, D)
        "token_states": torch.cat([e.token_states for e in examples]),  # (T_tot, D)
        "maps": torch.cat([pad_tokens(e.maps, n_max, dim=1) for e in examples]),  # (T_tot, N_max)
        "token_ids": torch.cat([e.token_ids for e in examples]),  # (T_tot,)
        "content": torch.cat([e.content for e in examples]),  # (T_tot,) bool
        "token_offsets": torch.cumsum(counts, 0),  # (R + 1,)
        "image_counts": torch.tensor(n_img, dtype=torch.int64),  # (R,)
    }
    records = [{"id": e.id, "answer": e.answer, **({"regions": e.regions} if e.regions is not None else {})}
               for e in examples]
    meta = {"format": FORMAT, "records": json.dumps(records)}
    name = shard_name(index)
    _write_atomic(folder / name, save(tensors, metadata=meta))
    return name, _sha256(folder / name)


def pad_tokens(values: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """``values`` zero-padded along ``dim`` (its image-token axis) to length ``n``."""
    missing = n - values.shape[dim]
    if missing <= 0:
        return values
    shape = list(values.shape)
    shape[dim] = missing
    return torch.cat([values, values.new_zeros(shape)], dim=dim)


def read_shard(path: str | Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``(tensors, records)`` of one shard file (see the module docstring for the tensors)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from exc
    except Exception as exc:  # safetensors' own SafetensorError (truncated or damaged file)
        raise DataError(f"cannot read shard {path} (truncated or damaged?): {exc}") from None
    return tensors, json.loads(meta.get("records", "[]"))


def build_shard(
    model,
    processor,
    adapter: VLMAdapter,
    index: int,
    records: list,
    folder: str | Path,
    settings: BuildSettings,
    on_record: OnRecord | None = None,
) -> ShardEntry:
    """Process the records of shard ``index``, write its file and return its manifest entry.

    Used by the local loop and by each Ray worker. ``on_record(record_id, n_tokens)`` is called
    after each record (0 tokens = skipped).
    """
    folder = Path(folder)
    start = time.perf_counter()
    examples: list[RecordExample] = []
    skipped: list[SkippedRecord] = []
    for record in records:
        try:
            examples.append(process_record(model, processor, adapter, record, settings))
            n_tok = int(examples[-1].token_ids.numel())
        except SkipRecord as exc:
            skipped.append(SkippedRecord(id=record.id, reason=str(exc)))
            n_tok = 0
        if on_record is not None:
            on_record(record.id, n_tok)
    file, digest = write_shard(folder, index, examples) if examples else (None, None)
    return ShardEntry(
        index=index,
        file=file,
        records=[e.id for e in examples],
        n_tokens=sum(int(e.token_ids.numel()) for e in examples),
        sha256=digest,
        skipped=skipped,
        seconds=round(time.perf_counter() - start, 3),
    )


# --------------------------------------------------------------------------------------
# the whole dataset


def plan_shards(records: list, records_per_shard: int) -> list[tuple[int, list]]:
    """``[(index, records)]``: shard k holds input records ``[k S, (k+1) S)``."""
    return [(k, records[i : i + records_per_shard]) for k, i in enumerate(range(0, len(records), records_per_shard))]


def records_done(manifest: Manifest) -> int:
    """Input records already processed (kept or skipped) by the finished shards."""
    return sum(len(s.records) + len(s.skipped) for s in manifest.shards)


def _shard_done(folder: Path, entry: ShardEntry) -> bool:
    """True when the shard's file is there with the bytes the manifest recorded (a damaged one is redone)."""
    if entry.file is None:
        return True
    path = folder / entry.file
    if not path.is_file():
        return False
    if entry.sha256 is not None and _sha256(path) != entry.sha256:
        path.unlink()
        return False
    return True


def verify_shard(folder: str | Path, entry: ShardEntry) -> Path:
    """The shard's path, after checking its bytes against the manifest's sha256.

    Raises :class:`DataError` naming the shard when it is missing or its content changed
    (a flipped bit, a swapped or truncated file) since ``fastrm distill build`` wrote it.
    """
    path = Path(folder) / str(entry.file)
    if not path.is_file():
        raise DataError(f"shard {path} listed in the manifest is missing")
    if entry.sha256 is None:
        raise DataError(f"shard {path} has no sha256 in the manifest; rebuild the dataset with --overwrite")
    digest = _sha256(path)
    if digest != entry.sha256:
        raise DataError(
            f"shard {path} changed since it was built (sha256 {digest[:16]}..., manifest {entry.sha256[:16]}...); "
            "re-run `fastrm distill build` with the same arguments to recompute it"
        )
    return path


def images_hash(records, base: str | Path | None = None) -> str:
    """sha256 over the sorted (path, sha256 of the bytes) of every image the records reference.

    Paths are taken relative to ``base`` (the data file's folder) when under it, so a moved
    dataset folder keeps its hash; a missing image counts as missing.
    """
    digest = hashlib.sha256()
    for image in sorted({Path(getattr(r, "image", "")) for r in records}):
        try:
            name = str(image.relative_to(base)) if base is not None else str(image)
        except ValueError:
            name = str(image)
        digest.update(name.encode() + b"\0")
        digest.update(_sha256(image).encode() if image.is_file() else b"<missing>")
    return digest.hexdigest()


def prepare_manifest(
    data: str | Path,
    out: str | Path,
    *,
    model_name: str,
    info: ModelInfo,
    settings: BuildSettings,
    overwrite: bool = False,
) -> tuple[Manifest, list[tuple[int, list]]]:
    """Read the data, create or resume the manifest in ``out``; returns it and the shards still to do."""
    data, out = Path(data), Path(out)
    records, problems = read_vqa_jsonl(data, check_images=False)
    plan = plan_shards(records, settings.records_per_shard)
    manifest = Manifest(
        model=str(model_name),
        model_id=info.model_id,
        adapter=info.adapter,
        hidden_size=info.hidden_size,
        n_image_tokens=None if info.grid is None else info.grid[0] * info.grid[1],
        grid=None if info.grid is None else tuple(info.grid),
        data=str(data.resolve()),
        data_hash=dataset_hash(data),
        model_hash=info.model_hash,
        images_hash=images_hash(records, data.resolve().parent),
        label_threshold=settings.label_threshold,
        settings=asdict(settings),
        prompt_template=info.prompt_template,
        library_version=_library_version(),
        versions=_versions(),
        n_input_records=len(records),
        n_shards=len(plan),
        invalid_lines=[SkippedRecord(line=p.line, reason=p.message) for p in problems],
    )
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_NAME).is_file() and not overwrite:
        old = load_manifest(out)
        new_id, old_id = manifest.identity(), old.identity()
        diff = [k for k in new_id if new_id[k] != old_id[k]]
        if diff:
            details = "; ".join(f"{k}: {old_id[k]!r} (existing) != {new_id[k]!r} (this run)" for k in diff)
            raise ConfigMismatchError(
                f"{out} holds a dataset built with different inputs ({details}); "
                "use a new --out folder or --overwrite"
            )
        # a shard whose bytes no longer match the manifest (damaged, truncated) is removed and redone
        manifest.shards = [s for s in old.shards if _shard_done(out, s)]
    elif overwrite:
        for stale in out.glob("shard-*.safetensors"):
            stale.unlink()
    done = {s.index for s in manifest.shards}
    save_manifest(out, manifest)
    return manifest, [(k, recs) for k, recs in plan if k not in done]


def iter_records(folder: str | Path) -> Iterator[tuple[dict, dict[str, torch.Tensor]]]:
    """Yield ``(record_meta, tensors)`` per record of a dataset, in input order.

    ``tensors``: ``image_states`` (N_img, D), ``token_states`` (T, D), ``maps`` (T, N_img) (the
    record's own N_img, padding removed), ``token_ids`` (T,) and, for datasets that carry them,
    ``content`` (T,) bool. Reads one shard at a time (bounded memory).
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    for shard in sorted(manifest.shards, key=lambda s: s.index):
        if shard.file is None:
            continue
        tensors, records = read_shard(folder / shard.file)
        offsets = tensors["token_offsets"]
        n_max = tensors["image_states"].shape[1]
        counts = tensors["image_counts"].tolist() if "image_counts" in tensors else [n_max] * len(records)
        for r, meta in enumerate(records):
            lo, hi = int(offsets[r]), int(offsets[r + 1])
            yield meta, {
                "image_states": tensors["image_states"][r, : counts[r]],
                "token_states": tensors["token_states"][lo:hi],
                "maps": tensors["maps"][lo:hi, : counts[r]],
                "token_ids": tensors["token_ids"][lo:hi],
                **({"content": tensors["content"][lo:hi]} if "content" in tensors else {}),
            }

"""Train the reference LLaVA on ShapesVQA.

The shipped model (``make reference-model``, 51 min on one shared CPU core)::

    python -m shapesvqa.train --run runs/reference --seed 4 --world cooccur-describe \
        --attn-warmup 1.0 --attn-fade 0.0 --ship

The defaults with ``--seed 4`` (the ``default`` world, attention warm-up) reproduce the previous,
grounded reference model, which never hallucinates objects (39 min). ``--ship`` overwrites
``shapesvqa/assets/reference-llava``: regenerate the proxy and the calibration after it.
Stages and losses (weights in :class:`TrainConfig`):

0. Vision pre-training (``vision_steps``): only the vision tower and two throw-away linear heads
   on its patch features, which predict each patch's colour (or background) and, on object
   patches only, its shape -- like CLIP pre-training teaches a tower what is where.
1. Main run (``steps``):

   - ``answer``: cross-entropy of the answer word and of the closing ``</s>``;
   - ``patch`` (whole run): the stage-0 loss, kept as an auxiliary;
   - ``align`` (whole run): each object patch's projected embedding is pulled (cosine) toward
     e(colour word) + e(shape word) of the LM's input embeddings (held fixed as targets), as
     LLaVA's projector pre-training aligns image tokens with words;
   - ``attn`` (warm-up only: full weight for the first ``attn_warmup`` of the main steps, then
     faded linearly to zero over ``attn_fade``, then OFF): cross-entropy pulling (a) in the
     ``keyword_attn_layers`` the attention of each colour/shape word of the question toward the
     patches of the objects with that colour/shape, and (b) in the ``answer_attn_layers`` the
     attention of the answer-predicting position toward the evidence object's patches
     (``answer_target="evidence"``) or toward the question's colour/shape words ("keyword").
     ``attn_heads=0`` supervises the head mean renormalised over the image tokens; ``attn_heads=k``
     the full attention mass of the first k heads. Grounding is only ever measured on the final
     model, long after this loss is off;
   - curriculum: at most 2 objects per scene at the start, growing to 6 over ``curriculum``.

Deterministic from ``--seed``: the batch of step s holds examples ``s*B .. s*B+B-1`` of the
training split (world seed ``seed * 1000 + 17``; stage 0 uses ``seed * 1000 + 18``); the torch RNG
state is checkpointed. Resumable: re-running the same command continues from ``RUN/checkpoint.pt``
(a local training checkpoint, gitignored). The artifact is the ``save_pretrained`` folder written
at the end to ``RUN/final`` and, with ``--ship``, to the package's assets folder;
``--export-only DIR`` writes the last checkpoint as such a folder.

``--world NAME`` trains on another world of :data:`shapesvqa.world.WORLDS` (``cooccur``: the
hallucination world of docs/shapesvqa.md; its log adds POPE figures, :func:`pope_quick`);
``--world-bias-rate Q`` and ``--world-bias-partners "a b,c d"`` override that world's share of
biased labels and the partners they apply to; ``--init-from DIR`` starts
from a saved model (a fine-tune, for probes). The default world draws exactly the previous model's data.
"""

from __future__ import annotations

import argparse
import json
import sys
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastrm_core.relevancy import gradient_relevancy_batch

from .grounding import object_patches, pointing
from .model import SHIPPED_MODEL_DIR, ModelSpec, build_model, build_processor, build_tokenizer, pixel_values, prompt
from .world import COLORS, FAMILIES, SHAPES, WorldConfig, make_example, world_config

__all__ = ["Batcher", "TrainConfig", "describe_quick", "evaluate_quick", "generate_texts", "main", "pope_quick", "train"]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 7000  # main steps (after the vision stage)
    batch: int = 32
    lr: float = 1.5e-3
    min_lr: float = 5e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    w_patch: float = 0.5
    w_align: float = 0.5
    w_attn: float = 1.0
    attn_warmup: float = 0.3  # fraction of main steps with full attention supervision
    attn_fade: float = 0.2  # fraction of steps over which it fades to zero
    curriculum: float = 0.3  # fraction of steps over which max objects grows 2 -> 6
    patch_label_coverage: float = 0.3
    answer_attn_layers: str = "0-3"  # LM layers whose answer-position attention is supervised (warm-up)
    keyword_attn_layers: str = "0-1"  # LM layers whose colour/shape-word attention is supervised (warm-up)
    attn_heads: int = 0  # >0: supervise the full attention mass of the first attn_heads heads (else head mean over image)
    answer_target: str = "evidence"  # answer-position warm-up target: "evidence" patches or the question's "keyword" tokens
    vision_steps: int = 800  # vision-only pre-training steps (patch colour/shape heads) before the main run
    vision_batch: int = 64
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256
    world: str = "default"  # training world: a name of shapesvqa.world.WORLDS ("cooccur": the hallucination world)
    world_bias_rate: float = -1.0  # >= 0: override the world's share of biased "yes" labels (bias_rate)
    world_bias_partners: str = ""  # "blue square,green cross": override the world's bias_partners ("all": every one)
    init_from: str = ""  # a save_pretrained folder to start from (a fine-tune; use with --vision-steps 0)

    def spec(self) -> ModelSpec:
        return ModelSpec(text_hidden=self.text_hidden, text_layers=self.text_layers, text_heads=self.text_heads,
                         text_intermediate=self.text_intermediate)

    def world_config(self, n_objects: tuple[int, int]) -> WorldConfig:
        """The training world with ``n_objects`` per scene (``default``: exactly the previous model's data)."""
        extra: dict = {"bias_rate": self.world_bias_rate} if self.world_bias_rate >= 0 else {}
        if self.world_bias_partners:
            names = [] if self.world_bias_partners == "all" else self.world_bias_partners.split(",")
            extra["bias_partners"] = tuple(t.strip() for t in names)
        return world_config(self.world, n_objects=n_objects, **extra)


class Batcher:
    """Turns ShapesVQA examples into model inputs (right-padded) plus auxiliary targets."""

    def __init__(self, tokenizer, spec: ModelSpec):
        self.tok = tokenizer
        self.spec = spec
        self.n_img = spec.grid * spec.grid
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self._cache: dict[str, list[int]] = {}
        self.colors = list(COLORS)
        from .world import PLURALS

        self.word_attr = {tokenizer.convert_tokens_to_ids(c): ("color", c) for c in COLORS}
        for sh in SHAPES:
            self.word_attr[tokenizer.convert_tokens_to_ids(sh)] = ("shape", sh)
            self.word_attr[tokenizer.convert_tokens_to_ids(PLURALS[sh])] = ("shape", sh)

    def prompt_ids(self, question: str) -> list[int]:
        ids = self._cache.get(question)
        if ids is None:
            # Same ids as LlavaProcessor: it expands "<image>" to n_img copies before tokenising.
            text = prompt(question).replace("<image>", "<image>" * self.n_img)
            ids = self.tok(text)["input_ids"]
            self._cache[question] = ids
        return ids

    def answer_id(self, word: str) -> int:
        return self.tok.convert_tokens_to_ids(word)

    def answer_tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of an answer (one word, or a description) and each token's character span."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    def __call__(self, examples, with_answer: bool = True, cov_threshold: float = 0.3) -> dict:
        seqs, pos, ans = [], [], []
        # Continuation targets (every answer token after the first, then </s>): (row, position, token, weight).
        cont: list[tuple[int, int, int, float]] = []
        # Descriptions: the positions predicting a real mention's size, colour and shape words -> its object.
        desc: list[tuple[int, int, int]] = []
        for i, ex in enumerate(examples):
            ids = self.prompt_ids(ex.question)
            if ex.mentions is None:
                toks, offs = [self.answer_id(ex.answers[0])], [(0, len(ex.answers[0]))]
            else:
                toks, offs = self.answer_tokens(ex.answers[0])
            pos.append(len(ids) - 1)
            ans.append(toks[0])
            seqs.append(ids + toks + [self.eos_id] if with_answer else list(ids))
            w = 0.5 if ex.mentions is None else 0.25
            for j, t in enumerate(toks[1:] + [self.eos_id]):
                cont.append((i, len(ids) + j, t, w))
            for m in ex.mentions or []:
                if m.object is None:
                    continue
                for j, (a, b) in enumerate(offs):
                    if a >= m.start and b <= m.end and ex.answers[0][a:b] in (m.size, m.color, m.shape):
                        desc.append((i, len(ids) + j - 1, m.object))
        n = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        images = np.stack([ex.scene.image for ex in examples])
        g, p = self.spec.grid, self.spec.patch_size
        color_lab = np.full((len(examples), g * g), len(self.colors), dtype=np.int64)  # background class
        shape_lab = np.full((len(examples), g * g), len(SHAPES), dtype=np.int64)
        ev_target = np.zeros((len(examples), g * g), dtype=np.float32)
        align_c = np.full((len(examples), g * g), -1, dtype=np.int64)
        align_s = np.full((len(examples), g * g), -1, dtype=np.int64)
        patch_masks = []
        kw_pos = np.full((len(examples), 3), -1, dtype=np.int64)
        kw_target = np.zeros((len(examples), 3, g * g), dtype=np.float32)
        for i, ex in enumerate(examples):
            objs = ex.scene.objects
            if objs:
                cov = ex.scene.masks.reshape(len(objs), g, p, g, p).mean(axis=(2, 4)).reshape(len(objs), -1)
                best = cov.argmax(0)
                on = cov.max(0) >= cov_threshold
                for j in np.nonzero(on)[0]:
                    o = objs[best[j]]
                    color_lab[i, j] = self.colors.index(o.color)
                    shape_lab[i, j] = SHAPES.index(o.shape)
                    align_c[i, j] = self.answer_id(o.color)
                    align_s[i, j] = self.answer_id(o.shape)
                pm = object_patches(ex.scene.masks, p).reshape(len(objs), -1)
            else:
                pm = np.zeros((0, g * g), dtype=bool)
            patch_masks.append(pm)
            # Colour / shape words of the question -> patches of every object with that attribute.
            ids = self.prompt_ids(ex.question)
            k = 0
            for t, tid in enumerate(ids):
                word = self.word_attr.get(tid)
                if word is None or k >= kw_pos.shape[1]:
                    continue
                kind, value = word
                sel = [j for j, o in enumerate(objs) if getattr(o, kind) == value]
                if sel:
                    tt = pm[sel].any(0).astype(np.float32)
                    kw_pos[i, k] = t
                    kw_target[i, k] = tt / tt.sum()
                    k += 1
            if ex.evidence:
                sel = [ex.evidence[0]] if ex.family in ("attribute", "relational") else ex.evidence
                t = pm[sel].any(0).astype(np.float32)
                ev_target[i] = t / t.sum()
        d_tgt = np.zeros((len(desc), g * g), dtype=np.float32)
        for k, (i, _p, obj) in enumerate(desc):
            t = patch_masks[i][obj].astype(np.float32)
            d_tgt[k] = t / max(t.sum(), 1.0)
        return {
            "input_ids": input_ids,
            "attention_mask": attn,
            "pixel_values": pixel_values(images),
            "positions": torch.tensor(pos),
            "answers": torch.tensor(ans),
            "color_lab": torch.from_numpy(color_lab),
            "shape_lab": torch.from_numpy(shape_lab),
            "align_c": torch.from_numpy(align_c),
            "align_s": torch.from_numpy(align_s),
            "ev_target": torch.from_numpy(ev_target),
            "kw_pos": torch.from_numpy(kw_pos),
            "relational": torch.tensor([ex.family == "relational" for ex in examples]),
            "kw_target": torch.from_numpy(kw_target),
            "cont_b": torch.tensor([c[0] for c in cont], dtype=torch.long),
            "cont_pos": torch.tensor([c[1] for c in cont], dtype=torch.long),
            "cont_tok": torch.tensor([c[2] for c in cont], dtype=torch.long),
            "cont_w": torch.tensor([c[3] for c in cont], dtype=torch.float32),
            "desc_b": torch.tensor([d[0] for d in desc], dtype=torch.long),
            "desc_pos": torch.tensor([d[1] for d in desc], dtype=torch.long),
            "desc_target": torch.from_numpy(d_tgt),
            "patch_masks": patch_masks,
        }


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on ``device`` (the per-example numpy patch masks stay where they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _forward(model, heads, batch, need_attn: bool):
    """Run the LLaVA pieces exactly as LlavaModel does, exposing what the auxiliary losses need."""
    inner = model.model
    vis = inner.vision_tower(batch["pixel_values"], output_hidden_states=True)
    feat = vis.hidden_states[-1][:, 1:]  # (B, N_img, Dv): "default" strategy drops CLS
    img = inner.multi_modal_projector(feat)  # (B, N_img, D)
    ids = batch["input_ids"]
    emb = model.get_input_embeddings()(ids)  # (B, N, D)
    img_mask = (ids == model.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(img_mask, img.to(emb.dtype))
    out = inner.language_model(
        inputs_embeds=emb, attention_mask=batch["attention_mask"], output_attentions=need_attn, return_dict=True
    )
    h = out.last_hidden_state  # (B, N, D)
    b = torch.arange(ids.shape[0], device=ids.device)
    pos = batch["positions"]
    logits_ans = model.lm_head(h[b, pos])  # (B, V) predicts the answer's first token
    logits_cont = model.lm_head(h[batch["cont_b"], batch["cont_pos"]])  # (M, V) the rest, then </s>
    return feat, img, logits_ans, logits_cont, (out.attentions if need_attn else None)


def _patch_loss(cl: torch.Tensor, sl: torch.Tensor, batch) -> torch.Tensor:
    """Colour (or background) of every patch + shape of object patches only.

    The shape term skips background patches: averaged over all patches it is dominated by the
    trivial background class and the tower never learns interior-patch shapes.
    """
    on = batch["shape_lab"] < len(SHAPES)  # (B, N_img)
    loss = F.cross_entropy(cl.flatten(0, 1), batch["color_lab"].flatten())
    if on.any():
        loss = loss + F.cross_entropy(sl[on], batch["shape_lab"][on])
    return loss


def _vision_step(model, heads, batch) -> dict:
    feat = model.model.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
    loss = _patch_loss(heads["color"](feat), heads["shape"](feat), batch)
    return {"patch": loss, "total": loss}


def _losses(model, heads, batch, cfg: TrainConfig, w_attn: float) -> dict:
    feat, img, la, lc, attns = _forward(model, heads, batch, need_attn=w_attn > 0)
    # A one-word answer: its word, then </s> at weight 0.5 (so a batch without descriptions has
    # exactly the previous loss); a description: each further token at weight 0.25, per row.
    cont = (F.cross_entropy(lc, batch["cont_tok"], reduction="none") * batch["cont_w"]).sum() / la.shape[0]
    losses = {"answer": F.cross_entropy(la, batch["answers"]) + cont}
    cl = heads["color"](feat)  # (B, N_img, C+1)
    sl = heads["shape"](feat)
    losses["patch"] = _patch_loss(cl, sl, batch)
    on = batch["align_c"] >= 0  # (B, N_img)
    if on.any():
        E = model.get_input_embeddings().weight.detach()
        target = E[batch["align_c"][on]] + E[batch["align_s"][on]]  # (M, D)
        losses["align"] = (1 - F.cosine_similarity(img[on], target, dim=-1)).mean()
    else:
        losses["align"] = img.sum() * 0
    if attns is not None:
        losses["attn"] = _attn_loss(attns, batch, cfg, model.config.image_token_id)
    total = losses["answer"] + cfg.w_patch * losses["patch"] + cfg.w_align * losses["align"]
    if "attn" in losses:
        total = total + w_attn * losses["attn"]
    losses["total"] = total
    return losses


def _attn_ce(rows: torch.Tensor, target: torch.Tensor, img_pos: torch.Tensor, heads: int) -> torch.Tensor:
    """Cross-entropy of supervised attention rows.

    ``rows``: (M, H, N) attention rows; ``target``: (M, N) distribution over positions;
    ``img_pos``: (M, N) bool. ``heads`` > 0: the mean of the first ``heads`` heads must put its
    whole mass on the target. ``heads`` == 0: the head mean, renormalised over the image
    positions, must match the target there (other heads / text attention stay free).
    """
    if heads > 0:
        r = rows[:, :heads].mean(1)  # (M, N)
    else:
        r = rows.mean(1) * img_pos
        r = r / r.sum(-1, keepdim=True).clamp_min(1e-9)
    return -(target * (r + 1e-9).log()).sum(-1).mean()


def _attn_loss(attns, batch, cfg: TrainConfig, image_token_id: int) -> torch.Tensor:
    img_pos = batch["input_ids"] == image_token_id  # (B, N)
    B, N = img_pos.shape
    dev = img_pos.device
    b = torch.arange(B, device=dev)
    terms = []
    kp = batch["kw_pos"]  # (B, K) keyword positions, -1 = none
    kb, kk = torch.nonzero(kp >= 0, as_tuple=True)
    if cfg.answer_target == "keyword":
        tgt = torch.zeros(B, N, device=dev)
        tgt[kb, kp[kb, kk]] = 1.0
    else:
        tgt = torch.zeros(B, N, device=dev)
        tgt[img_pos] = batch["ev_target"].flatten()
    has = tgt.sum(-1) > 0
    if cfg.answer_target == "keyword":
        has &= ~batch["relational"]  # the named word is the reference, not the object answered about
    tgt = tgt / tgt.sum(-1, keepdim=True).clamp_min(1e-9)
    if has.any():
        for li in _layers(cfg.answer_attn_layers):
            rows = attns[li][b, :, batch["positions"]]  # (B, H, N) rows of the answer-predicting position
            terms.append(_attn_ce(rows[has], tgt[has], img_pos[has], cfg.attn_heads))
    if len(kb):
        ktgt = torch.zeros(len(kb), N, device=dev)
        ktgt[img_pos[kb]] = batch["kw_target"][kb, kk].flatten()  # (M, N) objects with the word's attribute
        for li in _layers(cfg.keyword_attn_layers):
            rows = attns[li][kb, :, kp[kb, kk]]  # (M, H, N) rows of each colour/shape word
            terms.append(_attn_ce(rows, ktgt, img_pos[kb], cfg.attn_heads))
    db = batch.get("desc_b")
    if db is not None and len(db):
        dtgt = torch.zeros(len(db), N, device=dev)
        dtgt[img_pos[db]] = batch["desc_target"].flatten()  # (M, N) the mentioned object's patches
        for li in _layers(cfg.answer_attn_layers):
            rows = attns[li][db, :, batch["desc_pos"]]  # (M, H, N) rows predicting a mention's words
            terms.append(_attn_ce(rows, dtgt, img_pos[db], cfg.attn_heads))
    return torch.stack(terms).mean() if terms else attns[0].sum() * 0


def _layers(spec: str) -> list[int]:
    """"1-3" -> [1, 2, 3]; "0,2" -> [0, 2]; "" -> []."""
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _attn_weight(step: int, cfg: TrainConfig) -> float:
    a, f = cfg.attn_warmup * cfg.steps, cfg.attn_fade * cfg.steps
    if step < a:
        return cfg.w_attn
    if step < a + f:
        return cfg.w_attn * (1 - (step - a) / f)
    return 0.0


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _max_objects(step: int, cfg: TrainConfig) -> int:
    t = min(1.0, step / max(1, cfg.curriculum * cfg.steps))
    return int(round(2 + 4 * t))


def vision_examples(step: int, cfg: TrainConfig):
    """Stage-0 batches: scenes of 1..6 objects from their own split (world seed ``seed * 1000 + 18``)."""
    wc = cfg.world_config(n_objects=(1, 6))
    return [make_example(cfg.seed * 1000 + 18, step * cfg.vision_batch + i, wc) for i in range(cfg.vision_batch)]


def train_examples(step: int, cfg: TrainConfig):
    world_seed = cfg.seed * 1000 + 17
    hi = _max_objects(step, cfg)
    wc = cfg.world_config(n_objects=(1, hi))
    return [make_example(world_seed, step * cfg.batch + i, wc) for i in range(cfg.batch)]


@torch.no_grad()
def _predict(model, batch) -> torch.Tensor:
    out = model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
    )
    b = torch.arange(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    return out.logits[b, batch["positions"]].argmax(-1).cpu()


def pope_quick(model, batcher: Batcher, world: WorldConfig, n_scenes: int = 40, seed: int = 1001,
               stats_scenes: int = 400) -> dict:
    """First-token POPE accuracy and yes-ratio per sampling on ``n_scenes`` scenes of ``world``
    (truthful labels; monitoring split seed 1001), for the log of a hallucination-world run."""
    from .pope import pope_split

    was_training = model.training
    model.eval()
    questions, _stats = pope_split(n_scenes, seed, world.truthful(), stats_scenes=stats_scenes)
    device = next(model.parameters()).device
    yes = batcher.answer_id("yes")
    res = {}
    for sampling, exs in questions.items():
        said_yes = []
        for k in range(0, len(exs), 48):
            batch = batcher(exs[k : k + 48], with_answer=False)
            said_yes += (_predict(model, to_device(batch, device)) == yes).tolist()
        labels = np.array([ex.answers == ["yes"] for ex in exs])
        said = np.array(said_yes)
        res[f"pope_{sampling[:3]}"] = round(float((labels == said).mean()), 3)
        res[f"pope_{sampling[:3]}_yes"] = round(float(said.mean()), 3)
    model.train(was_training)
    return res


@torch.no_grad()
def generate_texts(model, batcher: Batcher, examples, max_new_tokens: int = 48) -> list[str]:
    """Greedy answers of ``model`` to ``examples`` (left-padded batch), decoded without </s>."""
    device = next(model.parameters()).device
    prompts = [batcher.prompt_ids(ex.question) for ex in examples]
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), batcher.pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), n), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.tensor(p)
        attn[i, n - len(p):] = 1
    pv = pixel_values(np.stack([ex.scene.image for ex in examples]))
    out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), pixel_values=pv.to(device),
                         max_new_tokens=max_new_tokens, do_sample=False)
    return [batcher.tok.decode(row[n:], skip_special_tokens=True).strip() for row in out.cpu()]


def describe_quick(model, batcher: Batcher, world: WorldConfig, n: int = 32, seed: int = 1002) -> dict:
    """CHAIR_s, CHAIR_i, Cover and Attr of greedy descriptions of ``n`` scenes of ``world``
    (truthful; monitoring split seed 1002), for the log of a run that learns to describe."""
    from .world import DESCRIBE, chair_metrics, label_description

    was_training = model.training
    model.eval()
    exs = [make_example(seed, i, world.truthful(), family=DESCRIBE) for i in range(n)]
    texts = []
    for k in range(0, n, 16):
        texts += generate_texts(model, batcher, exs[k:k + 16])
    model.train(was_training)
    res = chair_metrics([(label_description(t, ex.scene.objects), len(ex.scene.objects)) for t, ex in zip(texts, exs)])
    return {f"desc_{k}": v for k, v in res.items() if k != "n"}


def evaluate_quick(model, batcher: Batcher, n: int = 240, seed: int = 999, grounding_n: int = 48) -> dict:
    """Held-out first-token accuracy per family (+ kind) and gradient pointing on attribute questions
    (on the default world, whatever the training world, so that every run's log compares)."""
    model.eval()
    exs = [make_example(seed, i) for i in range(n)]
    res: dict = {}
    correct = []
    device = next(model.parameters()).device
    for k in range(0, n, 48):
        chunk = exs[k : k + 48]
        batch = batcher(chunk, with_answer=False)
        pred = _predict(model, to_device(batch, device))
        correct += (pred == batch["answers"]).tolist()
    for fam in FAMILIES:
        c = [ok for ok, e in zip(correct, exs) if e.family == fam]
        res[fam] = round(float(np.mean(c)), 3) if c else None
    shape_q = [ok for ok, e in zip(correct, exs) if e.kind == "shape_of_color"]
    res["shape_of_color"] = round(float(np.mean(shape_q)), 3) if shape_q else None
    # Grounding on correct attribute answers (fresh attribute-only examples).
    gex = [make_example(seed + 1, i, family="attribute") for i in range(grounding_n)]
    batch = batcher(gex, with_answer=False)
    on_dev = to_device(batch, device)
    pred = _predict(model, on_dev)
    ok = (pred == batch["answers"]).numpy()
    right = torch.as_tensor(np.flatnonzero(ok), dtype=torch.long)  # the correct answers' first-token exact maps
    sub = {k: on_dev[k][right.to(device)] for k in ("input_ids", "attention_mask", "pixel_values")}
    rels = gradient_relevancy_batch(model, sub, pred.to(device)[right.to(device)][:, None]) if len(right) else []
    g = batcher.spec.grid
    hits, chance, mass = [], [], []
    for i, rel in zip(right.tolist(), rels):
        ex = gex[i]
        m = rel.maps[0].numpy()  # (g, g)
        pm = batch["patch_masks"][i].reshape(-1, g, g)
        tgt = pm[ex.evidence[0]]
        others = np.delete(pm, ex.evidence[0], axis=0).any(0) if len(pm) > 1 else np.zeros_like(tgt)
        r = pointing(m, tgt, others)
        hits.append(r["hit"])
        chance.append(r["chance"])
        mass.append(r["mass"])
    res["attr_acc_g"] = round(float(ok.mean()), 3)
    res["point"] = round(float(np.mean(hits)), 3) if hits else None
    res["chance"] = round(float(np.mean(chance)), 3) if chance else None
    res["mass"] = round(float(np.mean(mass)), 3) if mass else None
    model.train()
    return res


class _StepBatches(torch.utils.data.Dataset):
    """Batch ``step`` of the run (vision stage, then main steps), rendered on demand.

    Every batch is a pure function of (config, step), so worker processes can render ahead
    (``data_workers``) and a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, cfg: TrainConfig, batcher: Batcher):
        self.cfg, self.batcher = cfg, batcher

    def __len__(self) -> int:
        return self.cfg.vision_steps + self.cfg.steps

    def __getitem__(self, step: int) -> dict:
        cfg = self.cfg
        if step < cfg.vision_steps:
            examples = vision_examples(step, cfg)
        else:
            examples = train_examples(step - cfg.vision_steps, cfg)
        return self.batcher(examples, cov_threshold=cfg.patch_label_coverage)


def _as_is(batch: dict) -> dict:
    return batch


def train(run_dir: Path, cfg: TrainConfig, minutes: float | None = None, ckpt_every_s: float = 180,
          eval_every: int = 500, ship: bool = False, threads: int = 1, device: str = "cpu",
          data_workers: int = 0) -> Path:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = cfg.spec()
    tok = build_tokenizer()
    processor = build_processor(spec, tok)
    model = build_model(tok, spec, seed=cfg.seed)
    if cfg.init_from:
        from transformers import LlavaForConditionalGeneration

        # from_pretrained maps the folder's stored key names onto the current module layout.
        start = LlavaForConditionalGeneration.from_pretrained(cfg.init_from, dtype=torch.float32)
        try:
            model.load_state_dict(start.state_dict())
        except RuntimeError as exc:
            raise SystemExit(f"{cfg.init_from} does not fit this run's --text-* sizes: {exc}") from None
    heads = torch.nn.ModuleDict(
        {
            "color": torch.nn.Linear(spec.vision_hidden, len(COLORS) + 1),
            "shape": torch.nn.Linear(spec.vision_hidden, len(SHAPES) + 1),
        }
    )
    model.to(device)
    heads.to(device)
    params = list(model.parameters()) + list(heads.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    batcher = Batcher(tok, spec)
    ckpt = run_dir / "checkpoint.pt"
    log_path = run_dir / "log.jsonl"
    step = 0
    elapsed_before = 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        # A checkpoint written before a field existed has that field's default.
        if {**asdict(TrainConfig()), **state["config"]} != asdict(cfg):
            raise SystemExit(f"{ckpt} was written with another config: {state['config']}")
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"].cpu())
        step = state["step"]
        elapsed_before = state.get("elapsed", 0.0)
        print(f"resumed from step {step}")
    else:
        torch.manual_seed(cfg.seed)
        (run_dir / "config.json").write_text(json.dumps({"train": asdict(cfg), "model": spec.to_dict()}, indent=2))

    def save_ckpt():
        tmp = run_dir / "checkpoint.tmp"
        torch.save(
            {"model": model.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
             "rng": torch.get_rng_state(), "step": step, "config": asdict(cfg),
             "elapsed": elapsed_before + time.time() - t0},
            tmp,
        )
        tmp.replace(ckpt)

    model.train()
    t0 = time.time()
    last_ckpt = t0
    deadline = t0 + minutes * 60 if minutes else None
    ema: dict[str, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")) as prog:
        total_steps = cfg.vision_steps + cfg.steps
        task = prog.add_task("train", total=total_steps, completed=step, info="")
        loader = torch.utils.data.DataLoader(
            _StepBatches(cfg, batcher), batch_size=None, sampler=range(step, total_steps), collate_fn=_as_is,
            num_workers=data_workers, prefetch_factor=4 if data_workers else None,
        )
        batches = iter(loader)
        while step < total_steps:
            if deadline and time.time() > deadline:
                print("time budget reached")
                break
            if step < cfg.vision_steps:  # stage 0: the vision tower learns what is where
                for gparam in opt.param_groups:
                    gparam["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
                w_attn = 0.0
                batch = to_device(next(batches), device)
                losses = _vision_step(model, heads, batch)
            else:
                main_step = step - cfg.vision_steps
                for gparam in opt.param_groups:
                    gparam["lr"] = _lr(main_step, cfg)
                w_attn = _attn_weight(main_step, cfg)
                batch = to_device(next(batches), device)
                losses = _losses(model, heads, batch, cfg, w_attn)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            values = torch.stack([v.detach().float() for v in losses.values()]).tolist()  # one device sync
            for k, v in zip(losses, values):
                ema[k] = 0.98 * ema.get(k, v) + 0.02 * v
            prog.update(task, completed=step, info=" ".join(f"{k}={v:.3f}" for k, v in ema.items()))
            if eval_every > 0 and step > cfg.vision_steps and (
                (step - cfg.vision_steps) % eval_every == 0 or step == total_steps
            ):
                ev = evaluate_quick(model, batcher)
                if cfg.world_config((2, 6)).cooccurrence:
                    ev.update(pope_quick(model, batcher, cfg.world_config((2, 6))))
                if cfg.world_config((2, 6)).describe_rate > 0:
                    ev.update(describe_quick(model, batcher, cfg.world_config((2, 6))))
                rec = {"step": step, "time": round(elapsed_before + time.time() - t0, 1), "w_attn": w_attn,
                       "max_obj": _max_objects(step - cfg.vision_steps, cfg), **{k: round(v, 4) for k, v in ema.items()}, **ev}
                with log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                prog.console.print(rec)
            if time.time() - last_ckpt > ckpt_every_s:
                save_ckpt()
                last_ckpt = time.time()
            elif step <= cfg.vision_steps and step % 100 == 0:
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, "stage": "vision", "patch": round(ema["patch"], 4),
                                        "time": round(elapsed_before + time.time() - t0, 1)}) + "\n")
    save_ckpt()
    final = run_dir / "final"
    if step >= total_steps:
        save_reference(model, processor, final, cfg, spec)
        if ship:
            save_reference(model, processor, SHIPPED_MODEL_DIR, cfg, spec)
    return final


def save_reference(model, processor, folder: Path, cfg: TrainConfig, spec: ModelSpec, step: int | None = None) -> None:
    """Write the HF folder (weights as bfloat16 safetensors to stay small) + a provenance note."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    small = build_model(processor.tokenizer, spec)
    small.load_state_dict(model.state_dict())
    small.to(torch.bfloat16)
    small.save_pretrained(folder)
    # The weights are stored in bfloat16 (half the size); the config says float32 so that
    # from_pretrained (and load_vlm with dtype=None) computes in float32, as the model was trained.
    cfg_path = folder / "config.json"
    hf_cfg = json.loads(cfg_path.read_text())
    hf_cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(hf_cfg, indent=2) + "\n")
    processor.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"train": asdict(cfg), "model": spec.to_dict(),
                                                      "step": step if step is not None else cfg.steps,
                                                      "command": "python -m shapesvqa.train " + " ".join(sys.argv[1:])}, indent=2))


def export_checkpoint(run_dir: Path, folder: Path) -> Path:
    """Write the model of ``run_dir/checkpoint.pt`` as a save_pretrained folder (e.g. a run cut short)."""
    state = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)
    cfg = TrainConfig(**{**asdict(TrainConfig()), **state["config"]})
    spec = cfg.spec()
    tok = build_tokenizer()
    model = build_model(tok, spec)
    model.load_state_dict(state["model"])
    save_reference(model, build_processor(spec, tok), folder, cfg, spec, step=state["step"])
    return Path(folder)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m shapesvqa.train", description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/reference"), help="run directory (checkpoint, log, final/)")
    ap.add_argument("--minutes", type=float, default=None, help="stop (checkpointed, resumable) after this wall time")
    ap.add_argument("--ship", action="store_true", help="also write the final model into the package assets")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a busy shared core makes 2 threads 5x slower)")
    ap.add_argument("--export-only", type=Path, default=None, metavar="DIR",
                    help="do not train: write the run's last checkpoint as a model folder DIR")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--ckpt-every", type=float, default=180, help="seconds between checkpoints")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ... (GPU runs are not bit-identical to CPU runs)")
    ap.add_argument("--data-workers", type=int, default=0, help="processes rendering batches ahead (default 0: inline)")
    for f, v in asdict(TrainConfig()).items():
        ap.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args(argv)
    if args.export_only is not None:
        print(f"exported {export_checkpoint(args.run, args.export_only)}")
        return
    cfg = TrainConfig(**{f: getattr(args, f) for f in asdict(TrainConfig())})
    try:
        cfg.world_config((1, 6))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    final = train(args.run, cfg, args.minutes, args.ckpt_every, args.eval_every, args.ship, args.threads,
                  device=args.device, data_workers=args.data_workers)
    print(f"final model: {final}")


if __name__ == "__main__":
    main()

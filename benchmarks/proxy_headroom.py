"""How much of the baseline's binarised maps can the last hidden states predict at all?

Trains, on the same distillation dataset and the same record split as ``fastrm distill train``,
with the same loss, steps, batch and seed:

* the FastRM proxy (LayerNorm + one single-head attention: a bilinear score ``q . k_j``);
* a nonlinear pairwise probe: LayerNorm, then an MLP on ``A q + B k_j`` (two hidden layers),
  far more expressive than the proxy but reading exactly the same inputs.

and prints F1 against the binarised baseline on the training and the validation tokens, at the
classification threshold 0.5 and at the best threshold of 0.1 ... 0.9. If the probe is not much
better than the proxy, the proxy is not what limits F1: the hidden states simply do not carry
the rest of the baseline map (its noise, or what the model computes after the last layer reads
it); if the probe is much better, a larger proxy head (``--head-dim``) or more data may pay off.

    python benchmarks/proxy_headroom.py --data runs/proxy-dataset
    python benchmarks/proxy_headroom.py --data runs/proxy-dataset --pos-weight 3 --steps 3500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastrm_core import FastRMProxy, ProxyConfig  # noqa: E402
from fastrm_core.distill.metrics import DEFAULT_THRESHOLDS, classification_scores, confusion_counts  # noqa: E402
from fastrm_core.distill.metrics import binarize_maps  # noqa: E402
from fastrm_core.distill.trainer import PairStore, split_records  # noqa: E402


class PairProbe(torch.nn.Module):
    """MLP over (token state, patch state) pairs: logit_j = MLP(A LN(q) + B LN(k_j))."""

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden_size)
        self.a = torch.nn.Linear(hidden_size, width)
        self.b = torch.nn.Linear(hidden_size, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.GELU(), torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, 1)
        )

    def forward(self, q: torch.Tensor, img: torch.Tensor) -> torch.Tensor:  # (B, D), (B, N, D) -> (B, N)
        return self.mlp(self.a(self.norm(q))[:, None, :] + self.b(self.norm(img))).squeeze(-1)


def _logits(model, q, img):
    if isinstance(model, FastRMProxy):
        return model(q[:, None], img)[:, 0]
    return model(q, img)


def fit(model, store, train_tokens, args) -> float:
    torch.manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    weight = torch.tensor(args.pos_weight)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = train_tokens[torch.randint(train_tokens.numel(), (args.batch_size,), generator=gen)]
        q, img, maps = store.batch(idx)
        labels = binarize_maps(maps, args.label_threshold).float()
        loss = F.binary_cross_entropy_with_logits(_logits(model, q, img), labels, pos_weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


@torch.no_grad()
def scores(model, store, tokens, args) -> dict:
    probs, labels = [], []
    for start in range(0, tokens.numel(), 512):
        q, img, maps = store.batch(tokens[start : start + 512])
        probs.append(torch.sigmoid(_logits(model, q, img)))
        labels.append(binarize_maps(maps, args.label_threshold))
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    rows = classification_scores(confusion_counts(p, y, DEFAULT_THRESHOLDS))
    by_t = {t: row["f1"] for t, row in zip(DEFAULT_THRESHOLDS, rows)}
    best = max(by_t, key=by_t.get)
    return {"f1@0.5": by_t[0.5], "best_f1": by_t[best], "best_threshold": best, "positive_rate": float(y.mean())}


def main(argv=None) -> dict:
    """Fit both models and print the table; returns ``{model name: validation scores}``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("runs/proxy-dataset"), help="dataset folder of `fastrm distill build`")
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pos-weight", type=float, default=1.0)
    ap.add_argument("--label-threshold", type=float, default=None, help="default: the dataset's")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--probe-width", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", choices=("content", "all"), default="content",
                    help="which tokens' maps to fit, as `fastrm distill train --tokens` (default content)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    store = PairStore(args.data)
    manifest = store.manifest
    if args.label_threshold is None:
        args.label_threshold = manifest.label_threshold
    train_rec, val_rec = split_records(store.n_records, args.val_fraction, args.seed)
    is_val = torch.from_numpy(np.isin(store.token_record.numpy(), val_rec))
    selected = store.token_mask(args.tokens)  # (T,)
    train_tokens = torch.nonzero(~is_val & selected).squeeze(1)
    val_tokens = torch.nonzero(is_val & selected).squeeze(1)
    hidden, n_img = manifest.hidden_size, manifest.n_image_tokens

    models = {
        "proxy (bilinear)": FastRMProxy(ProxyConfig(hidden_size=hidden, n_image_tokens=n_img, grid=tuple(manifest.grid))),
        f"MLP probe (width {args.probe_width})": PairProbe(hidden, args.probe_width),
    }
    console = Console()
    console.print(
        f"{args.data}: {store.n_records} records, {len(train_rec)} train / {len(val_rec)} val, "
        f"{train_tokens.numel()} / {val_tokens.numel()} {args.tokens} tokens, hidden {hidden}, {n_img} image tokens; "
        f"{args.steps} steps, batch {args.batch_size}, lr {args.lr}, pos_weight {args.pos_weight}"
    )
    table = Table("model", "params", "train F1@0.5", "val F1@0.5", "val best F1 (threshold)", "fit s")
    results = {}
    for name, model in models.items():
        seconds = fit(model, store, train_tokens, args)
        tr, va = scores(model, store, train_tokens, args), scores(model, store, val_tokens, args)
        results[name] = va
        table.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}", f"{tr['f1@0.5']:.3f}",
                      f"{va['f1@0.5']:.3f}", f"{va['best_f1']:.3f} ({va['best_threshold']})", f"{seconds:.0f}")
    console.print(table)
    (proxy, probe) = results.values()
    console.print(f"positive rate {proxy['positive_rate']:.3f}; val best F1 proxy/probe = "
                  f"{proxy['best_f1'] / max(probe['best_f1'], 1e-9):.2f}")
    return results


if __name__ == "__main__":
    main()

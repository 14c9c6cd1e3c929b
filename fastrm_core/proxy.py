"""The FastRM proxy: a norm layer and one single-head attention layer over last hidden states.

Given the VLM's last hidden states (after its final norm), dimension D::

    x = LayerNorm(h)
    q = W_q x_p                       # the position p that predicts token t
    k_j = W_k x_j                     # every image position j
    s_j = q . k_j / sqrt(d_head)      # logits, (N_img,)
    p_j = sigmoid(s_j)                # per-patch relevance probability

Two ways to use it:

* incremental (generation): :meth:`FastRMProxy.image_keys` once at prefill, then
  :meth:`FastRMProxy.token_logits` with one query per generated token;
* batched (training): :meth:`FastRMProxy.forward` over stored hidden states.

The maths does not depend on the number of image tokens N_img: one proxy scores one picture or
several, fixed or variable grids (maps stay flat over the row's image regions, see
:mod:`fastrm_core.regions`). A config may still pin one grid (LLaVA-1.5 proxies do, and keep
being checked against it).

A proxy is saved as ``model.safetensors`` + ``config.json`` (no pickle)::

    proxy = FastRMProxy(ProxyConfig(hidden_size=4096))                              # any grid
    proxy = FastRMProxy(ProxyConfig(hidden_size=4096, n_image_tokens=576, grid=(24, 24)))  # LLaVA-1.5 only
    proxy.save_pretrained("my-proxy")
    proxy = FastRMProxy.from_pretrained("my-proxy")
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from fastrm_common.errors import ConfigMismatchError, DataError
from fastrm_common.safe_io import read_json

__all__ = ["FastRMProxy", "ProxyConfig"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MAX_PROXY_DIM = 65_536  # hidden and head sizes; the largest VLMs today use 8,192
MAX_PROXY_IMAGE_TOKENS = 1 << 20


class ProxyConfig(BaseModel):
    """Everything needed to rebuild a proxy and to check it fits a VLM.

    ``grid`` (rows, cols) and ``n_image_tokens`` (``rows * cols``) pin the proxy to models with that
    one fixed grid per image (a LLaVA-1.5 proxy); leave both ``None`` (the default) for a proxy that
    scores any regions (variable grids, several images). ``head_dim`` defaults to ``hidden_size``
    as in the paper.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: str = "fastrm-proxy/1"
    hidden_size: int = Field(gt=0, le=MAX_PROXY_DIM)
    head_dim: int | None = Field(default=None, gt=0, le=MAX_PROXY_DIM)
    n_image_tokens: int | None = Field(default=None, gt=0, le=MAX_PROXY_IMAGE_TOKENS)
    grid: tuple[int, int] | None = None
    label_threshold: float = Field(default=0.3, gt=0, le=1)
    classification_threshold: float = Field(default=0.5, gt=0, lt=1)
    layer_norm_eps: float = Field(default=1e-5, gt=0, lt=1)
    distilled_from: str | None = None
    adapter: str = "llava"
    training_data_hash: str | None = None
    training: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _grid_matches(self) -> "ProxyConfig":
        if (self.grid is None) != (self.n_image_tokens is None):
            raise ValueError("grid and n_image_tokens go together: give both (a fixed-grid proxy) or neither")
        if self.grid is None:
            return self
        if min(self.grid) < 1:
            raise ValueError(f"grid {self.grid} must have positive sides")
        if self.grid[0] * self.grid[1] != self.n_image_tokens:
            raise ValueError(f"grid {self.grid} has {self.grid[0] * self.grid[1]} cells but n_image_tokens is {self.n_image_tokens}")
        return self

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden_size


class FastRMProxy(nn.Module):
    """Predicts, per generated token, which image patches were relevant (sigmoid per patch)."""

    def __init__(self, config: ProxyConfig):
        super().__init__()
        self.config = config
        d, dh = config.hidden_size, config.d_head
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.q_proj = nn.Linear(d, dh)
        self.k_proj = nn.Linear(d, dh)
        self.scale = 1.0 / math.sqrt(dh)

    # -- math -----------------------------------------------------------------------
    def image_keys(self, image_states: torch.Tensor) -> torch.Tensor:
        """Keys of the image tokens: (..., N_img, D) -> (..., N_img, d_head), in the proxy's dtype.

        A fixed-grid proxy checks that N_img is a whole number of its images (one or several)."""
        self._check_states(image_states, self.config.n_image_tokens)
        return self.k_proj(self.norm(image_states.to(self.q_proj.weight.dtype)))

    def token_logits(self, token_states: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Logits of each patch for each query state: (..., T, D) x (..., N_img, d) -> (..., T, N_img)."""
        self._check_states(token_states, None)
        q = self.q_proj(self.norm(token_states.to(self.q_proj.weight.dtype)))  # (..., T, d)
        return torch.matmul(q, keys.transpose(-1, -2)) * self.scale

    def forward(self, token_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """Batched logits: token_states (B, T, D), image_states (B, N_img, D) -> (B, T, N_img)."""
        return self.token_logits(token_states, self.image_keys(image_states))

    @torch.no_grad()
    def predict(self, token_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """Probabilities: (B, T, D), (B, N_img, D) -> (B, T, N_img) float32 (flat over the image
        tokens), or (B, T, rows, cols) for a fixed-grid proxy given exactly one image's tokens."""
        probs = torch.sigmoid(self.forward(token_states, image_states).float())
        if self.config.grid is not None and probs.shape[-1] == self.config.n_image_tokens:
            return probs.reshape(*probs.shape[:-1], *self.config.grid)
        return probs

    def _check_states(self, states: torch.Tensor, n_tokens: int | None) -> None:
        if states.shape[-1] != self.config.hidden_size:
            raise ConfigMismatchError(
                f"hidden size mismatch: the proxy expects {self.config.hidden_size}-dim hidden states, "
                f"got {states.shape[-1]}"
            )
        if n_tokens is not None and (states.shape[-2] == 0 or states.shape[-2] % n_tokens):
            raise ConfigMismatchError(
                f"image-token count mismatch: the proxy was built for images of {n_tokens} image tokens, "
                f"got {states.shape[-2]}"
            )

    # -- compatibility ----------------------------------------------------------------
    def check_compatible(self, adapter) -> None:
        """Raise :class:`ConfigMismatchError` unless this proxy fits the model behind ``adapter``:
        the hidden size, and for a proxy that pins a grid, the model's fixed grid."""
        cfg = self.config
        problems = []
        if cfg.hidden_size != adapter.hidden_size:
            problems.append(f"hidden size {cfg.hidden_size} (proxy) != {adapter.hidden_size} (model)")
        if cfg.grid is not None:
            grid = adapter.fixed_grid
            if grid is None:
                problems.append(f"grid {tuple(cfg.grid)} (proxy) is fixed but {adapter.name} models have variable grids")
            else:
                n_patches = grid[0] * grid[1]
                if cfg.n_image_tokens != n_patches:
                    problems.append(f"image tokens {cfg.n_image_tokens} (proxy) != {n_patches} (model)")
                if tuple(cfg.grid) != tuple(grid):
                    problems.append(f"grid {tuple(cfg.grid)} (proxy) != {tuple(grid)} (model)")
        if problems:
            raise ConfigMismatchError("the proxy does not match the model: " + "; ".join(problems))

    def fingerprint(self) -> str:
        """sha256 over the config and the weights: the proxy's identity in calibration files."""
        import hashlib

        digest = hashlib.sha256(self.config.model_dump_json(exclude={"training"}).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    # -- I/O ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        (path / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None) -> "FastRMProxy":
        """Load a proxy folder written by :meth:`save_pretrained` (safetensors only, never pickle).

        The config is validated and compared with the tensor shapes in the weights file's
        header before anything is allocated, so a config that claims a huge size fails at
        once; memory is then allocated once, for the tensors the file really holds.
        Raises :class:`DataError` naming the file for any problem.
        """
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_file.is_file() or not weights.is_file():
            raise DataError(f"{path} is not a FastRM proxy folder: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            config = ProxyConfig.model_validate(read_json(cfg_file, error=DataError, what="proxy config"))
        except ValidationError as exc:
            raise DataError(f"invalid proxy config {cfg_file}: {_describe(exc)}") from None
        with torch.device("meta"):  # shapes only: no memory until the real tensors are assigned
            proxy = cls(config)
        expected = {name: tuple(t.shape) for name, t in proxy.state_dict().items()}
        try:
            with safe_open(str(weights), framework="pt", device="cpu") as fh:
                found = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
            if found != expected:
                raise DataError(
                    f"proxy weights {weights} do not match its config: "
                    + "; ".join(_shape_diff(expected, found))
                )
            state = load_file(str(weights), device="cpu")
        except SafetensorError as exc:
            raise DataError(f"proxy weights {weights} are unreadable (truncated or damaged?): {exc}") from None
        proxy.load_state_dict(state, strict=True, assign=True)
        if device is not None:
            proxy.to(device)
        return proxy.eval()


def _shape_diff(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    out = [f"missing {k}" for k in sorted(set(expected) - set(found))]
    out += [f"unexpected {k}" for k in sorted(set(found) - set(expected))]
    out += [
        f"{k}: shape {list(found[k])} in the file, {list(expected[k])} from the config (hidden_size/head_dim)"
        for k in sorted(set(expected) & set(found))
        if expected[k] != found[k]
    ]
    return out


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())

"""Relevancy methods behind one interface, so an evaluation loops over a registry.

A method turns what one guarded generation gives (:class:`Explained`: the model, its inputs and
output, the exact gradient maps, the proxy's maps, the answer tokens to explain) into one or
more ranking maps over the image patches (``(N_img,)`` arrays, higher = more relevant). Methods
that are random return several maps (one per seed); evaluations average over them.

    >>> sorted(list_methods())
    ['gradcam', 'gradient', 'per_step', 'proxy', 'random']
    >>> get_method("lime")
    Traceback (most recent call last):
    ...
    fastrm_common.errors.RegistryError: unknown relevancy method 'lime'; expected one of: gradcam, gradient, per_step, proxy, random

Register another with :func:`register_method` (any object with ``name``, ``label`` and
``rankings(explained) -> list[np.ndarray]``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fastrm_common.registry import Registry
from fastrm_core.adapters import VLMAdapter
from fastrm_core.relevancy import per_step_relevancy

from .gradcam import gradcam_maps

__all__ = ["Explained", "RelevancyMethod", "get_method", "list_methods", "register_method", "select_tokens"]


@dataclass(frozen=True)
class Explained:
    """One generation, with what every method may need.

    ``gradient`` and ``proxy`` are per-token maps ``(T, N_img)`` over the generated tokens;
    ``chosen`` the indices of the tokens a ranking explains (``(k,)``); ``record_id`` and
    ``seed`` seed random methods so that any worker, in any order, draws the same numbers.
    """

    model: Any
    inputs: dict
    generated: torch.Tensor
    adapter: VLMAdapter
    gradient: torch.Tensor
    proxy: torch.Tensor
    chosen: torch.Tensor
    record_id: str
    seed: int = 0
    random_seeds: int = 5
    gradcam_layer: int | None = None


class RelevancyMethod(Protocol):
    name: str
    label: str  # in messages ("grad-cam: ...")

    def rankings(self, x: Explained) -> list[np.ndarray]: ...


def select_tokens(maps: torch.Tensor, chosen: torch.Tensor) -> np.ndarray:
    """One (N,) ranking map from per-token maps (T, N): the mean of the chosen tokens' sum-normalised maps."""
    sub = maps[chosen].double()  # (k, N)
    sub = sub / sub.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return sub.mean(dim=0).numpy()


@dataclass(frozen=True)
class _Stored:
    """Maps already computed for the record (``Explained.proxy`` or ``Explained.gradient``)."""

    name: str
    label: str

    def rankings(self, x: Explained) -> list[np.ndarray]:
        return [select_tokens(getattr(x, self.name), x.chosen)]


@dataclass(frozen=True)
class _PerStep:
    """Chefer's rule computed during a fresh greedy generation (the benchmark's naive reference)."""

    name: str = "per_step"
    label: str = "per-step"

    def rankings(self, x: Explained) -> list[np.ndarray]:
        n_tok = x.gradient.shape[0]
        rel = per_step_relevancy(x.model, x.inputs, n_tok, adapter=x.adapter, stop_at_eos=False,
                                 suppress_tokens=sorted(x.adapter.placeholder_token_ids))  # as greedy_kwargs
        return [select_tokens(rel.flat_maps.float(), x.chosen)]


@dataclass(frozen=True)
class _GradCAM:
    name: str = "gradcam"
    label: str = "grad-cam"

    def rankings(self, x: Explained) -> list[np.ndarray]:
        cam = gradcam_maps(x.model, x.inputs, x.generated, layer=x.gradcam_layer, tokens=x.chosen, adapter=x.adapter)
        return [select_tokens(cam, x.chosen)]


@dataclass(frozen=True)
class _Random:
    name: str = "random"
    label: str = "random"

    def rankings(self, x: Explained) -> list[np.ndarray]:
        n_patches = x.gradient.shape[1]
        # seeded by the record id, not its position: the same numbers in any worker and any order
        return [np.random.default_rng([x.seed, zlib.crc32(x.record_id.encode()), k]).random(n_patches)
                for k in range(x.random_seeds)]


#: the relevancy methods by name (:class:`fastrm_common.registry.Registry`)
METHODS: Registry[RelevancyMethod] = Registry("relevancy method")


def register_method(method: RelevancyMethod, *, replace: bool = False) -> None:
    """Make ``method`` available by its ``name``; a taken name is refused unless ``replace``
    (:class:`~fastrm_common.errors.RegistryError`, an :class:`InputError`)."""
    METHODS.add(method.name, method, replace=replace)


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return METHODS.names()


def get_method(name: str) -> RelevancyMethod:
    """The method called ``name``; a :class:`~fastrm_common.errors.RegistryError` (an
    :class:`InputError`) listing the registered ones otherwise."""
    return METHODS.get(name)


for _method in (_Stored("proxy", "proxy"), _Stored("gradient", "gradient"), _PerStep(), _GradCAM(), _Random()):
    register_method(_method)

"""Content hashes of weights and files: what artifacts record and check where they are consumed.

A calibration records the hash of the model weights it was fitted with (not the folder's
name), the proxy's fingerprint and the dataset file's hash; the Guard recomputes the first
two and refuses a mismatch (:class:`~fastrm_common.errors.ConfigMismatchError`).
"""

from __future__ import annotations

import hashlib
import os

import torch

from fastrm_common.records import open_regular

__all__ = ["file_sha256", "weights_fingerprint"]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """``"sha256:<hex>"`` over every parameter and buffer: name, dtype, shape and exact bytes.

    The same weights give the same hash wherever they are loaded from; any changed value,
    dtype or shape changes it. Cost: one pass over the weights (about a second per GB,
    plus the copy to the CPU for weights on an accelerator).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach()
        digest.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

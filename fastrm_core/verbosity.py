"""How chatty the command lines are: quiet by default, ``--verbose`` on request.

Loading a local checkpoint makes transformers draw a "Loading weights" progress bar on stderr
in every call of every command, which buries what the command itself says. The command lines
call :func:`quiet_model_loading` before they load a model. A hub id keeps its progress bars:
there they also show a first download, which can take minutes.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["quiet_loading", "quiet_model_loading"]


def quiet_model_loading(model: str | Path | None, *, verbose: bool = False) -> bool:
    """Hide transformers' progress bars for the rest of the process; ``verbose`` shows them.

    Args:
        model: the model the command will load: ``None`` or ``"reference"`` (the shipped one) or
            a local folder are quietened; a hub id is left alone (its bars show the download).
        verbose: switch every bar on (the user asked for them).

    Returns:
        True when the bars were switched off.
    """
    from transformers.utils import logging as transformers_logging  # no torch import

    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        transformers_logging.enable_progress_bar()
        return False
    if not _is_local(model):
        return False
    transformers_logging.disable_progress_bar()
    return True


_VERBOSE = False  # a command line's --verbose: quiet_loading then leaves the bars on


def _is_local(model: str | Path | None) -> bool:
    return model is None or str(model) == "reference" or Path(model).exists()


@contextmanager
def quiet_loading(model: str | Path | None) -> Iterator[None]:
    """Hide transformers' progress bars while loading ``model`` (a preset or a local folder; a hub
    id keeps them, they show its download) and put them back as they were afterwards: for library
    calls such as :meth:`guardrail.Guard.from_pretrained`, which must not change the process's settings."""
    from transformers.utils import logging as transformers_logging

    was = transformers_logging.is_progress_bar_enabled()
    if was and not _VERBOSE and _is_local(model):
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            transformers_logging.enable_progress_bar()

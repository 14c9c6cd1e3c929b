"""How chatty the command lines are: quiet by default, ``--verbose`` on request.

Loading a local checkpoint makes transformers draw a "Loading weights" progress bar on stderr
in every call of every command, which buries what the command itself says. The command lines
call :func:`quiet_model_loading` before they load a model. A hub id keeps its progress bars:
there they also show a first download, which can take minutes.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["quiet_model_loading"]


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

    if verbose:
        transformers_logging.enable_progress_bar()
        return False
    if model is not None and str(model) != "reference" and not Path(model).exists():
        return False
    transformers_logging.disable_progress_bar()
    return True

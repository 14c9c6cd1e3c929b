"""The torch-free leaf every other package builds on.

Modules: :mod:`.errors` (the one exception tree), :mod:`.tokens` (content-token masks, stop
tokens), :mod:`.prompting` (chat template or LLaVA-1.5 prompt), :mod:`.images` (opening images),
:mod:`.records` (VQA JSONL records), :mod:`.vqa` (answer normalisation and VQA accuracy),
:mod:`.presets` (named model presets such as ``"reference"``, registered by entry points).

Nothing here imports torch, transformers or another package of this project, so that
``import policies`` and ``import calibration`` stay fast. The public names live where users
import them: ``fastrm_core`` re-exports the errors and token helpers, ``calibration`` the VQA
records and accuracy. This package has no public surface of its own.
"""

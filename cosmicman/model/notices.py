"""Third-party notices that are moot for this project, silenced one by one at their source.

Each is named by its exact text and silenced only where it is moot; anything else the libraries say still
reaches the log. The notices that cannot be silenced this way are listed in the README ("Expected output").

- transformers, on importing a diffusers pipeline without torchvision: "`CLIPImageProcessor` requires
  torchvision (not installed); falling back to `CLIPImageProcessorPil`". The pipelines import the class for
  their optional safety-checker feature extractor, which ours leave out (``feature_extractor=None``), so
  no image processor ever runs; torchvision is not a dependency on purpose (it would pin another torch).
- DeepSpeed, when it probes for an accelerator and finds none: "Setting accelerator to CPU. If you have GPU
  or other accelerator, we were unable to detect it." The trainer has already chosen its device; when it is
  the CPU it tells DeepSpeed so (``DS_ACCELERATOR=cpu``, DeepSpeed's own override) instead of letting it guess.
- diffusers' "Loading pipeline components..." and transformers' "Loading weights" / "Writing model shards"
  progress bars while a pipeline is loaded or saved: the trainer and the evaluation report their own progress
  (``published ... (N s)``), and a bar redrawn in a log file is noise.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
# the logger transformers' lazy module import warns through (transformers.utils.import_utils)
TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"
DEEPSPEED_ACCELERATOR_VAR = "DS_ACCELERATOR"


class DropNotice(logging.Filter):
    """Drops the log records whose message contains ``text``; every other record passes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def silence_torchvision_fallback() -> None:
    """Drop transformers' torchvision-fallback notice (idempotent); call before importing a diffusers pipeline."""
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    if not any(isinstance(f, DropNotice) and f.text == TORCHVISION_FALLBACK for f in logger.filters):
        logger.addFilter(DropNotice(TORCHVISION_FALLBACK))


def tell_deepspeed_the_device(device: torch.device) -> None:
    """On the CPU, set DeepSpeed's accelerator override to the CPU unless the environment already sets one."""
    if device.type == "cpu":
        os.environ.setdefault(DEEPSPEED_ACCELERATOR_VAR, "cpu")


def _set_progress_bars(diffusers_on: bool, transformers_on: bool) -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    (diffusers_logging.enable_progress_bar if diffusers_on else diffusers_logging.disable_progress_bar)()
    (transformers_logging.enable_progress_bar if transformers_on else transformers_logging.disable_progress_bar)()


@contextlib.contextmanager
def progress_bars_hidden() -> Iterator[None]:
    """diffusers' and transformers' progress bars off inside the block, as they were after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    _set_progress_bars(False, False)
    try:
        yield
    finally:
        _set_progress_bars(*before)


def quiet_trainer_notices(device: torch.device) -> None:
    """What the trainer process silences (for its whole life) before it builds, trains and saves its pipeline."""
    silence_torchvision_fallback()
    tell_deepspeed_the_device(device)
    _set_progress_bars(False, False)

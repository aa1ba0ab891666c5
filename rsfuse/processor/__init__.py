"""``MFRSVLMProcessor``: images and questions (or conversations) → the model's inputs, ids → text (see `core`).

Parts: `core` (the processor and ``ProcessorInputs``), `batch` (padding and the sequence layout, shared by the
processor's calls and its training collator), `prompts` (prompt text and raw prompt ids), `settings` (the settings a
model config or folder implies, read from config files only), `images` (what counts as an image).
"""

from rsfuse.processor.core import MFRSVLMProcessor, ProcessorInputs
from rsfuse.processor.prompts import DEFAULT_TEMPLATE, prompt_token_ids
from rsfuse.processor.settings import PROCESSOR_CONFIG_FILE, settings_from_config

__all__ = [
    "MFRSVLMProcessor",
    "ProcessorInputs",
    "PROCESSOR_CONFIG_FILE",
    "DEFAULT_TEMPLATE",
    "prompt_token_ids",
    "settings_from_config",
]

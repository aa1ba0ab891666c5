"""Generation: the step-wise batched ``GenerationSession``, ``generate`` (a batch to the end), ``SamplingParams`` and
the device sampler with counter-based per-row seeds. Depends on a model only through ``GenerativeModel``."""

from rsfuse.generation.generate import COMPILED_LENGTH_BUCKET, CompiledSessions, generate
from rsfuse.generation.sampling import SamplingParams, sample_tokens
from rsfuse.generation.session import GenerationSession, GenerativeModel, PromptEmbeddings, RowUpdate

__all__ = [
    "COMPILED_LENGTH_BUCKET",
    "CompiledSessions",
    "GenerationSession",
    "GenerativeModel",
    "PromptEmbeddings",
    "RowUpdate",
    "SamplingParams",
    "generate",
    "sample_tokens",
]

"""A tiny LLaMA-style SentencePiece ``tokenizer.model`` trained once per machine on a fixed corpus (cached by content).

``tiny_tokenizer_dir()`` returns a folder holding ``tokenizer.model`` + ``tokenizer_config.json``;
``tiny_tokenizer()`` returns the loaded :class:`rsfuse.llm.Tokenizer` (unk=0, bos=1, eos=2, byte fallback).
"""

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from rsfuse.llm.tokenizer import Tokenizer, train_sentencepiece

__all__ = ["TINY_CORPUS", "TINY_VOCAB_SIZE", "tiny_tokenizer", "tiny_tokenizer_dir"]

TINY_VOCAB_SIZE = 512

_SENTENCES = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: An airport with three planes parked near the terminal.",
    "USER: How many ships are in the harbour? ASSISTANT: There are 12 ships.",
    "USER: Describe the image in detail. ASSISTANT: The satellite image shows farmland, roads and a river.",
    "{VQA} Is there a bridge in the image? Answer the question using a single word or phrase.",
    "{CLS} Classify the scene: airport, beach, forest, harbour, residential, farmland, desert, river.",
    "{VG} Locate the storage tank. [[120, 340, 260, 480]]",
    "{IT} Write a short caption for this remote sensing image.",
    "A dense residential area with many buildings, trees and a small park in the centre.",
    "An aerial view of a highway interchange surrounded by green fields.",
    "A baseball diamond next to a parking lot with several cars.",
    "Yes. No. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Cloud cover hides part of the coastline; the water is dark blue and the sand is bright.",
    "Multispectral bands: red, green, blue, near infrared, shortwave infrared.",
]
TINY_CORPUS: tuple[str, ...] = tuple(_SENTENCES * 4)


def tiny_tokenizer_dir() -> Path:
    """Folder with the cached tiny ``tokenizer.model`` (trained on first use, keyed by corpus and settings)."""
    key = hashlib.sha256(("\n".join(TINY_CORPUS) + f"|{TINY_VOCAB_SIZE}|v1").encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"rsfuse-test-tokenizer-{key}"
    if not (folder / "tokenizer.model").is_file():
        staging = Path(tempfile.mkdtemp(prefix="rsfuse-tokenizer-staging-"))
        train_sentencepiece(TINY_CORPUS, staging, vocab_size=TINY_VOCAB_SIZE)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.model", "tokenizer_config.json"):
            os.replace(staging / name, folder / name)  # atomic: concurrent sessions see a whole file or none
    return folder


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
    """The tiny tokenizer, loaded once per process."""
    return Tokenizer.from_pretrained(tiny_tokenizer_dir())

"""LLaMA-convention SentencePiece tokenizer (``tokenizer.model``) and a small deterministic trainer for tests.

Conventions (those of HF's slow ``LlamaTokenizer`` with ``legacy=True``, which Vicuna and LLaVA training used):

- ids ``<unk>`` = 0, ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS), read from the model file, not assumed;
- LLaMA has no padding token; like LLaVA, ``pad_id`` is the unknown-token id (0). Padded positions are always masked
  (attention mask 0, label -100), so the id itself never reaches a loss;
- the special-token strings ``<s>``, ``</s>`` and ``<unk>`` written in text are parsed as those tokens, and every text
  chunk between them is encoded separately, each with SentencePiece's dummy-prefix space (``"</s>USER"`` gives
  ``</s>``, ``▁USER``): that is the ``legacy=True`` behaviour LLaVA's label masking relies on.

This module imports no model code and no torch.
"""

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

__all__ = ["Tokenizer", "TokenizerError", "TokenSpan", "train_sentencepiece", "IMAGE_TOKEN_INDEX"]

TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

IMAGE_TOKEN_INDEX = -200
"""LLaVA's placeholder id for ``<image>`` in ``input_ids`` (never a vocabulary id)."""

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenizerError(ValueError):
    """A tokenizer file cannot be read or used as asked; the message names the path or the text."""


@dataclass(frozen=True)
class TokenSpan:
    """One token of an encoded text chunk and the UTF-8 byte range ``[start, end)`` of the chunk it covers.

    A token made only of SentencePiece's dummy-prefix space covers no text: ``start == end``.
    """

    token_id: int
    start: int
    end: int


class Tokenizer:
    """SentencePiece tokenizer with LLaMA conventions.

    Build it with :meth:`from_pretrained` (a folder holding ``tokenizer.model``, or the file itself) or
    :func:`train_sentencepiece`.
    """

    def __init__(self, *, model_proto: bytes, source: str = "<memory>") -> None:
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_proto)
        except Exception as error:  # sentencepiece raises RuntimeError/OSError with its own text
            raise TokenizerError(f"{source}: not a readable SentencePiece model ({error})") from None
        self._processor = processor
        self._model_proto = bytes(model_proto)
        self.source = source
        for name, token_id in (("unk", processor.unk_id()), ("bos", processor.bos_id()), ("eos", processor.eos_id())):
            if token_id < 0:
                raise TokenizerError(f"{source}: the SentencePiece model defines no {name} token")
        self._special_ids = {processor.bos_id(), processor.eos_id(), processor.unk_id()}
        self._special_by_text = {
            processor.id_to_piece(token_id): token_id for token_id in sorted(self._special_ids)
        }
        self._special_pattern = re.compile(
            "(" + "|".join(re.escape(text) for text in sorted(self._special_by_text, key=len, reverse=True)) + ")"
        )

    # ------------------------------------------------------------------ construction and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read ``path/tokenizer.model`` (``path`` a folder) or ``path`` itself (a ``.model`` file)."""
        path = Path(path)
        model_file = path / TOKENIZER_FILE if path.is_dir() else path
        if not model_file.is_file():
            raise TokenizerError(f"{model_file}: tokenizer file not found")
        return cls(model_proto=model_file.read_bytes(), source=str(model_file))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``tokenizer.model`` and a small HF-style ``tokenizer_config.json`` into ``folder`` (returned)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TOKENIZER_FILE).write_bytes(self._model_proto)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": self.id_to_piece(self.bos_id),
            "eos_token": self.id_to_piece(self.eos_id),
            "unk_token": self.id_to_piece(self.unk_id),
            "pad_token": self.id_to_piece(self.pad_id),
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,
            "padding_side": "right",
            "clean_up_tokenization_spaces": False,
        }
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (the bytes of ``tokenizer.model``)."""
        return self._model_proto

    # ------------------------------------------------------------------ vocabulary
    @property
    def bos_id(self) -> int:
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def unk_id(self) -> int:
        return self._processor.unk_id()

    @property
    def pad_id(self) -> int:
        """LLaMA has no padding token: the unknown-token id is used, as LLaVA does (padding is always masked)."""
        return self._processor.unk_id()

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def id_to_piece(self, token_id: int) -> str:
        self._check_ids([token_id])
        return self._processor.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a SentencePiece piece (the unknown id for a piece outside the vocabulary)."""
        return int(self._processor.piece_to_id(piece))

    def decode_pieces(self, pieces: Sequence[str]) -> str:
        """Text of SentencePiece pieces (byte-fallback pieces joined into their UTF-8 characters)."""
        return self._processor.decode_pieces(list(pieces))

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size})"

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``<s>``/``</s>``/``<unk>`` written in the text become those ids (HF behaviour)."""
        ids = [span.token_id for span in self.encode_spans(text)]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_spans(self, text: str) -> list[TokenSpan]:
        """Tokens of ``text`` (no BOS/EOS added) with the UTF-8 byte range of ``text`` each one covers."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        spans: list[TokenSpan] = []
        offset = 0
        for chunk in self._special_pattern.split(text):
            if not chunk:
                continue
            size = len(chunk.encode("utf-8"))
            special_id = self._special_by_text.get(chunk)
            if special_id is not None:
                spans.append(TokenSpan(special_id, offset, offset + size))
            else:
                spans.extend(self._encode_chunk(chunk, offset))
            offset += size
        return spans

    def _encode_chunk(self, chunk: str, offset: int) -> list[TokenSpan]:
        """Encode one chunk without special strings; align each piece to the chunk's bytes."""
        ids = self._processor.encode(chunk)
        piece_bytes = [self._piece_bytes(token_id) for token_id in ids]
        joined = b"".join(piece_bytes)
        chunk_bytes = chunk.encode("utf-8")
        if joined == b" " + chunk_bytes:
            cursor = -1  # SentencePiece's dummy-prefix space occupies no text
        elif joined == chunk_bytes:
            cursor = 0
        else:
            raise TokenizerError(
                f"{self.source}: cannot align the tokens of {chunk!r} to the text (pieces decode to {joined!r}); "
                "the model must use identity normalisation and byte fallback for exact offsets"
            )
        spans = []
        for token_id, raw in zip(ids, piece_bytes):
            start, end = cursor, cursor + len(raw)
            spans.append(TokenSpan(token_id, offset + max(start, 0), offset + max(end, 0)))
            cursor = end
        return spans

    def _piece_bytes(self, token_id: int) -> bytes:
        piece = self._processor.id_to_piece(token_id)
        if self._processor.is_byte(token_id):
            match = _BYTE_PIECE.match(piece)
            if match is None:
                raise TokenizerError(f"{self.source}: byte piece {piece!r} (id {token_id}) has an unknown spelling")
            return bytes([int(match.group(1), 16)])
        if self._processor.is_unknown(token_id) or self._processor.is_control(token_id):
            return b"\x00"  # never equal to text bytes: forces the alignment error above
        return piece.replace("\u2581", " ").encode("utf-8")

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``. With ``skip_special`` BOS/EOS/UNK(=pad) and the ``-200`` image placeholder are dropped;
        otherwise they are written as ``<s>``, ``</s>``, ``<unk>`` and ``<image>``."""
        ids = [int(token_id) for token_id in ids]
        self._check_ids([token_id for token_id in ids if token_id != IMAGE_TOKEN_INDEX])
        parts: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id == IMAGE_TOKEN_INDEX or token_id in self._special_ids:
                if run:
                    parts.append(self._processor.decode(run))
                    run = []
                if not skip_special:
                    parts.append("<image>" if token_id == IMAGE_TOKEN_INDEX else self._processor.id_to_piece(token_id))
            else:
                run.append(token_id)
        if run:
            parts.append(self._processor.decode(run))
        return "".join(parts)

    def _check_ids(self, ids: Iterable[int]) -> None:
        size = self.vocab_size
        bad = [token_id for token_id in ids if not 0 <= token_id < size]
        if bad:
            raise TokenizerError(f"{self.source}: token ids {bad[:8]} are outside the vocabulary [0, {size})")


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    user_defined_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Train a LLaMA-style SentencePiece model (unk=0, bos=1, eos=2, no pad, identity normalisation, split digits,
    byte fallback) on ``texts`` and save it to ``out_dir`` (``tokenizer.model`` + ``tokenizer_config.json``).

    Deterministic for the same input (single training thread, no sentence sampling). With ``byte_fallback`` the
    vocabulary must hold the 256 byte pieces plus the 3 specials plus the corpus characters, so ``vocab_size`` should be
    at least ~300; SentencePiece's error is re-raised naming the size otherwise.
    """
    texts = [text for text in texts if text]
    if not texts:
        raise TokenizerError("train_sentencepiece: no non-empty training texts")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buffer,
            model_type=model_type,
            vocab_size=vocab_size,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            byte_fallback=byte_fallback,
            split_digits=True,
            add_dummy_prefix=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            character_coverage=1.0,
            user_defined_symbols=list(user_defined_symbols),
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise TokenizerError(f"train_sentencepiece(vocab_size={vocab_size}): {error}") from None
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()[:12]
    tokenizer = Tokenizer(model_proto=buffer.getvalue(), source=f"<trained {digest}>")
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    tokenizer.source = str(out_dir / TOKENIZER_FILE)
    return tokenizer

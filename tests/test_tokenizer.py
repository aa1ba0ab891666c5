"""Tokenizer: files, LLaMA ids, legacy dummy prefix per chunk, special strings, decoding, saving, training."""

import json

import pytest
from factories.tokenizer import TINY_CORPUS, tiny_tokenizer, tiny_tokenizer_dir

from rsfuse.llm import IMAGE_TOKEN_INDEX, Tokenizer, TokenizerError, train_sentencepiece


def test_llama_special_ids_and_sizes():
    tokenizer = tiny_tokenizer()
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 0)
    assert [tokenizer.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert len(tokenizer) == tokenizer.vocab_size == 512


def test_from_pretrained_folder_and_file_agree():
    by_folder = Tokenizer.from_pretrained(tiny_tokenizer_dir())
    by_file = Tokenizer.from_pretrained(tiny_tokenizer_dir() / "tokenizer.model")
    text = "USER: How many ships? ASSISTANT: 12"
    assert by_folder.encode(text) == by_file.encode(text)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="nowhere"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    corrupt = tmp_path / "tokenizer.model"
    corrupt.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(TokenizerError, match=str(corrupt)):
        Tokenizer.from_pretrained(tmp_path)


def test_encode_bos_eos_flags():
    tokenizer = tiny_tokenizer()
    body = tokenizer.encode("An airport.", bos=False)
    assert tokenizer.encode("An airport.") == [1] + body
    assert tokenizer.encode("An airport.", eos=True) == [1] + body + [2]
    assert 1 not in body and 2 not in body


def test_special_strings_are_parsed_and_each_chunk_gets_the_dummy_prefix():
    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode("Yes.</s>USER: hi", bos=False)
    assert ids == tokenizer.encode("Yes.", bos=False) + [2] + tokenizer.encode("USER: hi", bos=False)
    assert tokenizer.id_to_piece(ids[ids.index(2) + 1]).startswith("\u2581")  # "▁USER": legacy=True behaviour


def test_spans_cover_the_text_exactly():
    tokenizer = tiny_tokenizer()
    text = "A river</s> near 42 fields é漢 \n end<s>"
    raw = text.encode("utf-8")
    spans = tokenizer.encode_spans(text)
    assert b"".join(raw[span.start : span.end] for span in spans) == raw
    assert all(0 <= span.start <= span.end <= len(raw) for span in spans)


@pytest.mark.parametrize(
    "text", ["An airport with three planes.", "Ünïcödé 漢字 and bytes\n\ttabs", "  two spaces", "7 8 9"]
)
def test_decode_round_trip(text):
    tokenizer = tiny_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text, eos=True)) == text


def test_decode_special_tokens_and_image_placeholder():
    tokenizer = tiny_tokenizer()
    ids = [1, IMAGE_TOKEN_INDEX] + tokenizer.encode("A plane.", bos=False) + [2]
    assert tokenizer.decode(ids) == "A plane."
    assert tokenizer.decode(ids, skip_special=False) == "<s><image>A plane.</s>"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.decode([5, 100000])


def test_save_pretrained_copies_model_and_writes_config(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "saved")
    original = (tiny_tokenizer_dir() / "tokenizer.model").read_bytes()
    assert (tmp_path / "saved" / "tokenizer.model").read_bytes() == original
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>" and config["pad_token"] == "<unk>"
    assert config["legacy"] is True and config["add_bos_token"] is True and config["add_eos_token"] is False
    reloaded = Tokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.encode("harbour ships 12") == tokenizer.encode("harbour ships 12")


def test_training_is_deterministic_and_llama_shaped(tmp_path):
    first = train_sentencepiece(TINY_CORPUS, tmp_path / "a", vocab_size=400)
    second = train_sentencepiece(TINY_CORPUS, tmp_path / "b", vocab_size=400)
    assert first.model_proto == second.model_proto
    assert (first.unk_id, first.bos_id, first.eos_id, first.vocab_size) == (0, 1, 2, 400)
    assert (tmp_path / "a" / "tokenizer.model").is_file()
    # byte fallback: characters never seen in training still round-trip
    assert first.decode(first.encode("Ωmega ☃")) == "Ωmega ☃"


def test_training_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="no non-empty"):
        train_sentencepiece(["", ""], tmp_path, vocab_size=300)
    with pytest.raises(TokenizerError, match="vocab_size=10"):
        train_sentencepiece(TINY_CORPUS, tmp_path, vocab_size=10)

"""Templates: hand-worked vicuna_v1 and plain label masks, LLaVA parity, the mismatch error, prompts, truncation."""

import pytest
from factories.tokenizer import TINY_CORPUS, tiny_tokenizer

from rsfuse.llm import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    ConversationError,
    TokenizationMismatchError,
    build_prompt,
    get_template,
    tokenize_conversation,
    tokenize_prompt,
    train_sentencepiece,
)

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TWO_TURNS = [
    {"from": "human", "value": "What is this?\n<image>"},
    {"from": "gpt", "value": "An airport."},
    {"from": "human", "value": "How many planes?"},
    {"from": "gpt", "value": "3"},
]
MASK, TRAIN = False, True
IMAGE = "<-200>"


def _pieces(tokenizer, ids):
    return [IMAGE if token_id == IMAGE_TOKEN_INDEX else tokenizer.id_to_piece(token_id) for token_id in ids]


def _expand(rows):
    """``[("p1 p2 ...", trained), ...]`` -> piece list and trained flags."""
    pieces, trained = [], []
    for text, flag in rows:
        for piece in text.split(" "):
            pieces.append(piece)
            trained.append(flag)
    return pieces, trained


def test_vicuna_v1_hand_worked_two_turns():
    """Prompt: SYSTEM " USER: <image>\\nWhat is this? ASSISTANT: An airport.</s>USER: How many planes?
    ASSISTANT: 3</s>".

    The <image> is moved to the front of its turn (LLaVA preprocess_multimodal). Trained: the space after each
    "ASSISTANT:" (merged into the first answer piece, or a lone "▁"), the answer and its "</s>"; all else is -100."""
    tokenizer = tiny_tokenizer()
    result = tokenize_conversation(TWO_TURNS, tokenizer, "vicuna_v1")
    assert result.prompt == (
        f"{SYSTEM} USER: <image>\nWhat is this? ASSISTANT: An airport.</s>USER: How many planes? ASSISTANT: 3</s>"
    )
    expected_pieces, expected_trained = _expand(
        [
            (
                "<s> ▁A ▁c hat ▁b et w e en ▁a ▁c u ri ou s ▁user ▁and ▁a n ▁a r ti f ic ial "
                "▁in te lli g en ce ▁assistant . ▁The ▁assistant ▁g iv es ▁ he l p f ul , "
                "▁detail ed , ▁and ▁p o li te ▁a nswer s "
                "▁to ▁the ▁user ' s ▁ques tio ns . ▁USER : ▁",
                MASK,
            ),
            (IMAGE, MASK),
            ("▁ <0x0A> W hat ▁is ▁t hi s ? ▁ASSISTANT :", MASK),
            ("▁An ▁airport . </s>", TRAIN),
            ("▁USER : ▁ H ow ▁many ▁p l an es ? ▁ASSISTANT :", MASK),
            ("▁ 3 </s>", TRAIN),
        ]
    )
    assert _pieces(tokenizer, result.input_ids) == expected_pieces
    expected_labels = [
        token_id if trained else IGNORE_INDEX for token_id, trained in zip(result.input_ids, expected_trained)
    ]
    assert result.labels == expected_labels
    assert result.has_image and not result.truncated and result.num_trained == 7
    assert tokenizer.decode(result.input_ids, skip_special=False) == "<s>" + result.prompt


def test_plain_hand_worked():
    """Stage 1: "<image>" + caption + "\\n"; the question is dropped; BOS and the image are masked (LLaVA
    preprocess_plain trains the caption and its newline)."""
    tokenizer = tiny_tokenizer()
    conversation = [{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A plane."}]
    result = tokenize_conversation(conversation, tokenizer, "plain")
    assert result.prompt == "<image>A plane.\n"
    pieces, trained = _expand([("<s>", MASK), (IMAGE, MASK), ("▁A ▁p l an e . <0x0A>", TRAIN)])
    assert _pieces(tokenizer, result.input_ids) == pieces
    assert result.labels == [token_id if flag else IGNORE_INDEX for token_id, flag in zip(result.input_ids, trained)]


def _llava_v1_labels(conversations, tokenizer):
    """LLaVA's preprocess_v1 counting (legacy tokenizer) re-implemented independently, for parity."""
    template = get_template("vicuna_v1")
    prompt = tokenize_conversation(conversations, tokenizer, template).prompt
    input_ids = tokenize_prompt(prompt, tokenizer)
    labels = list(input_ids)
    separator = " " + template.roles[1] + ": "
    current = 1
    labels[:current] = [IGNORE_INDEX]
    for round_text in prompt.split(template.sep2):
        if round_text == "":
            break
        parts = round_text.split(separator)
        assert len(parts) == 2
        parts[0] += separator
        round_length = len(tokenize_prompt(round_text, tokenizer))
        instruction_length = len(tokenize_prompt(parts[0], tokenizer)) - 2
        labels[current : current + instruction_length] = [IGNORE_INDEX] * instruction_length
        current += round_length
    labels[current:] = [IGNORE_INDEX] * len(labels[current:])
    assert current == len(input_ids), "LLaVA would report a tokenization mismatch"
    return input_ids, labels


@pytest.mark.parametrize(
    "conversations",
    [
        TWO_TURNS,
        [{"from": "human", "value": "{VG} Locate the bridge.\n<image>"}, {"from": "gpt", "value": "[[1, 2, 30, 400]]"}],
        [{"from": "human", "value": "{CLS} Which scene?"}, {"from": "gpt", "value": "forest"}],
        [
            {"from": "human", "value": "<image>\nIs there water?"},
            {"from": "gpt", "value": "Yes."},
            {"from": "human", "value": "Count the ships."},
            {"from": "gpt", "value": " 12 ships"},
            {"from": "human", "value": "And planes?"},
            {"from": "gpt", "value": "Ünïcödé ☃ none"},
        ],
    ],
)
def test_labels_match_llava_counting(conversations):
    tokenizer = tiny_tokenizer()
    result = tokenize_conversation(conversations, tokenizer, "vicuna_v1")
    input_ids, labels = _llava_v1_labels(conversations, tokenizer)
    assert result.input_ids == input_ids
    assert result.labels == labels


def test_tokens_crossing_a_turn_boundary_raise_with_the_sample(tmp_path):
    tokenizer = train_sentencepiece(TINY_CORPUS, tmp_path, vocab_size=512, user_defined_symbols=[":\u2581Yes"])
    conversation = [{"from": "human", "value": "Is it an airport?"}, {"from": "gpt", "value": "Yes"}]
    with pytest.raises(TokenizationMismatchError, match=r"': Yes'.*Is it an airport\?"):
        tokenize_conversation(conversation, tokenizer, "vicuna_v1")


def test_build_prompt_for_generation_keeps_task_tags():
    prompt = build_prompt("vicuna_v1", "{VQA} How many ships?")
    assert prompt == f"{SYSTEM} USER: <image>\n{{VQA}} How many ships? ASSISTANT:"
    assert build_prompt("vicuna_v1", "Hello", with_image=False) == f"{SYSTEM} USER: Hello ASSISTANT:"
    assert build_prompt("vicuna_v1", "Look: <image> here") == f"{SYSTEM} USER: <image>\nLook:  here ASSISTANT:"
    assert build_prompt("plain", "ignored") == "<image>"
    tokenizer = tiny_tokenizer()
    ids = tokenize_prompt(prompt, tokenizer)
    assert ids[0] == tokenizer.bos_id and ids.count(IMAGE_TOKEN_INDEX) == 1
    assert tokenizer.decode(ids, skip_special=False) == "<s>" + prompt
    with pytest.raises(ConversationError, match="with_image=False"):
        build_prompt("vicuna_v1", "<image> what?", with_image=False)


def test_truncation_cuts_ids_and_labels_together():
    tokenizer = tiny_tokenizer()
    full = tokenize_conversation(TWO_TURNS, tokenizer, "vicuna_v1")
    cut = tokenize_conversation(TWO_TURNS, tokenizer, "vicuna_v1", max_length=len(full.input_ids) - 2)
    assert cut.truncated and cut.input_ids == full.input_ids[:-2] and cut.labels == full.labels[:-2]
    exact = tokenize_conversation(TWO_TURNS, tokenizer, "vicuna_v1", max_length=len(full.input_ids))
    assert not exact.truncated and exact.input_ids == full.input_ids


@pytest.mark.parametrize(
    ("conversations", "message"),
    [
        ([], "non-empty"),
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}], "turns must alternate"),
        ([{"from": "human", "value": "q"}], "no answer"),
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "empty"),
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image> a"}], "assistant answer"),
        ([{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "a"}], "one image"),
        ([{"from": "human", "text": "q"}, {"from": "gpt", "value": "a"}], "'from' and 'value'"),
    ],
)
def test_malformed_conversations_are_refused(conversations, message):
    with pytest.raises(ConversationError, match=message):
        tokenize_conversation(conversations, tiny_tokenizer(), "vicuna_v1")


def test_plain_needs_an_image_and_one_round():
    tokenizer = tiny_tokenizer()
    with pytest.raises(ConversationError, match="needs <image>"):
        tokenize_conversation([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], tokenizer, "plain")
    with pytest.raises(KeyError, match="unknown conversation template"):
        get_template("chatml")

"""``MFRSVLMProcessor``: the same inputs as the manual path (ImageProcessor + template + model.layout), generation
through it equal to generation on raw ids, folders of every layout readable from their configs, save/load, decoding,
conversations and refused input."""

import json
import shutil

import numpy as np
import pytest
import torch
from factories.host_syncs import count_host_syncs
from factories.llava_hf import IMAGE_TOKEN, NUM_VISUAL_TOKENS, write_hf_llava
from factories.mfrsvlm import make_model, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer, tiny_tokenizer_dir
from PIL import Image

import rsfuse
from rsfuse.data import ImageProcessor
from rsfuse.llm.templates import IGNORE_INDEX, build_prompt, tokenize_conversation, tokenize_prompt
from rsfuse.model import MFRSVLM
from rsfuse.model.predict import answer
from rsfuse.processor import MFRSVLMProcessor, prompt_token_ids
from rsfuse.recipes.evaluate import encode_prompt

QUESTIONS = ["How many ships are in the harbour?", "What is in the image?"]


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def processor(model):
    return MFRSVLMProcessor.from_model(model, tiny_tokenizer())


def _images():
    rng = np.random.default_rng(0)
    first = Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8))
    second = rng.integers(0, 255, (50, 36, 3), dtype=np.uint8)  # a numpy array, not square
    return [first, second]


def _manual(model, images, questions, *, padding_side, template="vicuna_v1"):
    """The path every caller took before the processor: ImageProcessor, build_prompt + tokenize_prompt, model.layout."""
    tokenizer = tiny_tokenizer()
    pictures = ImageProcessor(model.config.input_size)
    pixels = torch.stack([pictures(image if isinstance(image, Image.Image) else Image.fromarray(image))
                          for image in images])
    rows = [tokenize_prompt(build_prompt(template, question), tokenizer) for question in questions]
    ids, mask = _right_padded(rows, model.pad_token_id)
    layout = model.layout(ids, mask, image_mask=torch.ones(len(rows), dtype=torch.bool), padding_side=padding_side)
    return pixels, ids, mask, layout


def _right_padded(rows, pad):
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = True
    return ids, mask


# ----- the manual path, value for value ---------------------------------------------------------------------------
@pytest.mark.parametrize("placement", ["prefix", "token"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_processor_equals_the_manual_path(placement, padding_side):
    model = make_model(0, image_placement=placement)
    processor = MFRSVLMProcessor.from_model(model, tiny_tokenizer())
    images = _images()
    inputs = processor(images=images, text=QUESTIONS, padding_side=padding_side)
    pixels, _, _, layout = _manual(model, images, QUESTIONS, padding_side=padding_side)
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask", "visual_positions"}
    assert torch.equal(inputs["visual_positions"], layout.visual_positions)  # the layout is said, not left to guess
    assert torch.equal(inputs["pixel_values"], pixels)
    assert torch.equal(inputs["input_ids"], layout.input_ids)
    assert torch.equal(inputs["attention_mask"], layout.attention_mask.long())
    assert inputs["input_ids"].dtype == torch.long and inputs["attention_mask"].dtype == torch.long
    # The visual slots are in place: N image tokens per sample, where the placement puts them.
    assert ((inputs["input_ids"] == model.config.image_token_index).sum(dim=1) == model.config.num_visual_tokens).all()
    # What the model re-applies to these ids keeps every attended token, in order, at the same positions.
    again = model.layout(inputs["input_ids"], inputs["attention_mask"], image_mask=torch.ones(2, dtype=torch.bool),
                         padding_side=padding_side)
    for row in range(2):
        kept, mask = again.attention_mask[row], layout.attention_mask[row]
        assert torch.equal(again.input_ids[row][kept], layout.input_ids[row][mask])
        assert torch.equal(again.position_ids[row][kept], layout.position_ids[row][mask])


def test_generate_and_forward_through_the_processor_equal_raw_ids(model, processor):
    images = _images()
    inputs = processor(images=images, text=QUESTIONS)
    pixels, ids, mask, _ = _manual(model, images, QUESTIONS, padding_side="left")
    through = model.generate(**inputs, max_new_tokens=6)
    raw = model.generate(pixels, ids, mask, max_new_tokens=6)
    assert torch.equal(through, raw)
    output, reference = model(**inputs), model(pixels, ids, mask)
    ours, theirs = output.logits[output.attention_mask.bool()], reference.logits[reference.attention_mask.bool()]
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)


def test_text_only_and_mixed_batches(model, processor):
    image = _images()[0]
    text_only = processor(text=["Say yes."])
    assert text_only["pixel_values"] is None and "image_mask" not in text_only
    alone_text = model.generate(**text_only, max_new_tokens=5)
    alone_image = model.generate(**processor(images=[image], text=[QUESTIONS[0]]), max_new_tokens=5)
    mixed = processor(images=[image, None], text=[QUESTIONS[0], "Say yes."])
    assert torch.equal(mixed["image_mask"], torch.tensor([True, False]))
    assert torch.equal(mixed["pixel_values"][1], torch.zeros_like(mixed["pixel_values"][1]))
    together = model.generate(**mixed, max_new_tokens=5)
    assert together[0, : alone_image.shape[1]].tolist() == alone_image[0].tolist()
    assert together[1, : alone_text.shape[1]].tolist() == alone_text[0].tolist()
    # A text-only row's visual slots are masked out.
    visual = mixed["input_ids"][1] == model.config.image_token_index
    assert visual.sum() == model.config.num_visual_tokens and not mixed["attention_mask"][1][visual].any()


def test_labels_for_training(model, processor):
    conversation = [{"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": "An airport."}]
    inputs = processor(images=[_images()[0]], text=[conversation], return_labels=True, padding_side="right")
    tokenized = tokenize_conversation(conversation, tiny_tokenizer(), "vicuna_v1")
    ids, mask = _right_padded([tokenized.input_ids], model.pad_token_id)
    labels = torch.tensor([tokenized.labels])
    layout = model.layout(ids, mask, labels, image_mask=torch.ones(1, dtype=torch.bool), padding_side="right")
    assert torch.equal(inputs["labels"], layout.labels) and torch.equal(inputs["input_ids"], layout.input_ids)
    trained = inputs["labels"][inputs["labels"] != IGNORE_INDEX]
    assert processor.decode(trained) == "An airport."
    assert torch.isfinite(model(**inputs).loss)


@pytest.mark.parametrize("placement", ["prefix", "token"])
def test_training_collate_is_the_processors_layout(tmp_path, placement):
    """The training collate (``processor.collator()``) lays out a batch of dataset samples exactly as the processor
    lays out the same conversations, and the model's loss on it equals its loss on the raw padded batch."""
    from factories.instructions import TINY_RECORDS, write_tiny_instructions
    from rsfuse.data import InstructionDataset, collate

    model = make_model(0, image_placement=placement)
    processor = MFRSVLMProcessor.from_model(model, tiny_tokenizer())
    json_path, image_root = write_tiny_instructions(tmp_path)
    dataset = InstructionDataset(json_path, image_root=image_root, tokenizer=tiny_tokenizer(), template="vicuna_v1",
                                 processor=processor.image_processor, max_length=256)
    rows = [0, 2, 1]  # image, text-only, image
    samples = [dataset[row] for row in rows]
    batch = processor.collator()(samples)
    conversations = [TINY_RECORDS[row]["conversations"] for row in rows]
    images = [Image.open(dataset.image_path(TINY_RECORDS[row])) if "image" in TINY_RECORDS[row] else None
              for row in rows]
    expected = processor(images=images, text=conversations, return_labels=True, padding_side="right")
    for key in ("input_ids", "attention_mask", "labels", "pixel_values", "image_mask"):
        assert torch.equal(batch[key], expected[key]), key
    raw = collate(samples, pad_id=model.pad_token_id)
    assert not torch.equal(raw["input_ids"], batch["input_ids"])  # the raw batch is not laid out
    assert torch.equal(model(**batch).loss, model(**raw).loss)


# ----- conversations ----------------------------------------------------------------------------------------------
def test_conversations_llava_and_openai_styles(processor):
    tokenizer = tiny_tokenizer()
    llava = [
        {"from": "human", "value": "What is in the image?\n<image>"},
        {"from": "gpt", "value": "An airport."},
        {"from": "human", "value": "How many ships?"},
    ]
    openai = [{"role": "user", "content": turn["value"]} if turn["from"] == "human"
              else {"role": "assistant", "content": turn["value"]} for turn in llava]
    image = _images()[0]
    a = processor(images=[image], text=[llava])
    b = processor(images=[image], text=[openai])
    assert torch.equal(a["input_ids"], b["input_ids"])
    # The generation prompt is the training sequence up to the open assistant turn; the image sits in the first turn.
    full = tokenize_conversation([*llava, {"from": "gpt", "value": "Three."}], tokenizer, "vicuna_v1").input_ids
    prompt = prompt_token_ids(llava, tokenizer)
    assert full[: len(prompt)] == prompt and len(full) > len(prompt)
    assert tokenizer.decode(prompt).endswith("USER: How many ships? ASSISTANT:")
    # Without a marker the image goes to the front of the first user turn (LLaVA's rule).
    unmarked = [{**llava[0], "value": "What is in the image?"}, *llava[1:]]
    assert prompt_token_ids(unmarked, tokenizer) == prompt
    assert prompt_token_ids(unmarked, tokenizer, has_image=False).count(-200) == 0
    # A system turn replaces the template's system text; a question alone equals a one-turn conversation.
    system = processor.decode(processor(text=[[{"role": "system", "content": "Answer briefly."},
                                               {"role": "user", "content": "Say yes."}]])["input_ids"][0])
    assert system.startswith("Answer briefly. USER: Say yes.") and "curious user" not in system
    assert torch.equal(processor(text="Say yes.")["input_ids"],
                       processor(text=[[{"role": "user", "content": "Say yes."}]])["input_ids"])


def test_prompt_rule_shared_with_build_prompt_and_the_eval_recipe():
    tokenizer = tiny_tokenizer()
    for question in ("What is it?", "<image>\nWhat is it?", "What <image> is it?"):
        for template in ("vicuna_v1", "plain"):
            expected = tokenize_prompt(build_prompt(template, question), tokenizer)
            assert prompt_token_ids(question, tokenizer, template) == expected, (question, template)
            assert encode_prompt({"prompt": question}, tokenizer, template) == expected
    assert prompt_token_ids("Hi", tokenizer, has_image=False) == tokenize_prompt(
        build_prompt("vicuna_v1", "Hi", with_image=False), tokenizer)


# ----- decoding ---------------------------------------------------------------------------------------------------
def test_batch_decode(processor):
    tokenizer = tiny_tokenizer()
    words = tokenizer.encode("An airport with three planes.", bos=False)
    eos, pad = tokenizer.eos_id, processor.pad_token_id
    rows = torch.tensor([
        [*words, eos, pad, pad],
        [pad, *words, words[0], eos],
        [*words, 600, eos, words[0]],  # an id beyond the tokenizer (an added token of a larger vocabulary)
    ])
    text = "An airport with three planes."
    assert processor.batch_decode(rows) == [text, tokenizer.decode([*words, words[0]]), text]
    assert processor.batch_decode(rows[:1], skip_special_tokens=False) == [text + "</s>"]
    assert processor.decode(rows[0]) == text and processor.batch_decode(rows.tolist())[0] == text
    prompt = processor(images=[_images()[0]], text=["What is it?"])["input_ids"][0]
    shown = processor.decode(prompt, skip_special_tokens=False)
    assert shown.startswith("<image>" * 64) and "<s>A chat" in shown
    assert processor.decode(prompt).endswith("What is it? ASSISTANT:")


def test_predict_answer_goes_through_the_processor(model, processor):
    image = _images()[0]
    expected = processor.batch_decode(
        model.generate(**processor(images=[image], text=[QUESTIONS[0]]), max_new_tokens=5)
    )[0]
    assert answer(model, tiny_tokenizer(), image, QUESTIONS[0], max_new_tokens=5) == expected


# ----- folders ----------------------------------------------------------------------------------------------------
def _same_settings(a: MFRSVLMProcessor, b: MFRSVLMProcessor) -> None:
    assert a.settings() == b.settings()


def test_save_and_load_round_trip(tmp_path, processor):
    plain = MFRSVLMProcessor.from_config(make_model(0).config, tiny_tokenizer(), template="plain")
    plain.save_pretrained(tmp_path / "p")
    assert sorted(path.name for path in (tmp_path / "p").iterdir()) == [
        "processor_config.json", "tokenizer.model", "tokenizer_config.json"]
    loaded = rsfuse.MFRSVLMProcessor.from_pretrained(tmp_path / "p")
    _same_settings(loaded, plain)
    assert loaded.template.name == "plain"
    assert MFRSVLMProcessor.from_pretrained(tmp_path / "p", template="vicuna_v1").template.name == "vicuna_v1"
    image = _images()[0]
    for left, right in zip(loaded(images=[image], text=["x"]).values(), plain(images=[image], text=["x"]).values()):
        assert torch.equal(left, right)
    processor.save_pretrained(tmp_path / "v")
    assert MFRSVLMProcessor.from_pretrained(tmp_path / "v").settings() == processor.settings()


def test_rsfuse_folder_records_the_template(tmp_path, model, processor):
    folder = model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer_dir())
    _same_settings(MFRSVLMProcessor.from_pretrained(folder), processor)
    from rsfuse.model.loading import save_pretrained

    save_pretrained(model, tmp_path / "s", tokenizer=tiny_tokenizer_dir(), template="plain")
    assert MFRSVLMProcessor.from_pretrained(tmp_path / "s").template.name == "plain"
    reloaded = MFRSVLM.from_pretrained(tmp_path / "s")
    assert MFRSVLMProcessor.from_model(reloaded).template.name == "plain"
    reloaded.save_pretrained(tmp_path / "again")  # the recorded template travels with the model
    assert MFRSVLMProcessor.from_pretrained(tmp_path / "again").template.name == "plain"


def test_released_folder_read_from_its_configs_only(tmp_path):
    folder, _ = write_released_checkpoint(tmp_path / "released")
    model = MFRSVLM.from_pretrained(folder)
    for shard in folder.glob("*.safetensors"):
        shard.write_bytes(b"not weights")  # the processor must not read them
    processor = MFRSVLMProcessor.from_pretrained(folder)
    _same_settings(processor, MFRSVLMProcessor.from_model(model, tiny_tokenizer()))
    assert processor.image_placement == "prefix" and processor.image_token_index == -200
    assert processor.image_size == model.config.input_size and processor.template.name == "vicuna_v1"


def test_llava_hf_folder(tmp_path):
    folder, _ = write_hf_llava(tmp_path / "llava", sparse_config=True)
    shutil.copyfile(tiny_tokenizer_dir() / "tokenizer.model", folder / "tokenizer.model")
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaProcessor", "patch_size": 14}))
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    processor = MFRSVLMProcessor.from_pretrained(folder)
    assert (processor.image_token_index, processor.num_visual_tokens, processor.image_placement) == (
        IMAGE_TOKEN, NUM_VISUAL_TOKENS, "token")
    assert processor.image_size == 56 and list(processor.image_processor.mean) == mean
    inputs = processor(images=[_images()[0]], text=["What is it?"])
    raw = tokenize_prompt(build_prompt("vicuna_v1", "What is it?"), tiny_tokenizer())
    slot = raw.index(-200)
    expected = raw[:slot] + [IMAGE_TOKEN] * NUM_VISUAL_TOKENS + raw[slot + 1:]
    attended = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    assert attended.tolist() == expected  # llava-hf's convention: the image token once per visual token
    with pytest.raises(ValueError, match="another processor"):
        processor.save_pretrained(folder)


# ----- refused input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": [7], "text": ["q"]}, r"images\[0\].*int"),
        ({"images": [np.zeros((4, 4, 2), dtype=np.uint8)], "text": ["q"]}, r"images\[0\].*shape"),
        ({"images": [np.full((4, 4, 3), 2.0)], "text": ["q"]}, r"images\[0\].*\[0, 1\]"),
        ({"images": [None, None], "text": ["q"]}, r"images: 2 image\(s\) for 1 text"),
        ({"images": None, "text": None}, r"^text"),
        ({"text": [[{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]]}, r"text\[0\]\[1\].*'robot'"),
        ({"text": [[{"from": "gpt", "value": "a"}]]}, r"text\[0\]\[0\].*user turn is expected"),
        ({"text": ["<image>\nq"]}, r"text\[0\].*image is None"),
        ({"images": [np.zeros((4, 4, 3), np.uint8)], "text": ["q"], "return_labels": True}, r"text\[0\].*answer"),
        ({"text": ["q"], "padding_side": "middle"}, r"padding_side"),
    ],
)
def test_bad_input_names_the_field(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_bad_folders_and_templates(tmp_path, processor):
    with pytest.raises(ValueError, match="no such folder"):
        MFRSVLMProcessor.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        MFRSVLMProcessor.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="template"):
        MFRSVLMProcessor.from_config(make_model(0).config, tiny_tokenizer(), template="chatml")


def test_a_forward_on_the_processors_output_reads_nothing_back_to_the_host(model, processor, monkeypatch):
    """The processor says where the visual positions are; the model only scatters there: no layout, no look at the
    ids (the ids-at-positions check runs only under RSFUSE_TYPECHECK=1, switched off here as at run time)."""
    import rsfuse.model.sequence as sequence

    inputs = processor(images=_images(), text=QUESTIONS, padding_side="right")
    monkeypatch.setattr(sequence, "TYPECHECK", False)
    calls = count_host_syncs(monkeypatch)
    with torch.no_grad():
        model(**inputs)
    assert calls == []
    raw = {key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        model(**raw)  # without the processor's marker: one explicit layout at the boundary, which may read back
    assert calls


def test_visual_positions_are_checked_against_the_model(model, processor, monkeypatch):
    inputs = processor(images=_images(), text=QUESTIONS)
    short = dict(inputs, visual_positions=inputs["visual_positions"][:, 1:])
    tokens = model.config.num_visual_tokens
    with pytest.raises(ValueError, match=f"holds {tokens - 1} positions per row but the model has {tokens} visual"):
        model(**short)
    shifted = dict(inputs, visual_positions=inputs["visual_positions"] + 1)
    with pytest.raises(ValueError, match="do not hold the image token"):
        model(**shifted)  # RSFUSE_TYPECHECK=1 in the tests: the ids at the positions are checked
    right = processor(images=_images(), text=QUESTIONS, padding_side="right")
    with pytest.raises(ValueError, match="right-padded"):
        model.generate(**right, max_new_tokens=2)
    ids = right["input_ids"][:, :]
    raw = torch.cat([torch.full((2, 2), -200), ids[:, -5:]], dim=1)
    with pytest.raises(ValueError, match="row 0 holds 2 image placeholders but the model has"):
        model(right["pixel_values"], raw)

"""InstructionDataset (paths, errors, skip_bad, truncation), collate (mixed batches), LengthGroupedSampler."""

import json

import pytest
import torch
from factories.instructions import TINY_RECORDS, write_tiny_instructions
from factories.tokenizer import tiny_tokenizer
from torch.utils.data import DataLoader

from rsfuse.data import ImageProcessor, InstructionDataError, InstructionDataset, LengthGroupedSampler, collate
from rsfuse.llm import IGNORE_INDEX, IMAGE_TOKEN_INDEX, tokenize_conversation

SIZE = 16


def _dataset(json_path, image_root, **kwargs):
    options = dict(
        image_root=image_root,
        tokenizer=tiny_tokenizer(),
        template="vicuna_v1",
        processor=ImageProcessor(SIZE),
        max_length=256,
    )
    options.update(kwargs)
    return InstructionDataset(json_path, **options)


def _write(tmp_path, records):
    json_path, image_root = write_tiny_instructions(tmp_path)
    json_path.write_text(json.dumps(records))
    return json_path, image_root


def test_samples_images_and_paths(tmp_path):
    dataset = _dataset(*write_tiny_instructions(tmp_path))
    assert len(dataset) == 5
    assert dataset.image_path(dataset.records[1]) == tmp_path / "images" / "dota" / "harbour.png"
    assert dataset.image_path(dataset.records[3]) == tmp_path / "images" / "river.png"  # root fallback
    samples = [dataset[index] for index in range(len(dataset))]
    assert [sample.pixel_values is not None for sample in samples] == [True, True, False, True, False]
    assert samples[1].pixel_values.shape == (3, SIZE, SIZE)
    assert samples[0].sample_id == "airport-1"
    expected = tokenize_conversation(TINY_RECORDS[0]["conversations"], tiny_tokenizer(), "vicuna_v1")
    assert samples[0].input_ids.tolist() == expected.input_ids and samples[0].labels.tolist() == expected.labels
    assert (samples[2].input_ids == IMAGE_TOKEN_INDEX).sum() == 0
    report = dataset.report()
    assert report["records"] == report["kept"] == 5 and report["skipped"] == {} and report["truncated"] == 0


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_collate_mixed_text_and_image_batch(tmp_path, padding_side):
    dataset = _dataset(*write_tiny_instructions(tmp_path))
    samples = [dataset[0], dataset[2], dataset[1]]  # image, text-only, image
    batch = collate(samples, pad_id=tiny_tokenizer().pad_id, padding_side=padding_side)
    lengths = [len(sample.input_ids) for sample in samples]
    longest = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, longest)
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["image_mask"].tolist() == [True, False, True]
    assert batch["pixel_values"].shape == (3, 3, SIZE, SIZE)
    assert torch.equal(batch["pixel_values"][1], torch.zeros(3, SIZE, SIZE))
    assert torch.equal(batch["pixel_values"][2], samples[2].pixel_values)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, sample in enumerate(samples):
        real = batch["attention_mask"][row].bool()
        assert torch.equal(batch["input_ids"][row][real], sample.input_ids)
        assert torch.equal(batch["labels"][row][real], sample.labels)
        assert (batch["labels"][row][~real] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row][~real] == tiny_tokenizer().pad_id).all()
        first_real = int(real.long().argmax())
        assert first_real == (0 if padding_side == "right" else longest - lengths[row])
    assert (batch["input_ids"] == IMAGE_TOKEN_INDEX).sum(dim=1).tolist() == [1, 0, 1]


def test_collate_text_only_batch_has_no_pixels(tmp_path):
    dataset = _dataset(*write_tiny_instructions(tmp_path))
    batch = collate([dataset[2], dataset[4]], pad_id=0)
    assert batch["pixel_values"] is None and batch["image_mask"].tolist() == [False, False]


def test_missing_image_raises_naming_the_sample(tmp_path):
    records = [dict(TINY_RECORDS[0], image="gone.png"), TINY_RECORDS[2]]
    dataset = _dataset(*_write(tmp_path, records))
    with pytest.raises(InstructionDataError, match=r"sample 0 \(id 'airport-1'\): missing_image: .*gone.png"):
        dataset[0]


def test_skip_bad_skips_and_reports_by_reason(tmp_path):
    json_path, image_root = write_tiny_instructions(tmp_path)
    (image_root / "broken.png").write_bytes(b"not a png at all")
    records = [
        dict(TINY_RECORDS[0], image="gone.png", id="m"),  # missing image
        dict(TINY_RECORDS[0], image="broken.png", id="u"),  # unreadable image
        {"id": "x", "conversations": [{"from": "gpt", "value": "answer first"}]},  # malformed
        "not a record",  # malformed
        TINY_RECORDS[2],  # fine (text-only)
        TINY_RECORDS[1],  # fine
    ]
    json_path.write_text(json.dumps(records))
    with pytest.raises(InstructionDataError, match=r"sample 2 \(id 'x'\): malformed_record"):
        _dataset(json_path, image_root)
    dataset = _dataset(json_path, image_root, skip_bad=True)
    assert len(dataset) == 4  # the two malformed records are gone at construction
    served = [dataset[0].sample_id, dataset[1].sample_id, dataset[2].sample_id, dataset[3].sample_id]
    assert served == ["text-1", "text-1", "text-1", "harbour-7"]  # a bad sample is replaced by the next good one
    report = dataset.report()
    assert report["records"] == 6 and report["kept"] == 2
    assert report["skipped"] == {"malformed_record": 2, "missing_image": 1, "unreadable_image": 1}
    assert "gone.png" in report["examples"]["missing_image"]
    assert "broken.png" in report["examples"]["unreadable_image"]


def test_truncation_counted_and_answerless_samples_dropped(tmp_path):
    tokenizer = tiny_tokenizer()
    long_answer = {
        "id": "long",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x " * 40}],
    }
    prompt_length = len(tokenize_conversation(long_answer["conversations"], tokenizer, "vicuna_v1").input_ids)
    short = TINY_RECORDS[2]
    short_length = len(tokenize_conversation(short["conversations"], tokenizer, "vicuna_v1").input_ids)
    cut_to_nothing = {
        "id": "nothing",
        "conversations": [{"from": "human", "value": "word " * 80}, {"from": "gpt", "value": "yes"}],
    }
    max_length = short_length + 2
    assert prompt_length > max_length
    dataset = _dataset(*_write(tmp_path, [long_answer, cut_to_nothing, short]), max_length=max_length)
    first = dataset[0]
    assert len(first.input_ids) == max_length and (first.labels != IGNORE_INDEX).any()
    assert dataset[1].sample_id == short["id"]  # "nothing" is dropped even without skip_bad
    report = dataset.scan()
    assert report["truncated"] == 2 and report["skipped"] == {"truncated_to_nothing": 1} and report["kept"] == 2


def test_image_without_placeholder_gets_one(tmp_path):
    conversations = [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Planes."}]
    record = {"id": "p", "image": "airport.png", "conversations": conversations}
    dataset = _dataset(*_write(tmp_path, [record]))
    assert (dataset[0].input_ids == IMAGE_TOKEN_INDEX).sum() == 1 and dataset.report()["image_token_added"] == 1


def test_placeholder_without_image_field_is_malformed(tmp_path):
    record = {"id": "q", "conversations": [{"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "a"}]}
    with pytest.raises(InstructionDataError, match="no 'image' field"):
        _dataset(*_write(tmp_path, [record]))


def test_bad_json_files(tmp_path):
    with pytest.raises(InstructionDataError, match="instruction file not found"):
        _dataset(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InstructionDataError, match="bad.json: not valid JSON"):
        _dataset(tmp_path / "bad.json", tmp_path)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(InstructionDataError, match="expected a JSON list"):
        _dataset(tmp_path / "obj.json", tmp_path)


def test_plain_template_dataset_and_dataloader(tmp_path):
    json_path, image_root = write_tiny_instructions(tmp_path)
    json_path.write_text(json.dumps([TINY_RECORDS[1], TINY_RECORDS[3]]))
    dataset = _dataset(json_path, image_root, template="plain")
    loader = DataLoader(dataset, batch_size=2, collate_fn=lambda samples: collate(samples, pad_id=0))
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE) and batch["image_mask"].all()
    assert (batch["labels"][:, :2] == IGNORE_INDEX).all()  # BOS and the image are never trained


# ---------------------------------------------------------------------------------------------- sampler

LENGTHS = [5, 40, 12, 33, 7, 21, 8, 50, 3, 19, 27, 14, 9]
HAS_IMAGE = [True, False, True, True, False, True, False, True, True, False, True, False, True]


def test_sampler_is_a_deterministic_permutation_per_epoch():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=2, world_size=2, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(LENGTHS))) and len(sampler) == len(LENGTHS)
    assert list(LengthGroupedSampler(LENGTHS, batch_size=2, world_size=2, seed=3)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == sorted(first) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(LengthGroupedSampler(LENGTHS, batch_size=2, world_size=2, seed=4)) != first


def test_sampler_megabatches_are_sorted_longest_first():
    order = list(LengthGroupedSampler(LENGTHS, batch_size=4, seed=0))
    for start in range(0, len(order), 4):
        lengths = [LENGTHS[index] for index in order[start : start + 4]]
        assert lengths == sorted(lengths, reverse=True)


def test_sampler_modality_grouping():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=2, seed=0, has_image=HAS_IMAGE, group_by_modality=True)
    order = list(sampler)
    assert sorted(order) == list(range(len(LENGTHS)))
    # 8 image samples -> 4 full megabatches of 2; 5 text samples -> 2 full + 1 leftover; leftovers form the last one
    full = [order[start : start + 2] for start in range(0, 12, 2)]
    assert all(len({HAS_IMAGE[index] for index in megabatch}) == 1 for megabatch in full)
    assert order[12:] == [index for index in range(len(LENGTHS)) if not HAS_IMAGE[index] and index not in order[:12]]
    with pytest.raises(ValueError, match="needs has_image"):
        LengthGroupedSampler(LENGTHS, batch_size=2, group_by_modality=True)


def test_sampler_resumes_mid_epoch():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=2, seed=7)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.skip(5)
    assert list(sampler) == whole[5:] and len(sampler) == len(LENGTHS) - 5
    state = sampler.state_dict()
    resumed = LengthGroupedSampler(LENGTHS, batch_size=2, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == whole[5:]
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(LENGTHS)  # a new epoch starts from its beginning
    with pytest.raises(ValueError, match="cannot skip"):
        resumed.skip(len(LENGTHS) + 1)


def test_sampler_with_dataset_lengths(tmp_path):
    dataset = _dataset(*write_tiny_instructions(tmp_path))
    assert dataset.has_image == [True, True, False, True, False]
    assert all(length > 576 for length, image in zip(dataset.lengths, dataset.has_image) if image)
    sampler = LengthGroupedSampler(dataset.lengths, batch_size=2, has_image=dataset.has_image, group_by_modality=True)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=lambda samples: collate(samples, pad_id=0))
    assert sum(len(batch["input_ids"]) for batch in loader) == len(dataset)


def _qa(record_id, image, question, answer, first="<image>\n"):
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": f"{first}{question}"}, {"from": "gpt", "value": answer}]}


def test_merge_turns_by_image_by_hand(tmp_path):
    from rsfuse.data import merge_turns_by_image

    records = [_qa("a0", "a.png", "How many ships?", "2"), _qa("b0", "b.png", "Is there a plane?", "no"),
               _qa("a1", "a.png", "What colour is the ship?", "red", first=""),
               {"id": "t0", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    merged = merge_turns_by_image(records)
    assert [record["id"] for record in merged] == ["a0", "b0", "t0"]
    assert merged[0]["merged_ids"] == ["a0", "a1"] and merged[2] is records[3]
    assert [turn["value"] for turn in merged[0]["conversations"]] == [
        "<image>\nHow many ships?", "2", "What colour is the ship?", "red"]
    assert records[2]["conversations"][0]["value"] == "What colour is the ship?"  # inputs untouched
    # Shuffled: exchanges stay whole, <image> moves to the first one, and the order is a function of the seed.
    many = [_qa(f"c{i}", "c.png", f"Question {i}?", f"answer {i}", first="<image>\n" if i == 0 else "")
            for i in range(6)]
    orders = {tuple(turn["value"] for turn in merge_turns_by_image(many, shuffle_seed=seed)[0]["conversations"])
              for seed in range(5)}
    assert len(orders) > 1
    for order in orders:
        assert order[0].startswith("<image>\n") and sum("<image>" in value for value in order) == 1
        questions, answers = order[0::2], order[1::2]
        asked = [question.removeprefix("<image>\n").split()[1].rstrip("?") for question in questions]
        assert asked == [answer.split()[1] for answer in answers]
    again = merge_turns_by_image(many, shuffle_seed=3)[0]["conversations"]
    assert again == merge_turns_by_image(many, shuffle_seed=3)[0]["conversations"]
    with pytest.raises(ValueError, match="record 0"):
        merge_turns_by_image([{"image": "a.png"}])
    # The merged record is a valid multi-turn training sample: every answer is trained on.
    json_path, image_root = write_tiny_instructions(tmp_path)
    image = TINY_RECORDS[0]["image"]
    json_path.write_text(json.dumps(merge_turns_by_image(
        [_qa("x0", image, "How many ships?", "2"), _qa("x1", image, "Is there a plane?", "no")])))
    sample = _dataset(json_path, image_root)[0]
    assert (sample.input_ids == IMAGE_TOKEN_INDEX).sum() == 1
    trained = tiny_tokenizer().decode(sample.labels[sample.labels != IGNORE_INDEX].tolist())
    assert "2" in trained and "no" in trained

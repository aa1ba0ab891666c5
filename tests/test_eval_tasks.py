"""Task readers on tiny fixtures written in the real release formats."""

import pytest
from factories.eval_data import (
    write_class_folders,
    write_classification_json,
    write_grounding_files,
    write_karpathy_captions,
    write_rsvqa_lr_flat,
    write_rsvqa_lr_release,
    write_vrsbench,
)

from rsfuse.eval import TASK_READERS, caption, cls, grounding, rsvqa_lr, vrsbench_cap, vrsbench_vqa
from rsfuse.eval import (
    caption_scores,
    classification_scores,
    grounding_scores,
    rsvqa_lr_scores,
    vrsbench_vqa_score,
)


def test_vrsbench_vqa_reader(tmp_path):
    files = write_vrsbench(tmp_path)
    records = vrsbench_vqa(files["vqa"], files["images"])
    assert [record["id"] for record in records] == ["0", "1", "2"]
    first = records[0]
    assert first["prompt"] == (
        "Answer the question based on the remote sensing image.\nQuestion: How many small vehicles are there?\nAnswer:"
    )
    assert first["answer"] == "2" and first["type"] == "object quantity"
    assert first["image_path"] == files["images"] / "P0003_0002.png" and first["image_path"].is_file()
    assert records[2]["type"] == "object color"  # stripped and lower-cased
    scored = vrsbench_vqa_score([{**record, "prediction": record["answer"]} for record in records])
    assert scored["avg"] == 1.0


def test_vrsbench_cap_reader_feeds_caption_scores(tmp_path, monkeypatch):
    import rsfuse.eval.captions as captions

    monkeypatch.setattr(captions, "wordnet_available", lambda: (False, "off"))
    files = write_vrsbench(tmp_path)
    records = vrsbench_cap(files["cap"], files["images"])
    assert records[0]["prompt"] == "Please provide a detailed caption for the remote sensing image."
    assert records[1]["answers"] == ["A large white ship is docked at a harbor."]
    refs = {record["id"]: record["answers"] for record in records}
    scores = caption_scores({key: value[0] for key, value in refs.items()}, refs, protocol="compat")
    assert scores["BLEU-4"] == pytest.approx(1.0)


def test_vrsbench_reader_errors_name_file_and_field(tmp_path):
    files = write_vrsbench(tmp_path)
    (files["images"] / "P0011_0000.png").unlink()
    with pytest.raises(FileNotFoundError, match="P0011_0000.png"):
        vrsbench_vqa(files["vqa"], files["images"])
    assert len(vrsbench_vqa(files["vqa"], files["images"], check_images=False)) == 3
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": "x.png", "question": "q?", "type": "image"}]')
    with pytest.raises(KeyError, match=r"broken.json: entry 0 has no 'ground_truth'"):
        vrsbench_vqa(broken, files["images"], check_images=False)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        vrsbench_vqa(tmp_path / "missing.json", files["images"])


def test_classification_folder_reader(tmp_path):
    counts = write_class_folders(tmp_path / "AID")
    records = cls(tmp_path / "AID")
    assert len(records) == sum(counts.values())  # readme.txt is not an image
    assert {record["answer"] for record in records} == {"airport", "basketball court", "forest"}
    assert "airport, basketball court, forest" in records[0]["prompt"]
    assert records[0]["id"] == "airport/airport_00.jpg"
    predictions = ["Airport", "", "basketball court", "Forest."]
    scores = classification_scores([{**record, "prediction": text} for record, text in zip(records, predictions)])
    assert scores["contains_accuracy"] == pytest.approx(2 / 4)  # "Forest." fails the contains rule
    assert scores["exact_accuracy"] == pytest.approx(3 / 4)
    assert scores["empty_predictions"] == 1


def test_classification_json_reader(tmp_path):
    path = write_classification_json(tmp_path)
    records = cls(path, classes=["airport", "forest"])
    assert [record["answer"] for record in records] == ["airport", "forest"]
    assert records[0]["prompt"].startswith("What is the scene category of this image?\n")
    assert "airport, forest" in records[0]["prompt"]
    assert records[1]["image_path"] == tmp_path / "imgs" / "b.png"
    assert cls(path)[0]["prompt"] == "What is the scene category of this image?"


def test_karpathy_caption_reader(tmp_path):
    files = write_karpathy_captions(tmp_path)
    records = caption(files["annotation"], files["images"])
    assert [record["id"] for record in records] == ["1", "2"]  # test split only
    assert records[0]["answers"] == ["An airplane is parked at the airport .", "A white plane on the apron ."]
    assert len(caption(files["annotation"], files["images"], split=None)) == 3
    with pytest.raises(ValueError, match="no images in split 'val'"):
        caption(files["annotation"], files["images"], split="val")


@pytest.mark.parametrize("flags_only", [False, True])
def test_rsvqa_lr_release_reader(tmp_path, flags_only):
    write_rsvqa_lr_release(tmp_path, flags_only=flags_only)
    records = rsvqa_lr(tmp_path)
    assert [record["id"] for record in records] == ["0", "1", "2", "3"]  # inactive question 4 skipped
    assert [record["type"] for record in records] == ["rural_urban", "presence", "comparison", "count"]
    assert records[2]["answer"] == "no"
    assert records[1]["image_path"] == tmp_path / "Images_LR" / "0.tif"
    assert records[1]["prompt"].startswith("Is a road present?\n")
    scores = rsvqa_lr_scores([{**record, "prediction": record["answer"]} for record in records])
    assert scores["avg"]["exact_accuracy"] == 1.0 and scores["skipped"] == 1


def test_rsvqa_lr_flat_reader(tmp_path):
    path = write_rsvqa_lr_flat(tmp_path)
    records = rsvqa_lr(path)
    assert [(record["id"], record["type"], record["answer"]) for record in records] == [
        ("10", "presence", "yes"),
        ("11", "rural_urban", "urban"),
    ]
    assert records[1]["image_path"] == tmp_path / "7.tif"


def test_grounding_reader_all_layouts(tmp_path):
    files = write_grounding_files(tmp_path)
    manifest = grounding(files["manifest"])[0]
    assert manifest["box"] == [20, 10, 60, 50] and manifest["box_scale"] == "pixel"
    assert manifest["image_size"] == (200, 100)
    assert manifest["prompt"] == (
        "{VG} the red car Answer with bounding box coordinates [x_min, y_min, x_max, y_max] scaled to 0-1000 "
        "(inclusive)."
    )
    referring = grounding(files["referring"], files["images"])[0]
    assert referring["box"] == [10, 20, 30, 60] and referring["box_scale"] == 100 and referring["id"] == "5"
    generic = grounding(files["generic"])[0]
    assert generic["box_scale"] == 1000 and generic["image_path"] == tmp_path / "imgs" / "scene.png"
    predictions = ["[[100, 100, 300, 500]]", "[[100, 200, 300, 600]]", "[[100, 200, 500, 600]]"]
    records = [{**record, "prediction": text} for record, text in zip([manifest, referring, generic], predictions)]
    assert grounding_scores(records)["mIoU"] == pytest.approx(1.0)


def test_reader_registry_names():
    assert set(TASK_READERS) == {"vrsbench_vqa", "vrsbench_cap", "cls", "caption", "rsvqa_lr", "grounding", "synthetic"}
    assert TASK_READERS["rsvqa_lr"] is rsvqa_lr and TASK_READERS["cls"] is cls

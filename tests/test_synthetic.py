"""The synthetic remote-sensing benchmark: determinism, answers consistent with the scenes, small visible objects,
split hygiene, reuse of a finished dataset, and the ``synth`` CLI."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from factories.eval_data import write_synthetic_benchmark
from PIL import Image

from rsfuse.eval import get_task, synthetic_scores
from rsfuse.synthetic.benchmark import generate, load_scenes, main
from rsfuse.synthetic.placement import make_scene
from rsfuse.synthetic.questions import ask_questions
from rsfuse.synthetic.render import render_scene
from rsfuse.synthetic.scene import SCENE_CLASSES, Scene
from rsfuse.synthetic.task import synthetic

N_IMAGES = 40
SIZE = 224
GLOBAL_SIZE, GLOBAL_PATCH = 112, 14  # the tiny model's global view
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, n_images=N_IMAGES, seed=7, size=SIZE, workers=1)
    return out


@pytest.fixture(scope="module")
def scenes(dataset) -> list[dict]:
    return json.loads((dataset / "scenes.json").read_text())


@pytest.fixture(scope="module")
def records(dataset) -> list[dict]:
    return [record for split in SPLITS for record in json.loads((dataset / f"{split}.json").read_text())]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _pixels(folder: Path, image: str) -> np.ndarray:
    with Image.open(folder / image) as img:
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        return np.asarray(img)


def test_same_seed_gives_identical_files_regardless_of_workers(dataset, tmp_path):
    again = tmp_path / "again"
    summary = generate(again, n_images=N_IMAGES, seed=7, size=SIZE, workers=2)
    assert summary["reused"] is False
    first, second = _files(dataset), _files(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".png")]) == N_IMAGES
    assert all(first[name] == second[name] for name in first), "same seed must give byte-identical files"


def test_different_seeds_differ(dataset, tmp_path):
    other = tmp_path / "other"
    generate(other, n_images=N_IMAGES, seed=8, size=SIZE)
    assert (other / "scenes.json").read_bytes() != (dataset / "scenes.json").read_bytes()
    assert (other / "train.json").read_bytes() != (dataset / "train.json").read_bytes()
    image = "images/000000.png"
    assert not np.array_equal(_pixels(other, image), _pixels(dataset, image))


def _quadrant(bbox: list[int]) -> str:
    x0, y0, x1, y1 = bbox
    vertical = "top" if (y0 + y1) / 2 < SIZE / 2 else "bottom"
    horizontal = "left" if (x0 + x1) / 2 < SIZE / 2 else "right"
    return f"{vertical} {horizontal}"


def test_every_answer_agrees_with_the_scene_description(scenes, records):
    by_image = {scene["image"]: scene for scene in scenes}
    seen_types = Counter()
    for record in records:
        scene = by_image[record["image"]]
        human, gpt = record["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt == {"from": "gpt", "value": record["answer"]}
        question, answer, question_type = human["value"].split("\n", 1)[1], record["answer"], record["question_type"]
        assert record["scene"] == scene["scene_class"]
        assert record["small_object"] == (question_type in {"count", "existence", "colour", "position"})
        kinds = [obj["kind"] for obj in scene["objects"]]
        seen_types[question_type] += 1
        if question_type == "count":
            kind = re.fullmatch(r"How many (.+)s are there\?", question).group(1)
            assert answer == str(kinds.count(kind)), (record["id"], kinds)
        elif question_type == "existence":
            kind = re.fullmatch(r"Is there a (.+) in the image\?", question).group(1)
            assert answer == ("yes" if kind in kinds else "no"), (record["id"], kinds)
        elif question_type in ("colour", "position"):
            kind = re.fullmatch(r"(?:What colour is|In which quadrant of the image is) the (.+)\?", question).group(1)
            matching = [obj for obj in scene["objects"] if obj["kind"] == kind]
            assert len(matching) == 1, "colour/position questions need exactly one object of the kind"
            expected = matching[0]["colour"] if question_type == "colour" else _quadrant(matching[0]["bbox"])
            assert answer == expected, record["id"]
        elif question_type == "scene":
            assert answer == scene["scene_class"]
        else:
            assert question_type == "caption"
            assert answer.startswith("An aerial view of ")
            for kind in set(kinds):
                count = kinds.count(kind)
                assert f"{count} {kind if count == 1 else kind + 's'}" in answer, (answer, kinds)
            mentioned = [int(number) for number in re.findall(r"\b(\d+) ", answer)]
            assert sum(mentioned) == len(kinds), (answer, kinds)
    assert set(seen_types) == {"count", "existence", "colour", "position", "scene", "caption"}


def test_objects_are_small_inside_the_image_apart_and_off_the_centre_lines(scenes):
    quarter_patch = GLOBAL_PATCH**2 / 4
    n_objects = 0
    for scene in scenes:
        boxes = [obj["bbox"] for obj in scene["objects"]]
        for x0, y0, x1, y1 in boxes:
            n_objects += 1
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
            area_in_global_view = (x1 - x0) * (y1 - y0) * (GLOBAL_SIZE / SIZE) ** 2
            assert area_in_global_view < quarter_patch, (scene["image"], (x0, y0, x1, y1))
            assert x1 <= SIZE / 2 or x0 >= SIZE / 2, "object straddles the vertical centre line"
            assert y1 <= SIZE / 2 or y0 >= SIZE / 2, "object straddles the horizontal centre line"
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart = a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
                assert apart, f"{scene['image']}: objects {a} and {b} touch"
    assert n_objects > N_IMAGES, "the scenes should hold objects"


def test_splits_are_disjoint_by_image_and_cover_every_image(dataset, scenes):
    meta = json.loads((dataset / "meta.json").read_text())
    images = {split: {r["image"] for r in json.loads((dataset / f"{split}.json").read_text())} for split in SPLITS}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            assert not images[first] & images[second], (first, second)
    split_of = {scene["image"]: scene["split"] for scene in scenes}
    assert len(split_of) == N_IMAGES
    for split in SPLITS:
        assert all(split_of[image] == split for image in images[split])
        assert meta["counts"]["images"][split] == sum(value == split for value in split_of.values())
    assert meta["counts"]["images"] == {"train": 32, "val": 4, "test": 4}
    assert meta["seed"] == 7 and meta["n_images"] == N_IMAGES and meta["size"] == SIZE


def test_objects_are_visible_in_the_png(dataset, scenes):
    for item in scenes:
        pixels = _pixels(dataset, item["image"]).astype(np.int32)
        scene = Scene.from_dict(item)
        assert np.array_equal(render_scene(scene), pixels), "the PNG must be the render of its scene description"
        without = render_scene(scene, draw_objects=False).astype(np.int32)
        changed = np.abs(pixels - without).sum(-1) > 0
        inside = np.zeros_like(changed)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            inside[y0:y1, x0:x1] = True
            box = pixels[y0:y1, x0:x1]
            ring = np.concatenate(
                [
                    pixels[max(0, y0 - 2) : y0, x0:x1].reshape(-1, 3),
                    pixels[y1 : y1 + 2, x0:x1].reshape(-1, 3),
                    pixels[y0:y1, max(0, x0 - 2) : x0].reshape(-1, 3),
                    pixels[y0:y1, x1 : x1 + 2].reshape(-1, 3),
                ]
            )
            surroundings = np.median(ring, axis=0)
            contrast = np.abs(box - surroundings).sum(-1)
            assert (contrast > 60).mean() >= 0.3, f"{item['image']}: {obj} hardly differs from its surroundings"
            assert (np.abs(box - without[y0:y1, x0:x1]).sum(-1) > 40).mean() >= 0.3
        assert not (changed & ~inside).any(), "drawing objects must not change pixels outside their boxes"


def test_answers_are_balanced_and_classes_all_appear():
    answers: dict[str, Counter] = {t: Counter() for t in ("count", "existence", "colour", "position", "scene")}
    for index in range(300):
        rng = np.random.default_rng(np.random.SeedSequence([11, 1, index]))
        scene = make_scene(rng, size=SIZE)
        for qa in ask_questions(scene, rng, count=3):
            if qa.question_type in answers:
                answers[qa.question_type][qa.answer] += 1
    existence = answers["existence"]
    assert min(existence["yes"], existence["no"]) >= 0.35 * sum(existence.values()), existence
    assert len(answers["count"]) >= 5 and answers["count"].most_common(1)[0][1] < 0.4 * sum(answers["count"].values())
    assert len(answers["colour"]) == 5
    assert set(answers["position"]) == {"top left", "top right", "bottom left", "bottom right"}
    assert set(answers["scene"]) == set(SCENE_CLASSES)


def test_scene_classes_render_at_other_sizes_with_scaled_objects():
    for scene_class in SCENE_CLASSES:
        scene = make_scene(np.random.default_rng(5), size=448, scene_class=scene_class)
        assert render_scene(scene).shape == (448, 448, 3)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert (x1 - x0) * (y1 - y0) * (GLOBAL_SIZE / 448) ** 2 < GLOBAL_PATCH**2 / 4


def test_complete_dataset_is_reused_and_changed_settings_regenerate(dataset, tmp_path):
    before = {path: path.stat().st_mtime_ns for path in dataset.rglob("*")}
    summary = generate(dataset, n_images=N_IMAGES, seed=7, size=SIZE)
    assert summary["reused"] is True and summary["n_images"] == N_IMAGES
    assert {path: path.stat().st_mtime_ns for path in dataset.rglob("*")} == before

    folder = tmp_path / "regen"
    generate(folder, n_images=6, seed=1)
    (folder / "images" / "000003.png").unlink()
    assert generate(folder, n_images=6, seed=1)["reused"] is False, "an incomplete dataset is regenerated"
    assert (folder / "images" / "000003.png").is_file()
    summary = generate(folder, n_images=5, seed=1)
    assert summary["reused"] is False and len(list((folder / "images").iterdir())) == 5
    assert set(load_scenes(folder)) == {f"images/{i:06d}.png" for i in range(5)}
    assert not [path for path in tmp_path.iterdir() if ".partial-" in path.name], "staging folders are cleaned up"


def test_refuses_foreign_folders_and_bad_settings(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="foreign"):
        generate(foreign, n_images=3, seed=0)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="splits"):
        generate(tmp_path / "a", n_images=3, seed=0, splits=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path / "b", n_images=3, seed=0, size=32)
    with pytest.raises(ValueError, match="n_images"):
        generate(tmp_path / "c", n_images=0, seed=0)
    with pytest.raises(ValueError, match=r"objects\[0\]\.colour"):
        Scene.from_dict(
            {
                "scene_class": "river",
                "size": 224,
                "terrain": "grass",
                "texture_seed": 0,
                "structures": [],
                "objects": [{"kind": "ship", "colour": "purple", "bbox": [0, 0, 5, 9]}],
            }
        )


def test_cli_writes_the_files(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(out), "--n", "6", "--seed", "3", "--size", "224", "--splits", "0.5,0.3,0.2"]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    for name in ("train.json", "val.json", "test.json", "scenes.json", "meta.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"]["images"] == {"train": 3, "val": 2, "test": 1}
    assert meta["splits"] == [0.5, 0.3, 0.2] and meta["seed"] == 3
    assert sorted(path.name for path in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    assert main([str(out), "--n", "6", "--seed", "3", "--splits", "0.5,0.3,0.2"]) == 0
    assert "reused" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--n", "2", "--splits", "0.5,0.5"])


def test_object_scale_shrinks_only_the_small_objects(tmp_path):
    from rsfuse.synthetic.scene import OBJECT_SIZES

    half = tmp_path / "half"
    meta = generate(half, n_images=6, seed=2, object_scale=0.5, workers=1)
    assert meta["object_scale"] == 0.5
    assert meta["object_sizes_drawn"] == {kind: [max(1, round(side * 0.5)) for side in sides]
                                          for kind, sides in OBJECT_SIZES.items()}
    full = tmp_path / "full"
    generate(full, n_images=6, seed=2, workers=1)
    half_scenes, full_scenes = load_scenes(half), load_scenes(full)
    assert sum(len(scene.objects) for scene in half_scenes.values()) > 0
    for image, scene in half_scenes.items():
        assert scene.structures == full_scenes[image].structures, "only the objects change"
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert sorted((x1 - x0, y1 - y0)) == sorted(meta["object_sizes_drawn"][obj.kind]), obj
    assert generate(half, n_images=6, seed=2, object_scale=0.5)["reused"] is True
    assert generate(half, n_images=6, seed=2)["reused"] is False, "another object scale is another dataset"
    for bad in (0, -1.0, 5.0, True, "0.5"):
        with pytest.raises(ValueError, match="object_scale"):
            generate(tmp_path / "bad", n_images=3, seed=0, object_scale=bad)


def test_datasets_written_before_object_scale_are_reused(dataset):
    meta_path = dataset / "meta.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    del meta["object_scale"]
    try:
        meta_path.write_text(json.dumps(meta))
        assert generate(dataset, n_images=N_IMAGES, seed=7, size=SIZE)["reused"] is True
    finally:
        meta_path.write_text(original)


def test_cli_object_scale(tmp_path):
    out = tmp_path / "cli"
    assert main([str(out), "--n", "4", "--seed", "1", "--object-scale", "0.5", "--workers", "1"]) == 0
    assert json.loads((out / "meta.json").read_text())["object_scale"] == 0.5


# ---------------------------------------------------------------------------------------------------- the eval task


def test_synthetic_reader(tmp_path):
    path = write_synthetic_benchmark(tmp_path)
    records = synthetic(path)
    assert records[0]["image_path"] == tmp_path / "synthetic" / "img_000.png"
    assert records[0]["prompt"] == "How many red squares are there?"
    assert records[1]["prompt"] == "What colour is the circle?"
    assert records[1]["answer"] == "blue"  # from the gpt turn when no answer field
    assert (records[0]["type"], records[0]["small_object"]) == ("count", True)
    scores = synthetic_scores([{**record, "prediction": record["answer"]} for record in records])
    assert scores["avg"]["exact_accuracy"] == 1.0


def test_synthetic_task_is_registered_for_evaluation():
    assert get_task("synthetic").protocols == ("synthetic",)


def test_cli_rerun_with_other_settings_keeps_the_users_files(tmp_path, capsys):
    """Issue 32, defect 5: a second ``rsfuse synth D`` with other settings replaces only what the first one wrote."""
    out = tmp_path / "D"
    assert main([str(out), "--n", "4", "--seed", "1", "--size", "112"]) == 0
    (out / "my_annotations.json").write_text('{"mine": true}')
    (out / "images" / "my_extra.png").write_bytes(b"user bytes")
    assert main([str(out), "--n", "2", "--seed", "2", "--size", "112"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert (out / "my_annotations.json").read_text() == '{"mine": true}'
    assert (out / "images" / "my_extra.png").read_bytes() == b"user bytes"
    assert sorted(path.name for path in (out / "images").iterdir()) == ["000000.png", "000001.png", "my_extra.png"]
    assert json.loads((out / "meta.json").read_text())["seed"] == 2
    assert set(load_scenes(out)) == {"images/000000.png", "images/000001.png"}
    assert generate(out, n_images=2, seed=2, size=112)["reused"] is True
    assert not [path for path in tmp_path.iterdir() if ".partial-" in path.name]

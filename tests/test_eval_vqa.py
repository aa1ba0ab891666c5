"""VRSBench official / lenient scoring with the judge hook and undecided bounds; RSVQA-LR; synthetic; markdown."""

import pytest

from rsfuse.eval import (
    VRSBENCH_REFERENCE_TYPE_ALIASES,
    metrics_to_markdown,
    rsvqa_lr_scores,
    synthetic_scores,
    vrsbench_official_decision,
    vrsbench_vqa_score,
)


@pytest.mark.parametrize(
    ("answer", "prediction", "expected"),
    [
        ("no", "north", False),  # not contained as a word; yes/no needs exact match
        ("no", "No.", True),  # contained
        ("yes", "Yes, there is a harbor.", True),  # contained as a word
        ("2", "12", False),  # number 0-99 not contained as a word -> exact -> wrong
        ("2", "There are 2 cars", True),
        ("150", "about 150", True),
        ("150", "about 15", None),  # numbers >= 100 are open-ended
        ("white", "The ship is white.", True),
        ("white", "gray", None),  # open-ended -> judge
        ("white", "", False),
    ],
)
def test_official_decision_word_boundary(answer, prediction, expected):
    assert vrsbench_official_decision(answer, prediction) is expected


def test_substring_containment_reproduces_reference_quirks():
    assert vrsbench_official_decision("no", "north", containment="substring") is True
    assert vrsbench_official_decision("2", "12", containment="substring") is True
    with pytest.raises(ValueError, match="containment"):
        vrsbench_official_decision("a", "b", containment="fuzzy")


RECORDS = [
    {"type": "object existence", "question": "Is there a harbor?", "answer": "no", "prediction": "north"},
    {"type": "object existence", "question": "Is there a road?", "answer": "yes", "prediction": "Yes."},
    {"type": "object quantity", "question": "How many cars?", "answer": "2", "prediction": "12"},
    {"type": "object color", "question": "Ship colour?", "answer": "white", "prediction": "gray"},
    {"type": "object color", "question": "Roof colour?", "answer": "red", "prediction": "crimson"},
    {"type": "object color", "question": "Car colour?", "answer": "blue", "prediction": "a blue car"},
]


def test_official_without_judge_reports_undecided_bounds():
    scores = vrsbench_vqa_score(RECORDS)
    per_type = scores["per_type"]
    assert per_type["object existence"]["accuracy"] == pytest.approx(0.5)
    assert per_type["object quantity"]["accuracy"] == 0.0
    color = per_type["object color"]
    assert (color["correct"], color["undecided"], color["total"]) == (1, 2, 3)
    assert color["accuracy"] is None
    assert color["lower"] == pytest.approx(1 / 3) and color["upper"] == pytest.approx(1.0)
    assert scores["undecided"] == 2
    assert scores["avg"] is None
    assert scores["avg_lower"] == pytest.approx((0.5 + 0.0 + 1 / 3) / 3)
    assert scores["avg_upper"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert "no judge" in scores["protocol"]


def test_official_with_judge_calls_it_only_for_open_answers():
    calls = []

    def judge(question, answer, prediction):
        calls.append((question, answer, prediction))
        return prediction == "crimson"

    scores = vrsbench_vqa_score(RECORDS, judge=judge)
    assert calls == [("Ship colour?", "white", "gray"), ("Roof colour?", "red", "crimson")]
    assert scores["undecided"] == 0 and scores["judged"] == 2
    assert scores["per_type"]["object color"]["accuracy"] == pytest.approx(2 / 3)
    assert scores["avg"] == pytest.approx((0.5 + 0.0 + 2 / 3) / 3)
    assert "judge" in scores["protocol"]


def test_lenient_protocol_is_labelled_and_more_permissive():
    scores = vrsbench_vqa_score(RECORDS, protocol="lenient")
    assert scores["protocol"].startswith("vrsbench-lenient")
    assert scores["undecided"] == 0
    # The authors' raw substring test accepts "2" inside "12" and "no" inside "north": this is why it is labelled.
    assert scores["per_type"]["object quantity"]["accuracy"] == 1.0
    assert scores["per_type"]["object existence"]["accuracy"] == 1.0
    assert scores["per_type"]["object color"]["accuracy"] == pytest.approx(1 / 3)


def test_type_aliases_merge_types_before_averaging():
    records = [
        {"type": "image", "answer": "urban", "prediction": "urban"},
        {"type": "rural or urban", "answer": "rural", "prediction": "urban"},
        {"type": "scene type", "answer": "airport", "prediction": "an airport"},
        {"type": "scene type", "answer": "harbor", "prediction": "harbor"},
    ]
    never = lambda question, answer, prediction: False  # noqa: E731
    merged = vrsbench_vqa_score(records, judge=never, type_aliases=VRSBENCH_REFERENCE_TYPE_ALIASES)
    assert list(merged["per_type"]) == ["scene type"]
    assert merged["avg"] == pytest.approx(3 / 4)
    separate = vrsbench_vqa_score(records, judge=never)
    assert separate["avg"] == pytest.approx((1 + 0 + 1) / 3)


def test_vrsbench_errors_name_the_problem():
    with pytest.raises(KeyError, match="record 0 .*type"):
        vrsbench_vqa_score([{"answer": "a", "prediction": "a"}])
    with pytest.raises(ValueError, match="protocol"):
        vrsbench_vqa_score(RECORDS, protocol="gpt")


def test_rsvqa_lr_scores_per_type_and_average():
    records = [
        {"type": "presence", "answer": "yes", "prediction": "Yes"},
        {"type": "presence", "answer": "no", "prediction": "yes"},
        {"type": "comp", "answer": "no", "prediction": "no."},  # contains fails ("no." not in "no"), exact passes
        {"type": "rural_urban", "answer": "rural", "prediction": "rural"},
        {"type": "count", "answer": "0", "prediction": "0"},  # skipped by default
    ]
    scores = rsvqa_lr_scores(records)
    assert scores["skipped"] == 1 and scores["total"] == 4
    assert scores["per_type"]["presence"]["contains_accuracy"] == pytest.approx(0.5)
    assert scores["per_type"]["comparison"]["contains_accuracy"] == 0.0
    assert scores["per_type"]["comparison"]["exact_accuracy"] == 1.0
    assert scores["avg"]["contains_accuracy"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert scores["avg"]["exact_accuracy"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    with_count = rsvqa_lr_scores(records, types=("presence", "comparison", "rural_urban", "count"))
    assert with_count["skipped"] == 0 and "count" in with_count["per_type"]


def test_synthetic_scores_split_by_object_size():
    records = [
        {"type": "count", "answer": "3", "prediction": "3", "small_object": True},
        {"type": "count", "answer": "2", "prediction": "4", "small_object": False},
        {"type": "color", "answer": "blue", "prediction": "Blue.", "small_object": True},
    ]
    scores = synthetic_scores(records)
    assert scores["per_type"]["count"]["exact_accuracy"] == pytest.approx(0.5)
    assert scores["per_type"]["color"]["exact_accuracy"] == 1.0
    assert scores["per_type"]["color"]["contains_accuracy"] == 0.0
    assert scores["by_object_size"]["small"]["exact_accuracy"] == 1.0
    assert scores["by_object_size"]["large"]["exact_accuracy"] == 0.0
    assert scores["avg"]["exact_accuracy"] == pytest.approx(0.75)


def test_markdown_names_the_protocol_on_every_row():
    scores = vrsbench_vqa_score(RECORDS)
    table = metrics_to_markdown(scores, title="VRSBench VQA")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    assert rows and all(scores["protocol"] in row for row in rows)
    assert "| avg | n/a |" in table
    assert "| per_type / object color / lower | 0.3333 |" in table
    assert table.startswith("### VRSBench VQA")
    with pytest.raises(KeyError, match="protocol"):
        metrics_to_markdown({"acc": 1.0})

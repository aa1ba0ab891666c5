"""Answer matchers: RSEvalKit contains rule, exact match, the authors' lenient matcher, classification scores."""

import pytest

from rsfuse.eval import classification_scores, contains_match, exact_match, lenient_match
from rsfuse.eval.text import contains_phrase, normalize_answer, ptb_like_tokenize


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [
        ("Dense Residential", "dense residential", True),  # case and spaces
        ("denseresidential", "dense residential", True),  # spaces removed on both sides
        ("residential", "dense residential", True),  # prediction contained in the answer
        ("dense residential area", "dense residential", False),  # answer inside prediction is not the rule
        ("", "airport", False),  # empty prediction: RSEvalKit would say True
        ("   \n", "airport", False),
        ("Airport.", "airport", False),  # punctuation is not stripped by this rule
    ],
)
def test_contains_match(pred, answer, expected):
    assert contains_match(pred, answer) is expected


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [
        ("Yes.", "yes", True),
        ("  YES  ", "Yes", True),
        ('"no!"', "no", True),
        ("yes, there is", "yes", False),
        ("north", "no", False),
        ("", "", False),  # empty prediction is never correct
        ("3", "three", False),  # exact match does not read number words
        ("tennis  court", "Tennis court", True),  # whitespace collapsed
    ],
)
def test_exact_match(pred, answer, expected):
    assert exact_match(pred, answer) is expected


def test_normalisation_helpers():
    assert normalize_answer("  The Answer is: Yes?! ") == "the answer is: yes"
    assert contains_phrase("north of the river", "no") is False
    assert contains_phrase("no, there is none", "no") is True
    assert contains_phrase("there are 12 cars", "2") is False
    assert contains_phrase("anything", "") is False
    assert ptb_like_tokenize("A plane, parked. It's well-known!") == "a plane parked it 's well-known"


@pytest.mark.parametrize(
    ("pred", "answer", "kind", "expected"),
    [
        ("There are three cars.", "3", "object quantity", True),  # number words
        ("3", "three", None, True),
        ("4", "three", None, False),
        ("True", "yes", "object existence", True),  # yes/no synonyms
        ("correct", "yes", None, True),
        ("absent", "no", None, True),
        ("yes", "no", None, False),
        ("football field", "field", None, True),  # substring either way
        ("field", "football field", None, True),
        ("the ship is dark gray", "light gray", "object color", True),  # colour modifiers ignored
        ("top left corner", "top right", "object position", True),  # shared token for open types
        ("top left corner", "top right", "object quantity", False),
        ("", "yes", None, False),  # empty prediction rejected (the authors' code accepts it)
        ("yes", "", None, False),
    ],
)
def test_lenient_match(pred, answer, kind, expected):
    assert lenient_match(pred, answer, kind) is expected


def test_classification_scores_counts_both_rules_and_empties():
    records = [
        {"prediction": "Airport", "answer": "airport"},  # both
        {"prediction": "residential", "answer": "dense residential"},  # contains only
        {"prediction": "", "answer": "forest"},  # empty
        {"prediction": "beach.", "answer": "beach"},  # exact only (punctuation)
    ]
    scores = classification_scores(records)
    assert scores["contains_accuracy"] == pytest.approx(2 / 4)
    assert scores["exact_accuracy"] == pytest.approx(2 / 4)
    assert scores["empty_predictions"] == 1
    assert scores["total"] == 4
    assert "RSEvalKit" in scores["protocol"]


def test_classification_scores_names_missing_fields():
    with pytest.raises(KeyError, match=r"record 1 .*prediction"):
        classification_scores([{"prediction": "a", "answer": "a"}, {"answer": "b"}])
    with pytest.raises(ValueError, match="no records"):
        classification_scores([])

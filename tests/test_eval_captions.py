"""Caption metrics: hand-computed BLEU / ROUGE-L / METEOR, CIDEr and the coco protocol against pycocoevalcap."""

import math

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

import rsfuse.eval.captions as captions
from rsfuse.eval import CAPTION_METRICS, caption_scores, metrics_to_markdown

BETA = 1.2  # pycocoevalcap Rouge


def coco_rouge(precision, recall):
    return (1 + BETA**2) * precision * recall / (recall + BETA**2 * precision)


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setattr(captions, "java_available", lambda: (False, "java disabled for this test"))


def test_bleu_by_hand_on_one_sentence(no_java):
    # pred n-gram precisions vs "the cat is on the mat": 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3; BP = 1.
    with pytest.warns(RuntimeWarning, match="Java unavailable"):
        scores = caption_scores({"a": "The cat sat on the mat."}, {"a": ["the cat is on the mat"]})
    assert scores["BLEU-1"] == pytest.approx(5 / 6, abs=1e-8)
    assert scores["BLEU-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-8)
    assert scores["BLEU-3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-8)
    assert scores["BLEU-4"] < 1e-3  # no 4-gram matches (pycocoevalcap's 1e-15 floor keeps it above 0)
    assert scores["METEOR"] is None and "Java" in scores["unavailable"]["METEOR"]
    assert "fallback" in scores["tokenizer"]


def test_bleu_brevity_penalty_and_rouge_lcs_by_hand(no_java):
    with pytest.warns(RuntimeWarning):
        scores = caption_scores(
            {"short": "the cat sat on the mat", "lcs": "a b c d e"},
            {"short": ["the cat sat on the mat today"], "lcs": ["a x c y e"]},
        )
    # Corpus BLEU over both: matched n-grams (6+3, 5+0, 4+0, 3+0) of (6+5, 5+4, 4+3, 3+2); lengths 11 vs 12.
    brevity = math.exp(1 - 12 / 11)
    assert scores["BLEU-1"] == pytest.approx(brevity * 9 / 11, abs=1e-8)
    assert scores["BLEU-2"] == pytest.approx(brevity * math.sqrt(9 / 11 * 5 / 9), abs=1e-8)
    # ROUGE-L: "short" LCS 6 (P = 1, R = 6/7); "lcs" LCS "a c e" = 3 (P = R = 3/5).
    assert scores["ROUGE-L"] == pytest.approx((coco_rouge(1.0, 6 / 7) + coco_rouge(3 / 5, 3 / 5)) / 2, abs=1e-9)


def test_rouge_takes_best_precision_and_recall_over_references(no_java):
    with pytest.warns(RuntimeWarning):
        scores = caption_scores({"a": "a b c"}, {"a": ["a b c d e f", "a z"]})
    # ref 1: P = 3/3, R = 3/6; ref 2: P = 1/3, R = 1/2 -> best P = 1, best R = 1/2.
    assert scores["ROUGE-L"] == pytest.approx(coco_rouge(1.0, 0.5), abs=1e-9)


def test_cider_matches_pycocoevalcap_on_the_same_tokens(no_java):
    preds = {"1": "a plane parked at the airport", "2": "green trees near a road", "3": "a white ship"}
    refs = {
        "1": ["an airplane is parked at the airport", "a plane on the apron"],
        "2": ["many green trees beside a road", "trees and a road"],
        "3": ["a large ship in the harbor"],
    }
    with pytest.warns(RuntimeWarning):
        scores = caption_scores(preds, refs)
    expected, _ = Cider().compute_score(refs, {key: [value] for key, value in preds.items()})
    assert scores["CIDEr"] == pytest.approx(expected, abs=1e-12)
    assert scores["CIDEr"] > 0


@pytest.mark.slow
def test_coco_protocol_equals_pycocoevalcap_called_directly():
    preds = {"a": "A plane, parked at the airport.", "b": "Green trees near a road", "c": ""}
    refs = {
        "a": ["An airplane is parked at the airport.", "A white plane on the apron."],
        "b": ["Many green trees beside a road.", "Trees and a road."],
        "c": ["A dense residential area."],
    }
    scores = caption_scores(preds, refs, protocol="coco")  # Java is part of the dev environment
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: [{"caption": text} for text in values] for key, values in refs.items()})
    res = tokenizer.tokenize({key: [{"caption": text}] for key, text in preds.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"BLEU-{n}": bleu[n - 1] for n in range(1, 5)}
    # pycocoevalcap's own Meteor object; caption_scores keeps one per process (a METEOR JVM loads for seconds).
    meteor = captions.meteor_scorer()
    assert isinstance(meteor, Meteor)
    expected["METEOR"] = meteor.compute_score(gts, res)[0]
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    for name in CAPTION_METRICS:
        assert scores[name] == pytest.approx(expected[name], abs=1e-12), name
    assert scores["protocol"] == "coco" and scores["unavailable"] == {}
    assert scores["tokenizer"].startswith("Stanford PTB")
    assert set(scores["notes"]) == set(CAPTION_METRICS)


def test_compat_bleu_and_rouge_by_hand(monkeypatch):
    monkeypatch.setattr(captions, "wordnet_available", lambda: (False, "WordNet missing for this test"))
    scores = caption_scores({"a": "the cat sat on the mat"}, {"a": ["the cat sat on the mat today"]}, protocol="compat")
    # sacrebleu: all n-gram precisions 100, BP = exp(1 - 7/6); divided by 100.
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(math.exp(1 - 7 / 6), abs=1e-9)
    # rouge_score F1 with LCS 6: P = 1, R = 6/7 -> 12/13.
    assert scores["ROUGE-L"] == pytest.approx(12 / 13, abs=1e-9)
    assert scores["METEOR"] is None
    assert "WordNet" in scores["unavailable"]["METEOR"]
    assert scores["protocol"] == "compat"
    table = metrics_to_markdown(scores)
    assert "| METEOR | n/a (NLTK METEOR needs WordNet" in table
    assert "| BLEU-4 | 0.8465 | compat; tokenizer: none" in table


class NoSynonyms:
    """A WordNet stand-in without synonyms, so NLTK METEOR only uses exact and stem matches."""

    def synsets(self, *args, **kwargs):
        return []


def test_compat_meteor_by_hand_with_exact_matches(monkeypatch):
    monkeypatch.setattr(captions, "wordnet_available", lambda: (True, ""))
    monkeypatch.setattr(captions, "_load_wordnet", lambda: NoSynonyms())
    scores = caption_scores(
        {"a": "the cat sat on the mat", "b": ""},
        {"a": ["the cat sat on the mat today"], "b": ["anything"]},
        protocol="compat",
    )
    # 6 matches in one chunk; P = 1, R = 6/7, fmean = P R / (0.9 P + 0.1 R), penalty = 0.5 (1/6)^3; "b" scores 0.
    precision, recall = 1.0, 6 / 7
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    expected_a = fmean * (1 - 0.5 * (1 / 6) ** 3)
    assert scores["METEOR"] == pytest.approx(expected_a / 2, abs=1e-9)
    assert scores["unavailable"] == {}


def test_compat_cider_is_pycocoevalcap_on_raw_strings(monkeypatch):
    monkeypatch.setattr(captions, "wordnet_available", lambda: (False, "off"))
    preds = {"1": "A plane parked.", "2": "Green trees near a road", "3": "a white ship"}
    refs = {"1": ["A plane parked.", "A plane on the apron"], "2": ["Trees and a road"], "3": ["a ship"]}
    scores = caption_scores(preds, refs, protocol="compat")
    expected, _ = Cider().compute_score(refs, {key: [value] for key, value in preds.items()})
    assert scores["CIDEr"] == pytest.approx(expected, abs=1e-12)


def test_predictions_are_not_rewritten(no_java):
    preds = {"a": "a plane"}
    refs = {"a": ["a plane at the airport"]}
    with pytest.warns(RuntimeWarning):
        caption_scores(preds, refs)
    assert preds == {"a": "a plane"} and refs == {"a": ["a plane at the airport"]}


def test_mismatched_ids_and_bad_inputs_raise():
    with pytest.raises(KeyError, match=r"without references: \['x'\].*without predictions: \['y'\]"):
        caption_scores({"x": "a", "z": "b"}, {"y": ["a"], "z": ["b"]})
    with pytest.raises(ValueError, match=r"refs\['a'\] must be a non-empty list"):
        caption_scores({"a": "x"}, {"a": "x"})
    with pytest.raises(ValueError, match="protocol"):
        caption_scores({"a": "x"}, {"a": ["x"]}, protocol="spice")

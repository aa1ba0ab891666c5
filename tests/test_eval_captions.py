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


# ----- CIDEr-D and METEOR worked by hand -------------------------------------------------------------------------
def cider_d_by_hand(preds: dict[str, str], refs: dict[str, list[str]], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D as pycocoevalcap's ``CiderScorer`` defines it, written out with plain Python on whitespace tokens.

    For every image: n-gram counts (n = 1..4) of the candidate and of each reference; weight of an n-gram =
    count × idf, idf = log(#images) − log(max(1, #images whose references hold the n-gram)); per n the clipped cosine
    Σ_g min(c_g, r_g)·r_g / (|c|·|r|) (0 when either vector is empty), times the length penalty
    exp(−(ℓ_c − ℓ_r)² / (2σ²)) with ℓ = number of *bigrams* (pycocoevalcap counts length on n = 2); mean over n,
    mean over the references, × 10; CIDEr = mean over images."""

    def grams(text: str) -> dict[tuple[str, ...], int]:
        words = text.split()
        counts: dict[tuple[str, ...], int] = {}
        for k in range(1, n + 1):
            for i in range(len(words) - k + 1):
                gram = tuple(words[i : i + k])
                counts[gram] = counts.get(gram, 0) + 1
        return counts

    images = list(preds)
    frequency: dict[tuple[str, ...], int] = {}
    for image in images:
        for gram in {g for ref in refs[image] for g in grams(ref)}:
            frequency[gram] = frequency.get(gram, 0) + 1
    log_images = math.log(len(images))

    def vector(text: str):
        counts = grams(text)
        weights = [{} for _ in range(n)]
        for gram, count in counts.items():
            weights[len(gram) - 1][gram] = count * (log_images - math.log(max(1, frequency.get(gram, 0))))
        norms = [math.sqrt(sum(w * w for w in level.values())) for level in weights]
        length = sum(count for gram, count in counts.items() if len(gram) == 2)
        return weights, norms, length

    total = 0.0
    for image in images:
        cand, cand_norms, cand_length = vector(preds[image])
        per_ref = []
        for ref in refs[image]:
            other, other_norms, other_length = vector(ref)
            penalty = math.exp(-((cand_length - other_length) ** 2) / (2 * sigma**2))
            levels = []
            for k in range(n):
                dot = sum(min(w, other[k].get(g, 0.0)) * other[k].get(g, 0.0) for g, w in cand[k].items())
                if cand_norms[k] and other_norms[k]:
                    dot /= cand_norms[k] * other_norms[k]
                levels.append(dot * penalty)
            per_ref.append(sum(levels) / n)
        total += 10.0 * sum(per_ref) / len(per_ref)
    return total / len(images)


CIDER_CASES = {
    # Every n-gram belongs to one image only (idf = log 2 everywhere, which cancels in the cosine); identical
    # 3-word captions: cosine 1 for n = 1, 2, 3, no 4-grams (0): 10 × 3/4 per image.
    "identical": ({"a": "a b c", "b": "d e f"}, {"a": ["a b c"], "b": ["d e f"]}, 7.5),
    # "a" is in both images' references: idf 0, so the shared word earns nothing; image "x" matches nothing else
    # (0), image "y" is identical (cosine 1 for n = 1, 2): (0 + 10 × 2/4) / 2.
    "idf": ({"x": "a c", "y": "a d"}, {"x": ["a b"], "y": ["a d"]}, 2.5),
    # Length penalty and clipping. Image "p": "a b c" vs "a b c d": cosines √3/2, √(2/3), 1/√2, 0; bigram lengths 2
    # vs 3. Image "q": "e e e f" vs "e e f", counts clipped to the reference's: unigrams (min(3,2)·2 + 1)/(√10·√5),
    # bigrams (min(2,1)·1 + 1)/(√5·√2), trigrams 1/√2, 4-grams 0; lengths 3 vs 2. Both penalties exp(−1/72).
    "penalty-and-clipping": (
        {"p": "a b c", "q": "e e e f"},
        {"p": ["a b c d"], "q": ["e e f"]},
        10 * math.exp(-1 / 72) * (
            (math.sqrt(3) / 2 + math.sqrt(2 / 3) + 1 / math.sqrt(2)) / 4
            + (5 / math.sqrt(50) + 2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
        ) / 2,
    ),
}


@pytest.mark.parametrize("case", list(CIDER_CASES))
def test_cider_d_by_hand_closed_form(no_java, case):
    preds, refs, expected = CIDER_CASES[case]
    assert cider_d_by_hand(preds, refs) == pytest.approx(expected, abs=1e-12)
    with pytest.warns(RuntimeWarning):
        scores = caption_scores(preds, refs)
    assert scores["CIDEr"] == pytest.approx(expected, abs=1e-9)


RICH_PREDS = {
    "1": "a plane parked at the airport near a plane",
    "2": "green trees near a road",
    "3": "a white ship in the harbor",
    "4": "a road",
}
RICH_REFS = {
    "1": ["an airplane is parked at the airport", "a plane on the apron near the terminal", "two planes"],
    "2": ["many green trees beside a road", "trees and a road", "a road through a green forest"],
    "3": ["a large ship in the harbor", "a white boat docked in the harbor"],
    "4": ["a long straight road across the desert"],
}


def test_cider_d_by_hand_on_several_references_and_repeated_words(no_java):
    with pytest.warns(RuntimeWarning):
        scores = caption_scores(RICH_PREDS, RICH_REFS)
    expected = cider_d_by_hand(RICH_PREDS, RICH_REFS)
    assert 0 < expected < 10
    assert scores["CIDEr"] == pytest.approx(expected, abs=1e-9)
    # One image alone: log(1) − log(1) = 0 for every n-gram, so CIDEr-D is 0 whatever the captions.
    with pytest.warns(RuntimeWarning):
        assert caption_scores({"a": "a b c"}, {"a": ["a b c"]})["CIDEr"] == 0.0


@pytest.mark.slow
def test_coco_protocol_cider_by_hand_after_ptb_tokenization():
    """With Java: the Stanford PTB tokenizer lower-cases and drops punctuation; CIDEr-D is then worked by hand on
    the tokens written out here (not produced by any tokenizer)."""
    preds = {"1": "A plane, parked at the airport.", "2": "Green trees near a road!", "3": "A white ship."}
    refs = {
        "1": ["An airplane is parked at the airport.", "A plane on the apron."],
        "2": ["Many green trees beside a road.", "Trees and a road."],
        "3": ["A large ship in the harbor.", "A WHITE ship, docked."],
    }
    tokens_preds = {"1": "a plane parked at the airport", "2": "green trees near a road", "3": "a white ship"}
    tokens_refs = {
        "1": ["an airplane is parked at the airport", "a plane on the apron"],
        "2": ["many green trees beside a road", "trees and a road"],
        "3": ["a large ship in the harbor", "a white ship docked"],
    }
    scores = caption_scores(preds, refs, protocol="coco")
    assert scores["tokenizer"].startswith("Stanford PTB")
    assert scores["CIDEr"] == pytest.approx(cider_d_by_hand(tokens_preds, tokens_refs), abs=1e-9)
    assert scores["CIDEr"] != pytest.approx(cider_d_by_hand(preds, refs), abs=1e-3)  # tokenization matters here


# METEOR 1.5 (``-l en -norm``, the default task's parameters alpha 0.85, beta 0.2, gamma 0.6, delta 0.75): with
# exact matches only and words of one class (here all content words, so delta cancels),
# P = m / |hyp|, R = m / |ref|, Fmean = P·R / (alpha·P + (1 − alpha)·R), Pen = gamma·(chunks / m)^beta,
# score = Fmean·(1 − Pen); a perfect match (every word, one chunk) scores 1. The corpus score pycocoevalcap
# returns aggregates the statistics (matches, lengths, chunks) over segments before applying the formula, and a
# perfectly matched segment adds no chunk to the sum (MeteorStats.addStats in meteor-1.5.jar, read with javap:
# its one chunk is skipped when every word of both sides matched), in line with its own fragmentation of 0.
ALPHA, BETA_M, GAMMA = 0.85, 0.2, 0.6


def meteor_by_hand(matches: int, hyp: int, ref: int, chunks: int) -> float:
    precision, recall = matches / hyp, matches / ref
    fmean = precision * recall / (ALPHA * precision + (1 - ALPHA) * recall)
    return fmean * (1 - GAMMA * (chunks / matches) ** BETA_M)


@pytest.mark.slow
def test_coco_meteor_by_hand():
    has_java, reason = captions.java_available()
    if not has_java:
        pytest.fail(f"Java is part of the dev environment: {reason}")
    one = caption_scores({"a": "Large ship harbor."}, {"a": ["large ship harbor docked"]}, protocol="coco")
    # 3 exact matches in 1 chunk, hyp 3 words, ref 4.
    assert one["METEOR"] == pytest.approx(meteor_by_hand(3, 3, 4, 1), abs=1e-9)
    corpus = caption_scores(
        {"a": "large ship harbor", "b": "ship large harbor", "c": "ship harbor", "d": "qqzx vvyw"},
        {"a": ["large ship harbor docked"], "b": ["large ship harbor docked"], "c": ["ship harbor"],
         "d": ["large ship"]},
        protocol="coco",
    )
    # Summed over segments: matches 3 + 3 + 2 + 0, hyp 3 + 3 + 2 + 2, ref 4 + 4 + 2 + 2, chunks 1 + 3 + 0 + 0
    # ("ship large harbor" against "large ship harbor": no two neighbours keep their order, so 3 chunks; "c" is a
    # perfect match and adds none).
    assert corpus["METEOR"] == pytest.approx(meteor_by_hand(8, 10, 12, 4), abs=1e-9)
    alone = caption_scores({"b": "ship large harbor"}, {"b": ["large ship harbor docked"]}, protocol="coco")
    assert alone["METEOR"] == pytest.approx(meteor_by_hand(3, 3, 4, 3), abs=1e-9)
    exact = caption_scores({"a": "ship harbor"}, {"a": ["Ship harbor."]}, protocol="coco")
    assert exact["METEOR"] == pytest.approx(1.0, abs=1e-12)

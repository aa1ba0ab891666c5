"""Caption metrics under two named protocols, on pycocoevalcap's scale (fractions; CIDEr up to ~10).

``coco`` (the standard): pycocoevalcap's Stanford PTB tokenizer (Java) on predictions and references, then
``Bleu(4)`` (BLEU-1..4, corpus level, closest reference length), ``Meteor`` (METEOR 1.5 jar, Java), ``Rouge``
(ROUGE-L, beta 1.2, best precision/recall over references) and ``Cider`` (CIDEr-D as pycocoevalcap implements it,
document frequencies from the references of the evaluated set). Without Java, a warning is issued, METEOR is reported
as unavailable, and the other metrics are computed on a pure-Python PTB-like tokenization, labelled as such.

``compat`` (the MF-RSVLM authors' mix, ``scripts/evaluate_caption_benchmarks.py`` in ``Yunkaidang/RSVLM``):
BLEU-n from sacrebleu's corpus BLEU (13a tokenizer, ``max_ngram_order=n``; reference streams padded with each
image's last reference, as the authors do) divided by 100; METEOR from NLTK (whitespace tokens, averaged over images;
needs the WordNet corpus, which is never downloaded here: if it is missing METEOR is unavailable); CIDEr from
pycocoevalcap's ``Cider`` on the raw strings (no tokenizer, case kept, as the authors' code does); ROUGE-L F from
``rouge_score`` (Porter stemmer on, as the authors' code), best over references, averaged over images.
Difference from the authors' code: empty predictions score 0 for METEOR (the authors skip them).

Predictions are never rewritten with reference text. Every result carries ``protocol``, ``tokenizer``, per-metric
``notes``, ``unavailable`` (metric -> reason, empty when all were computed) and ``num_images``.
"""

import shutil
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

from rsfuse.eval.text import ptb_like_tokenize

__all__ = ["CAPTION_METRICS", "caption_scores", "java_available", "wordnet_available"]

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@lru_cache(maxsize=1)
def java_available() -> tuple[bool, str]:
    """Whether a working ``java`` is on PATH, with the reason when it is not."""
    java = shutil.which("java")
    if java is None:
        return False, "no 'java' executable on PATH"
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"'java -version' failed: {error}"
    if completed.returncode != 0:
        return False, f"'java -version' exited with {completed.returncode}"
    return True, ""


def wordnet_available() -> tuple[bool, str]:
    """Whether NLTK's WordNet corpus is installed locally (it is never downloaded at run time)."""
    try:
        import nltk
    except ImportError:
        return False, "nltk is not installed (pip install rsfuse[eval])"
    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(resource)
            return True, ""
        except LookupError:
            continue
    return False, "NLTK WordNet corpus not found locally (run nltk.download('wordnet') where network is allowed)"


@lru_cache(maxsize=1)
def meteor_scorer():
    """One pycocoevalcap ``Meteor`` (a METEOR 1.5 JVM, which takes seconds to load its paraphrase table), reused by
    every ``coco`` call in this process; scoring is stateless per call."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _load_wordnet():
    from nltk.corpus import wordnet

    return wordnet


def _check_inputs(preds: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> list[str]:
    missing_refs = sorted(set(preds) - set(refs), key=str)
    missing_preds = sorted(set(refs) - set(preds), key=str)
    if missing_refs or missing_preds:
        raise KeyError(
            "caption_scores: ids of preds and refs differ; "
            f"without references: {missing_refs[:10]}{' ...' if len(missing_refs) > 10 else ''}; "
            f"without predictions: {missing_preds[:10]}{' ...' if len(missing_preds) > 10 else ''}"
        )
    if not preds:
        raise ValueError("caption_scores: no predictions")
    ids = list(preds)
    for image_id in ids:
        references = refs[image_id]
        if isinstance(references, str) or not references:
            raise ValueError(f"caption_scores: refs[{image_id!r}] must be a non-empty list of strings")
        if not isinstance(preds[image_id], str):
            kind = type(preds[image_id]).__name__
            raise TypeError(f"caption_scores: preds[{image_id!r}] must be a string, got {kind}")
    return ids


def _pycoco_tokenize(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({key: [{"caption": text} for text in values] for key, values in texts.items()})
    # The wrapper drops trailing empty lines; an empty caption tokenizes to "".
    return {key: tokenized.get(key, [""] * len(values)) for key, values in texts.items()}


def _coco_scores(ids: list[str], preds: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    has_java, java_reason = java_available()
    raw_refs = {image_id: [str(text) for text in refs[image_id]] for image_id in ids}
    raw_preds = {image_id: [preds[image_id]] for image_id in ids}
    unavailable: dict[str, str] = {}
    if has_java:
        tokenizer = "Stanford PTB (pycocoevalcap, Java)"
        gts, res = _pycoco_tokenize(raw_refs), _pycoco_tokenize(raw_preds)
    else:
        tokenizer = "python-ptb-like fallback (Java missing; not the Stanford PTB tokenizer)"
        warnings.warn(
            f"caption_scores(protocol='coco'): Java unavailable ({java_reason}); METEOR cannot be computed and the "
            "other metrics use a pure-Python PTB-like tokenizer, so they are not exactly the coco protocol",
            RuntimeWarning,
            stacklevel=3,
        )
        gts = {key: [ptb_like_tokenize(text) for text in values] for key, values in raw_refs.items()}
        res = {key: [ptb_like_tokenize(text) for text in values] for key, values in raw_preds.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores: dict[str, Any] = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    if has_java:
        scores["METEOR"] = float(meteor_scorer().compute_score(gts, res)[0])
    else:
        scores["METEOR"] = None
        unavailable["METEOR"] = f"needs Java for meteor-1.5.jar: {java_reason}"
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    notes = {
        **{f"BLEU-{n}": f"pycocoevalcap Bleu(4), corpus BLEU-{n}, closest reference length" for n in range(1, 5)},
        "METEOR": "pycocoevalcap Meteor (METEOR 1.5 jar, -l en -norm), corpus score",
        "ROUGE-L": "pycocoevalcap Rouge: LCS-based F with beta=1.2, max over references, mean over images",
        "CIDEr": "pycocoevalcap Cider (CIDEr-D, sigma 6, idf from this set's references)",
    }
    return {**scores, "tokenizer": tokenizer, "notes": notes, "unavailable": unavailable}


def _compat_scores(ids: list[str], preds: Mapping[str, str], refs: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    predictions = [preds[image_id] for image_id in ids]
    references = [[str(text) for text in refs[image_id]] for image_id in ids]
    most_references = max(len(image_refs) for image_refs in references)
    streams = [[image_refs[min(k, len(image_refs) - 1)] for image_refs in references] for k in range(most_references)]
    scores: dict[str, Any] = {
        f"BLEU-{n}": BLEU(max_ngram_order=n).corpus_score(predictions, streams).score / 100.0 for n in range(1, 5)
    }
    unavailable: dict[str, str] = {}
    has_wordnet, wordnet_reason = wordnet_available()
    if has_wordnet:
        from nltk.translate.meteor_score import meteor_score

        wordnet = _load_wordnet()
        per_image = [
            float(meteor_score([ref.split() for ref in image_refs], prediction.split(), wordnet=wordnet))
            if prediction.split()
            else 0.0
            for prediction, image_refs in zip(predictions, references)
        ]
        scores["METEOR"] = sum(per_image) / len(per_image)
    else:
        scores["METEOR"] = None
        unavailable["METEOR"] = f"NLTK METEOR needs WordNet: {wordnet_reason}"
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best_rouge = [
        max(rouge.score(ref, prediction)["rougeL"].fmeasure for ref in image_refs)
        for prediction, image_refs in zip(predictions, references)
    ]
    scores["ROUGE-L"] = sum(best_rouge) / len(best_rouge)
    gts = {image_id: image_refs for image_id, image_refs in zip(ids, references)}
    res = {image_id: [prediction] for image_id, prediction in zip(ids, predictions)}
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    notes = {
        **{
            f"BLEU-{n}": f"sacrebleu corpus BLEU (13a, max_ngram_order={n}) / 100; "
            "reference streams padded with each image's last reference"
            for n in range(1, 5)
        },
        "METEOR": "NLTK meteor_score on whitespace tokens, max over references, mean over images; empty prediction = 0",
        "ROUGE-L": "rouge_score rougeL F-measure (Porter stemmer), best over references, mean over images",
        "CIDEr": "pycocoevalcap Cider on raw, untokenized strings (case kept, as the authors' code)",
    }
    return {**scores, "tokenizer": "none (raw strings; each library's own splitting)", "notes": notes,
            "unavailable": unavailable}


def caption_scores(
    preds: Mapping[str, str], refs: Mapping[str, Sequence[str]], protocol: Literal["coco", "compat"] = "coco"
) -> dict:
    """Caption metrics for ``preds[id] -> text`` against ``refs[id] -> [texts]`` under ``protocol``.

    Returns ``BLEU-1``..``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr`` (``None`` where unavailable, with the reason in
    ``unavailable``), ``protocol``, ``tokenizer``, ``notes``, ``unavailable``, ``num_images``.
    """
    ids = _check_inputs(preds, refs)
    if protocol == "coco":
        result = _coco_scores(ids, preds, refs)
    elif protocol == "compat":
        result = _compat_scores(ids, preds, refs)
    else:
        raise ValueError(f"caption_scores: protocol must be 'coco' or 'compat', got {protocol!r}")
    ordered = {name: result[name] for name in CAPTION_METRICS}
    return {
        **ordered,
        "protocol": protocol,
        "tokenizer": result["tokenizer"],
        "notes": result["notes"],
        "unavailable": result["unavailable"],
        "num_images": len(ids),
    }

"""Text normalisation shared by the answer matchers and the caption fallback tokenizer.

Every rule here is a documented choice, because small differences in normalisation move accuracies by points:

- ``normalize_answer``: lower-case, collapse whitespace, strip, drop trailing punctuation (``.``, ``!``, ``?``, ``,``,
  ``;``, ``:``) and surrounding quotes. Used by ``exact_match`` and by VRSBench's exact-match branch.
- ``squash_spaces``: RSEvalKit's rule for classification / RSVQA-LR: lower-case and remove *all* whitespace.
- ``contains_phrase``: word-boundary containment (``"no"`` is not inside ``"north"``, ``"2"`` is not inside ``"12"``).
- ``ptb_like_tokenize``: a pure-Python approximation of the Stanford PTB tokenizer as pycocoevalcap uses it
  (lower-case, punctuation split off and removed). Only for the no-Java fallback; it is labelled as such wherever used.
"""

import re

__all__ = [
    "NUMBER_WORDS",
    "PTB_PUNCTUATION",
    "contains_phrase",
    "normalize_answer",
    "ptb_like_tokenize",
    "squash_spaces",
    "word_tokens",
]

TRAILING_PUNCTUATION = ".!?,;:"
QUOTES = "\"'`"

NUMBER_WORDS: dict[str, int] = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}

# Tokens pycocoevalcap's PTBTokenizer wrapper removes after tokenizing (its PUNCTUATIONS list).
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")
# Split off punctuation runs and English clitics the way PTB does ("it's" -> "it 's", "don't" -> "do n't").
_PTB_TOKEN = re.compile(r"[a-z0-9]+(?:[-./][a-z0-9]+)*(?=n't)|n't|'[a-z]+|[a-z0-9]+(?:[-./][a-z0-9]+)*|\.\.\.|--|\S")


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip surrounding quotes and trailing punctuation."""
    text = _WHITESPACE.sub(" ", str(text).lower()).strip()
    previous = None
    while previous != text:
        previous = text
        text = text.strip().strip(QUOTES).rstrip(TRAILING_PUNCTUATION)
    return text


def squash_spaces(text: str) -> str:
    """RSEvalKit normalisation: lower-case and remove every whitespace character."""
    return _WHITESPACE.sub("", str(text).lower())


def contains_phrase(haystack: str, needle: str) -> bool:
    """True when ``needle`` occurs in ``haystack`` delimited by non-word characters (both already normalised).

    An empty needle is never contained.
    """
    if not needle:
        return False
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", haystack) is not None


def word_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens; hyphens and punctuation separate tokens."""
    return _WORD.findall(str(text).lower())


def ptb_like_tokenize(text: str) -> str:
    """Approximate pycocoevalcap's ``PTBTokenizer`` (``-lowerCase``, punctuation tokens removed) in pure Python.

    Differences from Stanford PTB remain (rare abbreviations, some hyphenation); numbers from this path are labelled
    ``python-ptb-like fallback`` and are not comparable to the Java tokenizer's.
    """
    tokens = _PTB_TOKEN.findall(str(text).replace("\n", " ").lower())
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATION)

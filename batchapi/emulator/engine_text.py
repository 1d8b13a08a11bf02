"""Text primitives for the heuristic engine: words, stopwords, a small stemmer, sentences."""

from __future__ import annotations

import re


def word_set(block: str) -> frozenset[str]:
    """The whitespace-separated words of `block`, for writing word lists compactly."""
    return frozenset(block.split())


# A run of word characters that may carry combining marks (decomposed accents) and inner
# apostrophes ("O'Brien", "don't").
WORD_RE = re.compile(r"\w+(?:[\u0300-\u036f]+\w*|['\u2019]\w+)*")

STOPWORDS: frozenset[str] = word_set("""
    a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each either etc few for from further had hadn't has hasn't
    have haven't having he he'd he'll he's her here here's hers herself him himself his how
    how's however i i'd i'll i'm i've if in into is isn't it it's its itself just let's may me
    might more most must mustn't my myself no nor not now of off on once only or other ought
    our ours ourselves out over own per same shall shan't she she'd she'll she's should
    shouldn't so some such than that that's the their theirs them themselves then there
    there's these they they'd they'll they're they've this those through thus to too under
    until up upon us very via was wasn't we we'd we'll we're we've were weren't what what's
    when when's where where's whether which while who who's whom whose why why's will with
    within without won't would wouldn't yes yet you you'd you'll you're you've your yours
    yourself yourselves
    """)

# Irregular forms the suffix rules cannot reach.
IRREGULAR_FORMS = {
    "paid": "pay",
    "sent": "send",
    "bought": "buy",
    "sold": "sell",
    "spent": "spend",
    "lost": "lose",
    "broken": "break",
    "broke": "break",
    "went": "go",
    "gone": "go",
    "made": "make",
    "told": "tell",
    "gave": "give",
    "given": "give",
    "took": "take",
    "taken": "take",
    "chose": "choose",
    "chosen": "choose",
    "children": "child",
    "people": "person",
    "men": "man",
    "women": "woman",
    "news": "news",
}

# Longest first, so "payments" loses "ments" rather than "s".
_SUFFIXES: tuple[str, ...] = (
    "ations",
    "ation",
    "ments",
    "ment",
    "ities",
    "ness",
    "ings",
    "edly",
    "ity",
    "ing",
    "ies",
    "ied",
    "ed",
    "es",
    "s",
)
_MIN_STEM = 3
_VOWELS = frozenset("aeiouy")
_STEM_CACHE: dict[str, str] = {}
_STEM_CACHE_MAX = 50_000


def _stem_uncached(word: str) -> str:
    if word in IRREGULAR_FORMS:
        return IRREGULAR_FORMS[word]
    if word.endswith(("'s", "\u2019s")):
        word = word[:-2]
    if len(word) <= _MIN_STEM or not word.isalpha():
        return word
    for suffix in _SUFFIXES:
        if not word.endswith(suffix) or len(word) - len(suffix) < _MIN_STEM:
            continue
        if suffix == "s" and word.endswith(("ss", "us", "is")):
            break
        word = word[: -len(suffix)]
        if suffix in ("ies", "ied"):
            word += "y"
        break
    # "shipp" -> "ship", "bill" -> "bil": applied to every word so inflected and bare forms meet.
    if len(word) > _MIN_STEM and word[-1] == word[-2] and word[-1] not in _VOWELS:
        word = word[:-1]
    if len(word) > _MIN_STEM and word[-1] in "ey":
        word = word[:-1]
    return word


def stem(word: str) -> str:
    """A deliberately small suffix stripper: "payments", "payment", "paying" -> "pay".

    Stems are only compared with each other, so they need to be consistent, not pretty.
    """
    cached = _STEM_CACHE.get(word)
    if cached is not None:
        return cached
    if len(_STEM_CACHE) >= _STEM_CACHE_MAX:
        _STEM_CACHE.clear()
    result = _stem_uncached(word.lower())
    _STEM_CACHE[word] = result
    return result


class _ContentStems(dict[str, str]):
    """Lowercase word -> its stem, or "" for stopwords and single characters.

    A dict with `__missing__`, so the common case (a word seen before) is a C-level lookup.
    """

    def __missing__(self, word: str) -> str:
        if len(self) >= _STEM_CACHE_MAX:
            self.clear()
        value = "" if len(word) < 2 or word in STOPWORDS else stem(word)
        self[word] = value
        return value


_CONTENT_STEMS = _ContentStems()
content_stem_of = _CONTENT_STEMS.__getitem__


def aligned_lower(text: str) -> str:
    """`text.lower()`, but always exactly as long as `text`, so offsets carry over.

    Only "\u0130" (capital I with dot) lowercases to two characters; it is kept as it is.
    """
    lowered = text.lower()
    if len(lowered) != len(text):
        lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
    return lowered


def stem_set(lowered: str, start: int, end: int) -> set[str]:
    """The distinct content stems of `lowered[start:end]` (already lowercase)."""
    stems = set(map(content_stem_of, WORD_RE.findall(lowered, start, end)))
    stems.discard("")
    return stems


def content_stems(text: str, extra_stopwords: frozenset[str] = frozenset()) -> list[str]:
    """Stems of the words of `text` that are neither stopwords nor single characters."""
    words = WORD_RE.findall(text.lower())
    if extra_stopwords:
        words = [w for w in words if w not in extra_stopwords]
    return [s for s in map(content_stem_of, words) if s]


# --------------------------------------------------------------------------- sentences

# Never end a sentence: titles and abbreviations that are followed by more of the sentence.
_HARD_ABBREVIATIONS = word_set("""
    mr mrs ms mx dr prof sr jr st mt gen col capt lt sgt rev hon sen rep gov pres fig figs no
    nos vol vols p pp vs cf e.g i.e eg ie approx dept ca al op ed est tel ext ref
    """)
# End a sentence only when the next word clearly opens one ("... Acme Inc. The company ...").
_SOFT_ABBREVIATIONS = word_set("""
    inc ltd corp co llc plc etc a.m p.m u.s u.k e.u jan feb mar apr jun jul aug sep sept oct
    nov dec bros
    """)

# Candidate boundaries: runs of final punctuation (with closing quotes/brackets) and newlines.
_CANDIDATE_RE = re.compile(r"[.!?\u2026\n][.!?\u2026\"'\u2019\u201d)\]]*")
_BULLET_PREFIX_RE = re.compile(r"(?:[-*\u2022]|\d{1,2}[.)])[ \t]+")
_ALNUM_RE = re.compile(r"[^\W_]")
_HEADING_MAX_CHARS = 60
_NOT_HEADING_ENDS = ",;-\u2013\u2014("
_OPENERS = "(\"'[\u201c\u2018"


def _word_before(text: str, end: int) -> str:
    """The word (dots included: "e.g", "U.S") that ends at `end`."""
    space = max(text.rfind(" ", max(0, end - 24), end), text.rfind("\n", max(0, end - 24), end))
    return text[space + 1 : end].lstrip(_OPENERS).strip(".")


def _next_word(text: str, pos: int) -> str:
    match = WORD_RE.match(text, pos)
    return match.group(0) if match else ""


def _ends_sentence(text: str, term_start: int, term: str, after: int) -> bool:
    """Whether final punctuation `term` (at `term_start`, next word at `after`) ends a sentence."""
    if after >= len(text):
        return True
    if text[after].islower():
        return False
    if term[0] != "." or term.startswith(".."):
        return True
    before = _word_before(text, term_start)
    lowered = before.lower()
    if lowered in _HARD_ABBREVIATIONS:
        return False
    if len(before) == 1 and before.isupper():  # an initial: "John F. Kennedy"
        return False
    if lowered in _SOFT_ABBREVIATIONS:
        return _next_word(text, after).lower() in STOPWORDS
    return True


def _newline_ends_sentence(text: str, newline: int, after: int) -> bool:
    """A blank line, a bullet on the next line, or a heading-like line before the newline."""
    if after >= len(text) or text[after] == "\n":
        return True
    if _BULLET_PREFIX_RE.match(text, after):
        return True
    if not text[after].isalpha():
        return False
    line = text[text.rfind("\n", 0, newline) + 1 : newline].rstrip()
    return bool(line) and len(line) <= _HEADING_MAX_CHARS and line[-1] not in _NOT_HEADING_ENDS


def _trimmed(text: str, start: int, end: int) -> tuple[int, int] | None:
    segment = text[start:end]
    stripped = segment.strip()
    if not stripped:
        return None
    start += len(segment) - len(segment.lstrip())
    end = start + len(stripped)
    if stripped[0] in "-*\u20220123456789":
        bullet = _BULLET_PREFIX_RE.match(text, start, end)
        if bullet:
            start = bullet.end()
            stripped = text[start:end]
    if start >= end or not (stripped[0].isalnum() or _ALNUM_RE.search(stripped)):
        return None
    return start, end


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (whitespace and bullet markers trimmed).

    Boundaries: ., !, ? (not after known abbreviations or initials, nor before a lowercase
    word), blank lines, newlines before a bullet, and a newline after a short line without
    final punctuation (a heading). Text without any of these is one sentence.
    """
    spans: list[tuple[int, int]] = []
    length = len(text)
    start = 0
    for match in _CANDIDATE_RE.finditer(text):
        at, end = match.span()
        if at < start:
            continue
        after = end
        if text[at] == "\n":
            while after < length and text[after] in " \t":
                after += 1
            if not _newline_ends_sentence(text, at, after):
                continue
            end = at
        else:
            if after < length and not text[after].isspace():
                continue  # "3.5", "example.com", "e.g.,"
            while after < length and text[after].isspace():
                after += 1
            if not _ends_sentence(text, at, match.group(0), after):
                continue
        span = _trimmed(text, start, end)
        if span is not None:
            spans.append(span)
        start = after
    span = _trimmed(text, start, length)
    if span is not None:
        spans.append(span)
    return spans

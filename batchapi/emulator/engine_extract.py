"""Entity recognizers of the heuristic engine: regular expressions, capitalisation, cue words.

Every recognizer returns `Span`s: character offsets into the original text, so
`text[start:end]` is the entity. Case-insensitive searches run over `Document.lowered`, a
lowercase copy that is kept exactly as long as the text, so its offsets are the text's too.

The patterns are written so that each starts with a literal or a character class: Python's
regex engine then skips ahead to candidate positions instead of trying every character, which
is most of the engine's speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from batchapi.emulator.engine_labels import LOCATION, ORGANIZATION, PERSON
from batchapi.emulator.engine_lexicon import (
    COMMON_ACRONYMS,
    COMMON_CAPS,
    FIRST_NAMES,
    LEGAL_SUFFIXES,
    LOCATIONS,
    NAME_PARTICLES,
    OF_HEADS,
    ORG_WORDS,
    TITLES,
)
from batchapi.emulator.engine_text import (
    IRREGULAR_FORMS,
    STOPWORDS,
    aligned_lower,
    stem,
    word_set,
)


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    confidence: float


def _overlaps(start: int, end: int, taken: list[tuple[int, int]]) -> bool:
    return any(start < t_end and t_start < end for t_start, t_end in taken)


def _non_overlapping(spans: list[Span]) -> list[Span]:
    """Leftmost first, longer first at the same start; later overlapping spans are dropped."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


def _find_all(text: str, needle: str) -> list[int]:
    found = []
    at = text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


# --------------------------------------------------------------------------- emails, URLs

_EMAIL_LOCAL_CHARS = "._+-"
_EMAIL_DOMAIN_RE = re.compile(r"[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
_URL_STARTS = ("http://", "https://", "www.")
_URL_BODY_RE = re.compile(r"[^\s<>\"'`]+")
_TLD_RE = re.compile(r"\.(?:com|org|net|io|dev|ai|app|co|uk|de|fr|eu|gov|edu|info|biz)(?![\w-])")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_URL_TRAILING = ".,;:!?'\"\u201d\u2019"
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _trim_url(text: str, start: int, end: int) -> int:
    """Drop trailing punctuation, keeping a closing bracket that the URL itself opened."""
    while end > start and (text[end - 1] in _URL_TRAILING or text[end - 1] in _CLOSERS):
        closer = text[end - 1]
        opener = _CLOSERS.get(closer)
        if opener and text.count(opener, start, end) >= text.count(closer, start, end):
            break
        end -= 1
    return end


# --------------------------------------------------------------------------- phones

# A candidate is a run of digits and separators; the strict pattern then runs inside it.
_PHONE_CANDIDATE_RE = re.compile(r"[+(\d][\d ().-]{6,}\d")
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,5}(?!\w)"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)
_PHONE_CUE_RE = re.compile(
    r"(?:phone|tel|telephone|call|mobile|cell|fax|whatsapp|ph)\b[^\n\d]{0,12}$"
)
_PHONE_SEPARATORS_RE = re.compile(r"[ .()-]+")

# --------------------------------------------------------------------------- dates

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_CAPITALISED_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_ORDINAL = r"(?:st|nd|rd|th)?"
# Dates that start with a digit, over the lowercase copy:
_DATE_DIGIT_RE = re.compile(
    r"\d(?<![\w./-]\d)(?:"
    r"(?P<iso>\d{3}-\d{2}-\d{2}(?:[t ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?)"
    r"(?![\w-])"
    rf"|(?P<dmy>\d?{_ORDINAL}\s+(?:of\s+)?{_MONTHS}\.?,?\s+\d{{4}})(?!\w)"
    r"|(?P<num>\d?(?P<sep>[/.])\d{1,2}(?P=sep)(?:\d{4}|\d{2}))(?![\w/]|\.\d)"
    r")"
)
# ... and dates that start with a month name, which must be capitalised ("you may 2 ...").
_DATE_MONTH_RE = re.compile(
    rf"{_CAPITALISED_MONTHS}\.?\s+(?:(?P<mdy>\d{{1,2}}{_ORDINAL},?\s+\d{{4}})|(?P<my>\d{{4}})"
    rf"|(?P<md>\d{{1,2}}{_ORDINAL}))(?![\w:])"
)
_DATE_CONFIDENCE = {"iso": 0.97, "dmy": 0.95, "mdy": 0.95, "num": 0.9, "my": 0.8, "md": 0.7}

# --------------------------------------------------------------------------- money, percent

_NUMBER = r"\d(?:\d{0,2}(?:,\d{3})+|\d*)(?:\.\d+)?"
_SCALE = r"(?:\s(?:million|billion|thousand|trillion)|\s?(?:mn|bn|[MmKkBb])(?![A-Za-z]))?"
_CODE = (
    r"(?:USD|EUR|GBP|JPY|CHF|CAD|AUD|INR|CNY|RMB|SEK|NOK|DKK|PLN|BRL|MXN|ZAR|SGD|HKD|NZD"
    r"|KRW|RUB|TRY)"
)
_CURRENCY_WORD = (
    r"(?:dollars?|euros?|pounds?(?:\s+sterling)?|yen|yuan|rupees?|francs?|cents?|pence"
    r"|kronor|krona|kroner)"
)
# Currency markers are found first; the amount is read after them ("$5", "EUR 300") or
# before them ("300 EUR", "300€", "300 euros").
_SYMBOL_RE = re.compile(r"[$€£¥₹₩₽]")
_SYMBOL_CHARS = "$€£¥₹₩₽"
_SYMBOL_PREFIXES = ("US", "AU", "CA", "NZ", "HK", "A", "C", "S")
_CODE_RE = re.compile(rf"{_CODE}(?![A-Za-z])")
_CURRENCY_WORD_RE = re.compile(rf"{_CURRENCY_WORD}(?![a-z])")
_AMOUNT_AFTER_RE = re.compile(rf"\s?{_NUMBER}{_SCALE}")
_AMOUNT_BEFORE_RE = re.compile(rf"{_NUMBER}{_SCALE}\s?$")
_AMOUNT_BEFORE_WORD_RE = re.compile(rf"{_NUMBER}{_SCALE}\s$")
_PERCENT_SIGNS = ("%", "percent", "per cent", "pct")
_PERCENT_NUMBER_RE = re.compile(r"[-+\u2212]?\d+(?:[.,]\d+)?\s?$")

# --------------------------------------------------------------------------- names


def _char_class(predicate_ranges: tuple[tuple[int, int], ...]) -> str:
    """A regex character class body of the uppercase letters in the given code point ranges."""
    chars = [c for lo, hi in predicate_ranges for c in range(lo, hi) if chr(c).isupper()]
    parts: list[str] = []
    run_start = previous = chars[0]
    for code in [*chars[1:], -1]:
        if code == previous + 1:
            previous = code
            continue
        first, last = re.escape(chr(run_start)), re.escape(chr(previous))
        parts.append(first if run_start == previous else f"{first}-{last}")
        run_start = previous = code
    return "".join(parts)


# Latin, Greek, Cyrillic, Armenian, Georgian and Latin Extended Additional capitals.
_UPPER = _char_class(((0x41, 0x5B), (0xC0, 0x590), (0x10A0, 0x1100), (0x1E00, 0x2000)))
# A capitalised word not glued to a preceding letter ("iPhone" has none), with no digits.
_CAP_TOKEN_RE = re.compile(
    rf"[{_UPPER}](?<![\w\u0300-\u036f][{_UPPER}])"
    r"[^\W\d_]*+(?:(?:[\u0300-\u036f]+|['\u2019&\-](?=[^\W\d_]))[^\W\d_]*+)*+(?!\d)"
)
# Any word, letters or digits first, for widening keyword hits ("XPS 13 laptop").
_ANY_TOKEN_RE = re.compile(r"[^\W_](?:[\w\u0300-\u036f]|['\u2019&\-](?=[^\W_]))*")
_JOIN_GAPS = frozenset({" ", " & ", *(f" {p} " for p in NAME_PARTICLES)})
_SUFFIX_AFTER_RE = re.compile(
    r",?[ ](?:plc|PLC|Inc|Ltd|LLC|GmbH|Corp|Co|AG|SA|S\.A|N\.V|NV|B\.V|BV|LLP|Limited)(?!\w)\.?"
)
_DOTTED_SUFFIXES = word_set("inc ltd corp co")
# Legal forms written with dots, matched from their first letter ("S.A.", "N.V.", "S.p.A.").
_DOTTED_LEGAL_RE = re.compile(r"(?:S\.A|N\.V|B\.V|S\.p\.A|S\.L|L\.L\.C|P\.C)\.?(?!\w)")
_NON_NAMES = word_set("""
    english french german spanish italian chinese japanese portuguese dutch russian arabic
    european american british asian african canadian australian indian
    """)

# Cue words read around a capitalised phrase.
_LOC_VERBS = word_set("""
    based headquartered located situated office offices born live lives lived living reside
    resides resided moved relocated headquarters
    """)
_LOC_PREPOSITIONS = word_set("in near from across throughout outside inside around visit visited")
_WORK_WORDS = word_set("works work worked working employed employee job position role internship")
_ROLE_WORDS = word_set("""
    ceo cto cfo coo founder co-founder president chairman chairwoman head director manager vp
    spokesperson spokesman spokeswoman employee employees staff shareholder shareholders
    """)
_ORG_VERBS_BEFORE = word_set("joined acquired acquire acquiring")
_ORG_VERBS_AFTER = word_set("announced reported acquired hired launched shares stock headquarters")
_ORG_POSSESSIONS = word_set("""
    ceo board shares stock headquarters revenue product products customer customers employees
    website app platform service services
    """)
_PERSON_WORDS_BEFORE = word_set("""
    dear hi hello hey thanks cc attn regards sincerely ceo cto cfo coo founder co-founder
    president chairman chairwoman director manager spokesperson spokesman spokeswoman analyst
    engineer professor colleague customer client patient author by
    """)
_PERSON_ROLES_AFTER = word_set("""
    ceo cto cfo coo founder co-founder president chair chairman chairwoman head director manager
    vp vice chief spokesperson spokesman spokeswoman senior lead analyst engineer professor
    author
    """)
_PERSON_VERBS_AFTER = word_set("""
    said says told wrote explained noted added asked replied argued believes thinks
    """)
_ARTICLES = word_set("the our a an")
_CUE_WINDOW = 40
_CUE_STRIP = ",:;\"'()"


_NOISE_CACHE: dict[str, bool] = {}


def _is_edge_noise(word: str) -> bool:
    """Capitalised words that cannot start or end a name: stopwords, greetings, months..."""
    noise = _NOISE_CACHE.get(word)
    if noise is None:
        lowered = word.lower()
        noise = (
            (lowered in STOPWORDS and not (len(word) > 1 and word.isupper()))
            or lowered in COMMON_CAPS
            or lowered in _NON_NAMES
            or word in COMMON_ACRONYMS
        )
        if len(_NOISE_CACHE) > 100_000:
            _NOISE_CACHE.clear()
        _NOISE_CACHE[word] = noise
    return noise


def _outside(
    tokens: list[tuple[int, int, str]], blocked: list[tuple[int, int]]
) -> list[tuple[int, int, str]]:
    """The tokens that overlap none of the sorted `blocked` spans."""
    if not blocked:
        return tokens
    kept = []
    index = 0
    for token in tokens:
        while index < len(blocked) and blocked[index][1] <= token[0]:
            index += 1
        if index < len(blocked) and blocked[index][0] < token[1]:
            continue
        kept.append(token)
    return kept


def _sentence_initial(text: str, start: int) -> bool:
    pos = start - 1
    while pos >= 0 and text[pos] in " \t\"'\u201c\u2018(*\u2022-":
        pos -= 1
    return pos < 0 or text[pos] in ".!?:;\n\r"


def _after_sentence_end(text: str, start: int) -> bool:
    pos = start - 1
    while pos >= 0 and text[pos] in " \t\"'\u201c\u2018(":
        pos -= 1
    return pos < 0 or text[pos] in ".!?"


def _words_before(text: str, start: int) -> list[str]:
    """The last few lowercase words before `start`, punctuation other than '.' stripped."""
    words = text[max(0, start - _CUE_WINDOW) : start].lower().split()[-3:]
    words = [w.strip(_CUE_STRIP) for w in words]
    if words and words[-1] == "the":
        words.pop()
    return words


def _words_after(text: str, end: int) -> tuple[str, list[str]]:
    """What directly follows `end` ("," "'s" " ") and the next few lowercase words."""
    after = text[end : end + _CUE_WINDOW].lower()
    if after.startswith(","):
        lead, rest = ",", after[1:]
    elif after.startswith(("'s", "\u2019s")):
        lead, rest = "'s", after[2:]
    elif after[:1].isspace():
        lead, rest = " ", after
    else:
        return "", []
    words = [w.strip(_CUE_STRIP) for w in rest.split()[:3]]
    if lead == "," and words and words[0] in _ARTICLES:
        words = words[1:]
    return lead, words


class Document:
    """One text and its lazily computed recognizer results, shared by all requested labels."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def lowered(self) -> str:
        return aligned_lower(self.text)

    def find(self, kind: str) -> list[Span]:
        if kind in (PERSON, ORGANIZATION, LOCATION):
            return self.names[kind]
        return getattr(self, kind)

    # -- patterns ------------------------------------------------------------------------
    @cached_property
    def email(self) -> list[Span]:
        text = self.text
        spans: list[Span] = []
        at = text.find("@")
        while at != -1:
            start = at
            while start > 0 and (_is_word_char(text[start - 1]) or text[start - 1] in "._+-"):
                start -= 1
            while start < at and text[start] in _EMAIL_LOCAL_CHARS:
                start += 1
            domain = _EMAIL_DOMAIN_RE.match(text, at + 1)
            if domain and start < at and not (spans and start < spans[-1].end):
                spans.append(Span(start, domain.end(), 0.97))
            at = text.find("@", at + 1)
        return spans

    @cached_property
    def url(self) -> list[Span]:
        text, lowered = self.text, self.lowered
        spans: list[Span] = []
        starts = sorted(
            (start, len(marker)) for marker in _URL_STARTS for start in _find_all(lowered, marker)
        )
        for start, marker_length in starts:
            if start and (_is_word_char(text[start - 1]) or text[start - 1] in "@/."):
                continue
            body = _URL_BODY_RE.match(text, start)
            end = _trim_url(text, start, body.end() if body else start + marker_length)
            if end - start > marker_length and not (spans and start < spans[-1].end):
                spans.append(Span(start, end, 0.95))
        taken = [(s.start, s.end) for s in (*spans, *self.email)]
        for match in _TLD_RE.finditer(lowered):
            start = match.start()
            while start > 0 and lowered[start - 1] in _HOST_CHARS:
                start -= 1
            while start < match.start() and lowered[start] in ".-":
                start += 1
            if start == match.start():
                continue
            if start and (_is_word_char(text[start - 1]) or text[start - 1] in "@/"):
                continue
            end = match.end()
            if text.startswith("/", end):
                body = _URL_BODY_RE.match(text, end)
                end = _trim_url(text, start, body.end() if body else end)
            if not _overlaps(start, end, taken):
                spans.append(Span(start, end, 0.8))
                taken.append((start, end))
        return spans

    @cached_property
    def date(self) -> list[Span]:
        text, lowered = self.text, self.lowered
        spans: list[Span] = []
        for match in _DATE_DIGIT_RE.finditer(lowered):
            kind = "iso" if match.group("iso") else "dmy" if match.group("dmy") else "num"
            found = match.group(0)
            if kind == "iso":
                valid = 1 <= int(found[5:7]) <= 12 and 1 <= int(found[8:10]) <= 31
            elif kind == "num":
                first, second = (int(p) for p in found.split(match.group("sep"))[:2])
                valid = 1 <= first <= 31 and 1 <= second <= 31 and min(first, second) <= 12
            else:
                valid = True
            if valid:
                spans.append(Span(match.start(), match.end(), _DATE_CONFIDENCE[kind]))
        taken = [(s.start, s.end) for s in spans]
        for match in _DATE_MONTH_RE.finditer(text):
            start = match.start()
            if start and _is_word_char(text[start - 1]):
                continue
            if _overlaps(start, match.end(), taken):
                continue
            kind = "mdy" if match.group("mdy") else "my" if match.group("my") else "md"
            spans.append(Span(start, match.end(), _DATE_CONFIDENCE[kind]))
        return spans

    @cached_property
    def money(self) -> list[Span]:
        text = self.text
        spans: list[Span] = []
        for marker in [*_SYMBOL_RE.finditer(text), *_CODE_RE.finditer(text)]:
            start, end = marker.span()
            if marker.group(0) in _SYMBOL_CHARS:
                for prefix in _SYMBOL_PREFIXES:
                    if start >= len(prefix) and text.startswith(prefix, start - len(prefix)):
                        start -= len(prefix)
                        break
            amount = _AMOUNT_AFTER_RE.match(text, end)
            if amount:
                if not (start and _is_word_char(text[start - 1])):
                    spans.append(Span(start, amount.end(), 0.95))
                continue
            self._amount_before(marker.start(), end, _AMOUNT_BEFORE_RE, 0.93, spans)
        for marker in _CURRENCY_WORD_RE.finditer(self.lowered):
            self._amount_before(marker.start(), marker.end(), _AMOUNT_BEFORE_WORD_RE, 0.9, spans)
        return _non_overlapping(spans)

    def _amount_before(
        self,
        marker_start: int,
        end: int,
        regex: re.Pattern[str],
        confidence: float,
        spans: list[Span],
    ) -> None:
        text = self.text
        amount = regex.search(text, max(0, marker_start - 32), marker_start)
        if amount is None:
            return
        start = amount.start()
        if start and (_is_word_char(text[start - 1]) or text[start - 1] in ".,"):
            return
        spans.append(Span(start, end, confidence))

    @cached_property
    def percent(self) -> list[Span]:
        text, lowered = self.text, self.lowered
        spans: list[Span] = []
        signs = sorted(
            (at, at + len(sign))
            for sign in _PERCENT_SIGNS
            for at in _find_all(lowered, sign)
            if sign == "%" or not _is_word_char(lowered[at + len(sign) : at + len(sign) + 1] or " ")
        )
        for sign_start, sign_end in signs:
            number = _PERCENT_NUMBER_RE.search(lowered, max(0, sign_start - 24), sign_start)
            if number is None:
                continue
            start = number.start()
            if start and (_is_word_char(text[start - 1]) or text[start - 1] in ".,"):
                if text[start] not in "+-\u2212":
                    continue
                start += 1
            spans.append(Span(start, sign_end, 0.95))
        return spans

    @cached_property
    def phone(self) -> list[Span]:
        text = self.text
        taken = [(s.start, s.end) for s in (*self.date, *self.money, *self.percent)]
        spans: list[Span] = []
        for candidate in _PHONE_CANDIDATE_RE.finditer(text):
            for match in _PHONE_RE.finditer(text, candidate.start(), candidate.end()):
                start, end = match.span()
                found = match.group(0)
                digits = sum(ch.isdigit() for ch in found)
                if not 7 <= digits <= 15 or _overlaps(start, end, taken):
                    continue
                if found.startswith(("+", "(")):
                    confidence = 0.9
                elif len(_PHONE_SEPARATORS_RE.split(found)) >= 3:
                    confidence = 0.85
                elif _PHONE_CUE_RE.search(self.lowered, max(0, start - 25), start):
                    confidence = 0.8
                else:
                    continue
                spans.append(Span(start, end, confidence))
        return spans

    # -- capitalised phrases ---------------------------------------------------------------
    @cached_property
    def names(self) -> dict[str, list[Span]]:
        """Persons, organisations and locations from runs of capitalised words."""
        text = self.text
        tokens = [(m.start(), m.end(), m.group(0)) for m in _CAP_TOKEN_RE.finditer(text)]
        if "@" in text or "." in text:
            tokens = _outside(tokens, sorted((s.start, s.end) for s in (*self.email, *self.url)))
        found: dict[str, list[Span]] = {PERSON: [], ORGANIZATION: [], LOCATION: []}
        count = len(tokens)
        i = 0
        while i < count:
            j = i
            while j + 1 < count and not tokens[j][2].endswith(("'s", "\u2019s")):
                prev = tokens[j]
                gap = text[prev[1] : tokens[j + 1][0]]
                if (
                    gap in _JOIN_GAPS
                    or (gap == " of " and prev[2].lower() in OF_HEADS)
                    or (gap == ". " and (len(prev[2]) == 1 or prev[2].lower() in TITLES))
                ):
                    j += 1
                    continue
                break
            if j > i or not _is_edge_noise(tokens[i][2]):
                self._classify_group(tokens[i : j + 1], found)
            i = j + 1
        return found

    def _classify_group(
        self, group: list[tuple[int, int, str]], found: dict[str, list[Span]]
    ) -> None:
        text = self.text
        while group and _is_edge_noise(group[0][2]):
            group = group[1:]
        titled = len(group) > 1 and group[0][2].lower() in TITLES
        if titled:
            group = group[1:]
        while group and _is_edge_noise(group[-1][2]):
            group = group[:-1]
        if not group:
            return
        start, end = group[0][0], group[-1][1]
        last = group[-1][2]
        if last.endswith(("'s", "\u2019s")):
            end -= 2
            last = last[:-2]
        size = len(group)
        if size > 1 and len(last) == 1:
            dotted = _DOTTED_LEGAL_RE.match(text, group[-1][0])
            if dotted:
                end = dotted.end()
                last = dotted.group(0)
        legal = size > 1 and (last.lower() in LEGAL_SUFFIXES or "." in last)
        if legal and last.lower() in _DOTTED_SUFFIXES and text.startswith(".", end):
            end += 1
        if not legal:
            suffix = _SUFFIX_AFTER_RE.match(text, end)
            if suffix:
                legal = True
                end = suffix.end()
        phrase = text[start:end]

        kind, confidence = self._kind_of(group, start, end, phrase, titled, legal)
        if kind is not None:
            found[kind].append(Span(start, end, confidence))
        elif size > 1:
            self._locations_inside(group, found)

    def _kind_of(
        self,
        group: list[tuple[int, int, str]],
        start: int,
        end: int,
        phrase: str,
        titled: bool,
        legal: bool,
    ) -> tuple[str | None, float]:
        """The first rule that fires wins; see docs/engine.md for the order."""
        if titled:
            return PERSON, 0.9
        if legal:
            return ORGANIZATION, 0.9
        text = self.text
        # After a full stop the previous words belong to another sentence.
        before = [] if _after_sentence_end(text, start) else _words_before(text, start)
        last_before = before[-1] if before else ""
        pair_before = before[-2] if len(before) > 1 else ""
        loc_strong = last_before in ("in", "at", "to") and pair_before in _LOC_VERBS
        if phrase in LOCATIONS:
            return LOCATION, 0.9 if loc_strong else 0.85
        words = [t[2].lower() for t in group]
        size = len(group)
        if size > 1 and any(w in ORG_WORDS for w in words):
            return ORGANIZATION, 0.8
        lead, after = _words_after(text, end)
        first_after = after[0] if after else ""
        org_cue = (
            (last_before in ("at", "for", "with", "by") and pair_before in _WORK_WORDS)
            or last_before in _ORG_VERBS_BEFORE
            or (last_before in ("of", "at") and pair_before in _ROLE_WORDS)
            or (lead == " " and first_after in _ORG_VERBS_AFTER)
            or (lead == "'s" and first_after in _ORG_POSSESSIONS)
        )
        if org_cue:
            return ORGANIZATION, 0.75
        person_cue = (
            last_before in _PERSON_WORDS_BEFORE
            or before[-2:] == ["according", "to"]
            or (lead == "," and first_after in _PERSON_ROLES_AFTER)
            or (lead == " " and first_after in _PERSON_VERBS_AFTER)
        )
        first_name = words[0] in FIRST_NAMES
        if first_name:
            return PERSON, 0.85 if person_cue else 0.8 if size > 1 else 0.6
        if person_cue and size <= 4:
            return PERSON, 0.75 if size > 1 else 0.65
        if loc_strong:
            return LOCATION, 0.8
        if size <= 3 and last_before in _LOC_PREPOSITIONS:
            return LOCATION, 0.6
        if last_before == "at":
            return ORGANIZATION, 0.6
        last = group[-1][2]
        if size == 1 and last.isupper() and 2 <= len(last) <= 5:
            return ORGANIZATION, 0.55
        if (
            2 <= size <= 3
            and not _sentence_initial(text, start)
            and all(t[2][1:].islower() for t in group)
        ):
            return PERSON, 0.45
        return None, 0.0

    def _locations_inside(
        self, group: list[tuple[int, int, str]], found: dict[str, list[Span]]
    ) -> None:
        """Gazetteer places inside an otherwise unexplained phrase ("Storms Hit Europe")."""
        text = self.text
        size = len(group)
        i = 0
        while i < size:
            for j in range(min(size, i + 4) - 1, i - 1, -1):
                if text[group[i][0] : group[j][1]] in LOCATIONS:
                    found[LOCATION].append(Span(group[i][0], group[j][1], 0.7))
                    i = j
                    break
            i += 1

    # -- any other label -------------------------------------------------------------------
    def keyword_spans(self, keywords: frozenset[str]) -> list[Span]:
        """Mentions of `keywords` (stems), widened over adjacent capitalised or numbered words.

        "the Dell XPS 13 laptop" for the keyword "laptop" gives "Dell XPS 13 laptop".
        """
        finder = _keyword_finder(keywords)
        if finder is None:
            return []
        text, lowered = self.text, self.lowered
        spans: list[Span] = []
        covered = 0
        for match in finder.finditer(lowered):
            start, end = match.span()
            if start < covered or (start and _is_word_char(lowered[start - 1])):
                continue
            if not _is_keyword(match.group(0), keywords):
                continue
            low, high = max(0, start - 80), min(len(text), end + 80)
            window = [
                (m.start(), m.end(), m.group(0)) for m in _ANY_TOKEN_RE.finditer(text, low, high)
            ]
            if low and window and _is_word_char(text[low - 1]):
                window = window[1:]
            if high < len(text) and window and _is_word_char(text[high]):
                window = window[:-1]
            index = next((k for k, t in enumerate(window) if t[0] == start), None)
            if index is None:
                continue
            left = index
            while left > 0 and window[left - 1][1] + 1 == window[left][0]:
                neighbour = window[left - 1]
                if text[neighbour[1]] != " " or neighbour[0] < covered:
                    break
                if not (_name_like(neighbour[2]) or _is_keyword(neighbour[2].lower(), keywords)):
                    break
                left -= 1
            right = index
            while right + 1 < len(window) and window[right][1] + 1 == window[right + 1][0]:
                neighbour = window[right + 1]
                if text[window[right][1]] != " ":
                    break
                if not (_name_like(neighbour[2]) or _is_keyword(neighbour[2].lower(), keywords)):
                    break
                right += 1
            span_start, span_end = window[left][0], window[right][1]
            covered = span_end
            widened = (span_start, span_end) != (window[index][0], window[index][1])
            spans.append(Span(span_start, span_end, 0.7 if widened else 0.55))
        return spans


def _is_keyword(word: str, keywords: frozenset[str]) -> bool:
    return word not in STOPWORDS and stem(word) in keywords


def _name_like(word: str) -> bool:
    lowered = word.lower()
    if lowered in STOPWORDS or lowered in COMMON_CAPS or word in COMMON_ACRONYMS:
        return False
    return any(ch.isupper() or ch.isdigit() for ch in word)


@lru_cache(maxsize=256)
def _keyword_finder(keywords: frozenset[str]) -> re.Pattern[str] | None:
    """A regex for words that may stem to one of `keywords`: stems are prefixes of their
    words, except for irregular forms, which are listed."""
    if not keywords:
        return None
    prefixes = set(keywords)
    prefixes.update(form for form, base in IRREGULAR_FORMS.items() if base in keywords)
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes, key=lambda p: (-len(p), p)))
    return re.compile(rf"(?:{alternatives})(?:[\w\u0300-\u036f]|['\u2019\-](?=\w))*")

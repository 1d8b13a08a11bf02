"""Which recognizer a requested extract label means, and the keywords of any other label."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from batchapi.emulator.engine_text import STOPWORDS, WORD_RE, stem, word_set

PERSON = "person"
ORGANIZATION = "organization"
LOCATION = "location"
EMAIL = "email"
URL = "url"
PHONE = "phone"
DATE = "date"
MONEY = "money"
PERCENT = "percent"
KINDS: tuple[str, ...] = (EMAIL, URL, PHONE, DATE, MONEY, PERCENT, PERSON, ORGANIZATION, LOCATION)

# --------------------------------------------------------------------------- label -> kind


@dataclass(frozen=True, slots=True)
class _Cues:
    name_strong: frozenset[str]
    name_weak: frozenset[str]
    desc_strong: re.Pattern[str] | None
    desc_weak: re.Pattern[str] | None


def _cues(strong: str, weak: str = "", desc_strong: str = "", desc_weak: str = "") -> _Cues:
    def phrases(block: str) -> re.Pattern[str] | None:
        items = [p.strip() for p in block.split(",") if p.strip()]
        if not items:
            return None
        return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in items) + r")(?!\w)")

    return _Cues(
        frozenset(strong.split()), frozenset(weak.split()), phrases(desc_strong), phrases(desc_weak)
    )


_LABEL_CUES: dict[str, _Cues] = {
    EMAIL: _cues("email emails mail mails", "", "email, e-mail, email address, mailbox"),
    URL: _cues(
        "url urls uri link links website websites homepage web domain domains",
        "site",
        "url, link, website, web address, web page, webpage, homepage, domain",
    ),
    PHONE: _cues(
        "phone phones telephone tel mobile cell fax",
        "",
        "phone number, telephone, mobile number, cell number, fax",
        "phone",
    ),
    DATE: _cues(
        "date dates day days deadline deadlines birthday dob due when",
        "",
        "date, dates, day, deadline, calendar",
        "when",
    ),
    MONEY: _cues(
        "money amount amounts price prices cost costs fee fees payment payments salary salaries "
        "revenue revenues budget budgets currency charge charges balance spend total totals sum",
        "value",
        "money, monetary, amount, price, cost, currency, dollars, euros, paid, fee",
        "total, value",
    ),
    PERCENT: _cues(
        "percent percentage percentages pct ratio margin margins",
        "rate rates share growth",
        "percent, percentage, %",
        "rate, ratio, share",
    ),
    PERSON: _cues(
        "person persons people individual individuals human humans author authors employee "
        "employees patient patients speaker speakers attendee attendees participant "
        "participants signatory founder founders executive executives doctor doctors",
        "name names customer customers client clients contact contacts sender recipient "
        "recipients user users who",
        "person, persons, people, individual, human, someone, full name, first name, last name, "
        "surname",
        "name, names",
    ),
    ORGANIZATION: _cues(
        "org orgs organization organizations organisation organisations company companies "
        "vendor vendors supplier suppliers business businesses firm firms employer employers "
        "corporation corporations institution institutions agency agencies bank banks "
        "manufacturer manufacturers provider providers competitor competitors merchant "
        "merchants brand brands",
        "partner partners carrier carriers",
        "company, companies, organization, organisation, business, firm, corporation, vendor, "
        "supplier, employer, institution, agency, manufacturer, brand",
    ),
    LOCATION: _cues(
        "location locations place places city cities country countries region regions town "
        "towns destination destinations origin venue venues headquarters hq geo",
        "where site",
        "location, place, city, country, region, town, geographic, where",
    ),
}
_NAME_STRONG, _NAME_WEAK, _DESC_STRONG, _DESC_WEAK = 4.0, 2.0, 2.5, 1.0
_MIN_KIND_SCORE = 2.0
_LABEL_WORD_RE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def label_words(label: str) -> list[str]:
    """Words of a label key: "contact_email", "contactEmail", "Contact Email" -> contact, email."""
    return [w.lower() for w in _LABEL_WORD_RE.findall(label)]


@lru_cache(maxsize=1024)
def resolve_kind(label: str, description: str) -> str | None:
    """The built-in recognizer a requested label maps to, or None for a keyword search.

    Label-name words weigh most; description phrases add evidence. A tie goes to the kind whose
    cue comes first in the description, then to the order of KINDS.
    """
    name = set(label_words(label))
    desc = description.lower()
    best: tuple[float, int, int] | None = None
    best_kind: str | None = None
    for order, kind in enumerate(KINDS):
        cues = _LABEL_CUES[kind]
        score = 0.0
        first = len(desc) + 1
        if name & cues.name_strong:
            score += _NAME_STRONG
            first = -1
        elif name & cues.name_weak:
            score += _NAME_WEAK
            first = -1
        for pattern, weight in ((cues.desc_strong, _DESC_STRONG), (cues.desc_weak, _DESC_WEAK)):
            found = pattern.search(desc) if pattern is not None else None
            if found:
                score += weight
                first = min(first, found.start())
                break
        key = (-score, first, order)
        if score >= _MIN_KIND_SCORE and (best is None or key < best):
            best, best_kind = key, kind
    return best_kind


# Description words that say nothing about what to look for.
_GENERIC_DESCRIPTION_WORDS = word_set("""
    name names such example examples eg e.g like any mention mentions mentioned text document
    entity entities value values thing things kind kinds type types specific particular
    including include includes etc term terms word words phrase phrases refer refers
    reference references appear appears appearing given found described
    """)


@lru_cache(maxsize=1024)
def label_keywords(label: str, description: str) -> frozenset[str]:
    """Stems of the label's words and its description's content words."""
    found = set()
    for word in [*label_words(label), *WORD_RE.findall(description.lower())]:
        if len(word) > 1 and word not in STOPWORDS and word not in _GENERIC_DESCRIPTION_WORDS:
            found.add(stem(word))
    return frozenset(found)

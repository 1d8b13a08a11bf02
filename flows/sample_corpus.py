"""A seeded, generated sample corpus: support tickets, news paragraphs and contract clauses.

Nothing is downloaded: every document is assembled from templates and small word lists, so
the same `seed` always gives the same corpus. Names, companies and places are chosen so the
emulator's heuristic engine has something to find (people with titles, companies with legal
suffixes, known cities and countries, emails, money, percentages and dates).

    generate_documents(1000)                      # pyarrow.Table: id, text, kind, created_at
    write_corpus("corpus/docs.parquet", 100_000, target_chars=2000)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

KINDS: tuple[str, ...] = ("ticket", "news", "contract")
TICKET_TOPICS: tuple[str, ...] = ("billing", "shipping", "account", "bug")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("kind", pa.string()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
    ]
)

_EPOCH_2025_MS = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
_YEAR_MS = 365 * 24 * 3600 * 1000
# Padding sentences are drawn from a pool of this (prime) size with a random stride, so a
# document never repeats a sentence until it has used the whole pool.
_POOL_SIZE = 1021
_BATCH_ROWS = 10_000

DEMO_ENRICHMENTS: list[dict[str, Any]] = [
    {
        "name": "entities",
        "model": "extract",
        "entities": {
            "person": "a person's full name",
            "organization": "a company or organization",
            "location": "a city or country",
            "email": "an email address",
            "money": "an amount of money",
            "date": "a calendar date",
        },
        "instruction": "Return every mention; keep titles out of person names.",
    },
    {
        "name": "summary",
        "model": "summarize",
        "instructions": "One sentence.",
        "max_tokens": 80,
    },
    {
        "name": "topic",
        "model": "classify",
        "labels": [
            {"name": "billing", "rubric": "Is it about a payment, invoice, charge or refund?"},
            {"name": "shipping", "rubric": "Is it about a delivery, parcel, courier or shipment?"},
            {"name": "account", "rubric": "Is it about a login, password or account access?"},
            {"name": "bug", "rubric": "Does it report an error, crash or broken feature?"},
            {
                "name": "legal",
                "rubric": "Is it a contract clause or agreement between parties on liability, "
                "termination or notice?",
            },
            {"name": "news", "rubric": "Is it a news report about companies, markets or people?"},
        ],
        "system_prompt": "Pick the one label that fits the document best.",
    },
]

# --------------------------------------------------------------------------- word lists


def _split(words: str) -> tuple[str, ...]:
    return tuple(words.split())


_FIRST = _split(
    "Alice Amelia Ana Andrew Anna Arjun Ben Carlos Charlotte Chen Claire Daniel David Diana "
    "Diego Dmitri Elena Emily Emma Eric Fatima Francesca Gabriel George Grace Hannah Hans "
    "Helen Henry Hiroshi Isabella Jack James Javier Jennifer Julia Kenji Laura Liam Lucas "
    "Lucy Luis Maria Mark Martin Mei Michael Mohammed Natalie Nina Noah Olivia Omar Oscar "
    "Patricia Paul Peter Priya Rachel Raj Rebecca Robert Rosa Samuel Sara Sofia Sophie "
    "Thomas Wei William Yuki Zoe"
)
_LAST = _split(
    "Adams Alvarez Bauer Becker Brown Castillo Chen Costa Dubois Fischer Garcia Gupta Hansen "
    "Ito Jensen Kim Kowalski Larsen Lopez Martin Meyer Moreau Muller Nakamura Novak Okafor "
    "Olsen Patel Perez Rossi Santos Schmidt Silva Singh Smith Suzuki Tanaka Taylor Thompson "
    "Weber Williams Wong Yilmaz Zhang"
)
_TITLES = ("Dr.", "Ms", "Mr", "Prof.", "Mrs")
_ROLES = (
    "chief executive",
    "chief financial officer",
    "head of operations",
    "general counsel",
    "chair of the board",
    "head of research",
    "managing director",
    "spokesperson",
)
_COMPANY_STEMS = _split(
    "Acme Globex Initech Northwind Umbrella Vandelay Hooli Soylent Tyrell Cyberdyne Redwood "
    "Silverline Bluewater Ironbridge Brightpath Clearwave Evergreen Fairfield Goldcrest "
    "Highland Keystone Lakeside Meridian Oakridge Pinnacle Quantum Riverstone Summit "
    "Trident Westgate Zenith Aurora Cobalt Harbor Lumen Nimbus Orion Polaris Sterling"
)
_COMPANY_WORDS = ("", "", "", " Logistics", " Software", " Systems", " Capital", " Pharma")
_SUFFIXES = ("Inc.", "Ltd", "GmbH", "LLC", "plc", "Corp.", "AG", "S.A.")
_PLACES = (
    ("Berlin", "Germany"),
    ("Munich", "Germany"),
    ("Paris", "France"),
    ("Lyon", "France"),
    ("Madrid", "Spain"),
    ("Barcelona", "Spain"),
    ("Rome", "Italy"),
    ("Milan", "Italy"),
    ("Amsterdam", "the Netherlands"),
    ("Stockholm", "Sweden"),
    ("Oslo", "Norway"),
    ("Warsaw", "Poland"),
    ("Vienna", "Austria"),
    ("Zurich", "Switzerland"),
    ("London", "the United Kingdom"),
    ("Dublin", "Ireland"),
    ("New York", "the United States"),
    ("Chicago", "the United States"),
    ("Toronto", "Canada"),
    ("Sydney", "Australia"),
    ("Tokyo", "Japan"),
    ("Singapore", "Singapore"),
    ("Mumbai", "India"),
    ("Sao Paulo", "Brazil"),
)
_MONTHS = _split(
    "January February March April May June July August September October November December"
)
_CURRENCIES = (("$", ""), ("EUR ", ""), ("£", ""), ("", " USD"), ("€", ""))
_PRODUCTS = (
    "wireless headphones",
    "standing desk",
    "coffee grinder",
    "laptop stand",
    "hiking backpack",
    "smart thermostat",
    "office chair",
    "espresso machine",
    "monitor arm",
    "air purifier",
)
_DOMAINS = ("example.com", "mail.example.org", "example.net", "inbox.example.co.uk")
_FEATURES = (
    "export to CSV",
    "the search page",
    "the mobile app",
    "the invoice download",
    "two-factor setup",
    "the dashboard",
    "the checkout page",
    "file upload",
    "the reports tab",
)
_SECTORS = ("logistics", "software", "retail", "energy", "banking", "healthcare", "telecom")


class _Words:
    """Random fragments drawn from one `random.Random`."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def pick(self, items: tuple[str, ...] | list[str]) -> str:
        return items[int(self.r.random() * len(items))]

    def person(self) -> str:
        return f"{self.pick(_FIRST)} {self.pick(_LAST)}"

    def titled(self) -> str:
        return f"{self.pick(_TITLES)} {self.person()}"

    def company(self) -> str:
        return f"{self.pick(_COMPANY_STEMS)}{self.pick(_COMPANY_WORDS)} {self.pick(_SUFFIXES)}"

    def place(self) -> tuple[str, str]:
        return _PLACES[int(self.r.random() * len(_PLACES))]

    def city(self) -> str:
        return self.place()[0]

    def email(self, name: str | None = None) -> str:
        first, last = (name or self.person()).split()[-2:]
        return f"{first.lower()}.{last.lower()}@{self.pick(_DOMAINS)}"

    def date(self) -> str:
        day, month, year = self.r.randint(1, 28), self.pick(_MONTHS), self.r.choice((2024, 2025))
        if self.r.random() < 0.3:
            return f"{year}-{_MONTHS.index(month) + 1:02d}-{day:02d}"
        return f"{day} {month} {year}" if self.r.random() < 0.6 else f"{month} {day}, {year}"

    def money(self, low: int = 5, high: int = 5000) -> str:
        prefix, suffix = self.pick(_CURRENCIES)
        return f"{prefix}{self.r.randint(low, high):,}.{self.r.randint(0, 99):02d}{suffix}"

    def millions(self) -> str:
        prefix, suffix = self.pick(_CURRENCIES)
        return f"{prefix}{self.r.randint(2, 950)}.{self.r.randint(1, 9)} million{suffix}"

    def percent(self) -> str:
        return f"{self.r.randint(1, 40)}.{self.r.randint(0, 9)}%"

    def order(self) -> str:
        return f"#{self.r.randint(100000, 999999)}"

    def number(self, low: int, high: int) -> int:
        return self.r.randint(low, high)


# --------------------------------------------------------------------------- sentences

Sentence = Callable[[_Words], str]

_TICKET_SENTENCES: dict[str, tuple[Sentence, ...]] = {
    "billing": (
        lambda w: f"My card was charged {w.money()} twice for order {w.order()}.",
        lambda w: f"The invoice dated {w.date()} shows {w.money()} but I paid {w.money()}.",
        lambda w: f"Please refund the duplicate payment of {w.money()} to my card.",
        lambda w: "I was billed for a subscription I cancelled last month.",
        lambda w: f"The VAT on invoice {w.order()} looks wrong to me.",
        lambda w: f"Can you send a corrected invoice for {w.money()} with our company name?",
        lambda w: "The payment went through but my account still shows it as unpaid.",
        lambda w: f"Your billing team promised a credit of {w.money(5, 200)} on {w.date()}.",
        lambda w: "I would like to know why the monthly charge went up without notice.",
        lambda w: f"My bank statement lists a charge from {w.company()} I do not recognise.",
    ),
    "shipping": (
        lambda w: f"Order {w.order()} ({w.pick(_PRODUCTS)}) has not arrived yet.",
        lambda w: f"The tracking page says the parcel left {w.city()} on {w.date()}.",
        lambda w: "The courier marked the parcel as delivered but nothing was left at my door.",
        lambda w: f"The delivery was promised for {w.date()} and it is now a week late.",
        lambda w: f"The box arrived damaged and the {w.pick(_PRODUCTS)} inside is broken.",
        lambda w: f"Can you ship the replacement to our office in {w.city()} instead?",
        lambda w: f"I paid {w.money(5, 60)} for express shipping and it took ten days.",
        lambda w: "The shipment seems stuck in customs with no update since Monday.",
        lambda w: f"The carrier, {w.company()}, says they never received the parcel.",
        lambda w: "Please tell me when the delivery will be rescheduled.",
    ),
    "account": (
        lambda w: "I cannot log in to my account since the password reset.",
        lambda w: f"The reset link sent on {w.date()} says it has expired.",
        lambda w: "My account was locked after three failed login attempts.",
        lambda w: f"Please change the email on my account to {w.email()}.",
        lambda w: "I never receive the two-factor code by text message.",
        lambda w: "Someone may have accessed my account from an unknown device.",
        lambda w: f"I want to close the account I opened on {w.date()}.",
        lambda w: "The login page keeps sending me back to the start.",
        lambda w: f"My colleague {w.person()} needs access to our team account.",
        lambda w: "Please confirm that my password was changed by your support team.",
    ),
    "bug": (
        lambda w: f"The app crashes every time I open {w.pick(_FEATURES)}.",
        lambda w: f"Since the update on {w.date()}, {w.pick(_FEATURES)} shows an error 500.",
        lambda w: f"Clicking save on {w.pick(_FEATURES)} does nothing at all.",
        lambda w: "The error message says 'unexpected token' and the page freezes.",
        lambda w: f"The totals in {w.pick(_FEATURES)} are off by {w.percent()}.",
        lambda w: "I attached a screenshot of the crash and the console log.",
        lambda w: f"This bug affects {w.number(3, 80)} users in our {w.city()} office.",
        lambda w: "Steps to reproduce: sign in, open settings, press the sync button.",
        lambda w: "The broken feature worked fine in the previous version.",
        lambda w: "Please let me know if you need more details to fix the bug.",
    ),
}

_NEWS_SENTENCES: tuple[Sentence, ...] = (
    lambda w: (
        f"{w.company()} said on {w.date()} that quarterly revenue rose {w.percent()} "
        f"to {w.millions()}."
    ),
    lambda w: (
        f"{w.titled()}, {w.pick(_ROLES)} of {w.company()}, told reporters in "
        f"{w.city()} that demand remained strong."
    ),
    lambda w: f"Shares of {w.company()} fell {w.percent()} after the company cut its outlook.",
    lambda w: f"The deal values {w.company()} at {w.millions()}, analysts in {w.city()} said.",
    lambda w: (
        f"{w.company()} plans to open a new plant in {w.city()}, creating {w.number(50, 900)} jobs."
    ),
    lambda w: (
        f"Regulators in {w.place()[1]} opened an inquiry into the {w.pick(_SECTORS)} "
        "market last week."
    ),
    lambda w: f"According to {w.titled()}, margins could improve by {w.percent()} next year.",
    lambda w: (
        f"The {w.pick(_SECTORS)} sector grew {w.percent()} in {w.place()[1]} in {w.pick(_MONTHS)}."
    ),
    lambda w: f"{w.company()} agreed to buy a stake in {w.company()} for {w.millions()}.",
    lambda w: f"Investors will watch the results due on {w.date()} for signs of recovery.",
    lambda w: f"{w.person()}, an analyst at {w.company()}, expects prices to stay high.",
    lambda w: f"The company employs {w.number(200, 40000):,} people across {w.place()[1]}.",
)

_CONTRACT_SENTENCES: tuple[Sentence, ...] = (
    lambda w: (
        f"The Customer shall pay {w.money(500, 90000)} within {w.number(14, 60)} days "
        "of each invoice."
    ),
    lambda w: (
        f"Either party may terminate this Agreement with {w.number(30, 180)} days' written notice."
    ),
    lambda w: (
        "The Supplier shall keep all Confidential Information secret during the term "
        "and for five years after."
    ),
    lambda w: f"This Agreement is governed by the laws of {w.place()[1]}.",
    lambda w: f"Late payments bear interest at {w.percent()} per year.",
    lambda w: f"The liability of each party is capped at {w.money(10000, 900000)}.",
    lambda w: f"The term starts on {w.date()} and renews for successive one-year periods.",
    lambda w: f"Notices must be sent to {w.email()} and confirmed in writing.",
    lambda w: "Neither party is liable for delays caused by force majeure events.",
    lambda w: f"Disputes shall be settled by arbitration in {w.city()}.",
    lambda w: "The Supplier warrants that the services will be performed with due care.",
    lambda w: (
        "Either party may terminate immediately if the other commits a material breach "
        f"that is not remedied within {w.number(10, 45)} days."
    ),
    lambda w: (
        f"{w.company()} shall provide support from its office in {w.city()} on business days."
    ),
    lambda w: f"The fees increase by {w.percent()} on {w.date()} and on each anniversary after.",
    lambda w: (
        f"The Supplier appoints {w.titled()} as its representative, reachable at {w.email()}."
    ),
    lambda w: (
        f"A service credit of {w.money(100, 5000)} applies for each hour of downtime "
        "beyond the agreed level."
    ),
    lambda w: f"On termination the Customer shall pay all invoices due up to {w.date()}.",
    lambda w: (
        f"Section {w.number(2, 30)}.{w.number(1, 9)} survives the termination of this Agreement."
    ),
)


# Context any ticket may carry, whatever its topic.
_TICKET_CONTEXT: tuple[Sentence, ...] = (
    lambda w: f"I have been a customer of {w.company()} since {w.number(2012, 2023)}.",
    lambda w: f"You can reach me at {w.email()} or by phone after 5 pm.",
    lambda w: f"My colleague {w.titled()} raised a similar ticket on {w.date()}.",
    lambda w: f"We are based in {w.city()}, so please keep the time difference in mind.",
    lambda w: f"This is the {w.pick(('second', 'third', 'fourth'))} time I am writing about it.",
    lambda w: f"Our reference with your sales team is {w.order()}.",
    lambda w: "I would appreciate an answer before the end of the week.",
    lambda w: f"I already spoke to {w.person()} on the phone, without result.",
)


def _pool_key(kind: str, topic: str) -> str:
    return topic if kind == "ticket" else kind


def _sentences_for(key: str) -> tuple[Sentence, ...]:
    if key == "news":
        return _NEWS_SENTENCES
    if key == "contract":
        return _CONTRACT_SENTENCES
    return _TICKET_SENTENCES[key]


def _pools(seed: int) -> dict[str, list[str]]:
    """Generated padding sentences per ticket topic, news and contract (seeded)."""
    pools = {}
    for number, key in enumerate((*TICKET_TOPICS, "news", "contract")):
        words = _Words(random.Random(seed * 7919 + number))
        makers = _sentences_for(key)
        if key in TICKET_TOPICS:
            makers = makers + makers + _TICKET_CONTEXT  # mostly on topic
        pool: dict[str, None] = {}  # ordered and distinct: no verbatim repeat in a document
        while len(pool) < _POOL_SIZE:
            pool[words.pick(makers)(words)] = None
        pools[key] = list(pool)
    return pools


# --------------------------------------------------------------------------- documents


def _some(w: _Words, makers: tuple[Sentence, ...], low: int, high: int) -> str:
    """Between `low` and `high` sentences from distinct templates."""
    return " ".join(make(w) for make in w.r.sample(makers, w.number(low, high)))


def _ticket(w: _Words, topic: str) -> tuple[str, str]:
    name = w.person()
    subject = {
        "billing": "Question about my invoice",
        "shipping": "Where is my parcel?",
        "account": "Cannot access my account",
        "bug": "Bug report",
    }[topic]
    head = (
        f"Subject: {subject} (order {w.order()})\n\n"
        f"Hello support team,\n\n{_some(w, _TICKET_SENTENCES[topic], 2, 4)}"
    )
    tail = (
        f" I contacted you on {w.date()} and again today.\n\nKind regards,\n{name}\n{w.email(name)}"
    )
    return head, tail


def _news(w: _Words) -> tuple[str, str]:
    company, city = w.company(), w.place()
    lead = (
        f"{city[0]}, {w.date()}: {company} reported a {w.percent()} rise in profit to "
        f"{w.millions()}, beating forecasts. {w.titled()}, {w.pick(_ROLES)} of {company}, said "
        f"the company would expand in {city[1]}."
    )
    return f"{lead} {_some(w, _NEWS_SENTENCES, 2, 4)}", ""


def _contract(w: _Words) -> tuple[str, str]:
    supplier, customer = w.company(), w.company()
    opening = (
        f"Clause {w.number(2, 19)}. This Services Agreement is made on {w.date()} between "
        f"{supplier}, a company registered in {w.place()[1]} (the Supplier), and {customer} "
        "(the Customer)."
    )
    head = f"{opening} {_some(w, _CONTRACT_SENTENCES, 2, 4)}"
    return head, f" Signed for the Supplier by {w.titled()}."


def _pad(
    head: str, tail: str, pool: list[str], w: _Words, target_chars: int | None, extra: int
) -> str:
    """Insert distinct pool sentences before `tail`: up to `target_chars`, or `extra` of them."""
    parts = [head]
    size = len(head) + len(tail)
    index = int(w.r.random() * _POOL_SIZE)
    stride = 1 + int(w.r.random() * (_POOL_SIZE - 1))
    for added in range(_POOL_SIZE):
        if (size >= target_chars) if target_chars is not None else (added >= extra):
            break
        sentence = pool[index]
        parts.append(sentence)
        size += len(sentence) + 1
        index = (index + stride) % _POOL_SIZE
    return " ".join(parts) + tail


def _iter_batches(
    n: int, seed: int, target_chars: int | None, batch_rows: int = _BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The corpus in record batches; the same rows whatever `batch_rows` is."""
    if n < 0:
        raise ValueError("n must be >= 0")
    words = _Words(random.Random(seed))
    pools = _pools(seed)
    kinds = ("ticket", "ticket", "news", "contract")  # tickets are the common case
    for start in range(0, n, batch_rows):
        ids, texts, kind_column, created = [], [], [], []
        for number in range(start, min(n, start + batch_rows)):
            kind = words.pick(kinds)
            topic = words.pick(TICKET_TOPICS) if kind == "ticket" else kind
            if kind == "ticket":
                head, tail = _ticket(words, topic)
            elif kind == "news":
                head, tail = _news(words)
            else:
                head, tail = _contract(words)
            extra = 0 if target_chars is not None else words.number(0, 3)
            text = _pad(head, tail, pools[_pool_key(kind, topic)], words, target_chars, extra)
            ids.append(f"doc-{number + 1:06d}")
            texts.append(text)
            kind_column.append(kind)
            created.append(_EPOCH_2025_MS + int(words.r.random() * _YEAR_MS))
        yield pa.record_batch(
            [
                pa.array(ids, pa.string()),
                pa.array(texts, pa.string()),
                pa.array(kind_column, pa.string()),
                pa.array(created, SCHEMA.field("created_at").type),
            ],
            schema=SCHEMA,
        )


def generate_documents(n: int, seed: int = 7, target_chars: int | None = None) -> pa.Table:
    """`n` documents with columns id, text, kind (ticket|news|contract) and created_at."""
    return pa.Table.from_batches(list(_iter_batches(n, seed, target_chars)), schema=SCHEMA)


def write_corpus(path: str, n: int, seed: int = 7, target_chars: int | None = None) -> str:
    """Write the corpus to one Parquet file, batch by batch (memory stays flat); returns path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(target, SCHEMA, compression="zstd") as writer:
        for batch in _iter_batches(n, seed, target_chars):
            writer.write_batch(batch, row_group_size=_BATCH_ROWS)
    return str(target)

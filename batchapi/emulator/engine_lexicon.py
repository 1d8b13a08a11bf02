"""Word lists for the heuristic entity recognizers: small, built in, and easy to extend."""

from __future__ import annotations

from batchapi.emulator.engine_text import word_set


def _lines(block: str) -> frozenset[str]:
    return frozenset(line.strip() for line in block.strip().splitlines() if line.strip())


COUNTRIES = _lines(
    """
    Afghanistan
    Albania
    Algeria
    Argentina
    Armenia
    Australia
    Austria
    Bangladesh
    Belgium
    Bolivia
    Bosnia and Herzegovina
    Brazil
    Bulgaria
    Cambodia
    Cameroon
    Canada
    Chile
    China
    Colombia
    Costa Rica
    Croatia
    Cuba
    Cyprus
    Czech Republic
    Czechia
    Denmark
    Ecuador
    Egypt
    England
    Estonia
    Ethiopia
    Finland
    France
    Georgia
    Germany
    Ghana
    Greece
    Guatemala
    Hungary
    Iceland
    India
    Indonesia
    Iran
    Iraq
    Ireland
    Israel
    Italy
    Jamaica
    Japan
    Jordan
    Kazakhstan
    Kenya
    Korea
    Kuwait
    Latvia
    Lebanon
    Lithuania
    Luxembourg
    Malaysia
    Malta
    Mexico
    Morocco
    Nepal
    Netherlands
    New Zealand
    Nigeria
    North Korea
    Norway
    Pakistan
    Panama
    Peru
    Philippines
    Poland
    Portugal
    Qatar
    Romania
    Russia
    Saudi Arabia
    Scotland
    Senegal
    Serbia
    Singapore
    Slovakia
    Slovenia
    South Africa
    South Korea
    Spain
    Sri Lanka
    Sweden
    Switzerland
    Syria
    Taiwan
    Tanzania
    Thailand
    Tunisia
    Turkey
    Türkiye
    Uganda
    Ukraine
    United Arab Emirates
    United Kingdom
    United States
    United States of America
    Uruguay
    Venezuela
    Vietnam
    Wales
    Zambia
    Zimbabwe
    UK
    U.K.
    US
    U.S.
    USA
    U.S.A.
    UAE
    EU
    European Union
    Africa
    Asia
    Europe
    North America
    South America
    Latin America
    Middle East
    Scandinavia
    Antarctica
    Oceania
    """
)

CITIES = _lines(
    """
    Abu Dhabi
    Amsterdam
    Athens
    Atlanta
    Auckland
    Austin
    Bangalore
    Bangkok
    Barcelona
    Beijing
    Berlin
    Bern
    Bogotá
    Bogota
    Boston
    Brussels
    Bucharest
    Budapest
    Buenos Aires
    Cairo
    Calgary
    Cape Town
    Chicago
    Copenhagen
    Dallas
    Delhi
    Denver
    Detroit
    Dubai
    Dublin
    Edinburgh
    Frankfurt
    Geneva
    Hamburg
    Helsinki
    Ho Chi Minh City
    Hong Kong
    Houston
    Istanbul
    Jakarta
    Johannesburg
    Kyiv
    Kiev
    Kuala Lumpur
    Lagos
    Las Vegas
    Lima
    Lisbon
    Ljubljana
    London
    Los Angeles
    Lyon
    Madrid
    Manchester
    Manila
    Marseille
    Melbourne
    Mexico City
    Miami
    Milan
    Montreal
    Montréal
    Moscow
    Mumbai
    Munich
    München
    Nairobi
    New Delhi
    New York
    New York City
    Osaka
    Oslo
    Ottawa
    Paris
    Philadelphia
    Phoenix
    Prague
    Rio de Janeiro
    Riyadh
    Rome
    Rotterdam
    San Diego
    San Francisco
    San Jose
    Santiago
    São Paulo
    Sao Paulo
    Seattle
    Seoul
    Shanghai
    Shenzhen
    Stockholm
    Sydney
    Taipei
    Tel Aviv
    Tokyo
    Toronto
    Vancouver
    Vienna
    Warsaw
    Washington
    Washington D.C.
    Zurich
    Zürich
    California
    Texas
    Florida
    Bavaria
    Ontario
    Quebec
    Silicon Valley
    """
)

LOCATIONS: frozenset[str] = COUNTRIES | CITIES
LOCATIONS_LOWER: frozenset[str] = frozenset(name.lower() for name in LOCATIONS)

FIRST_NAMES: frozenset[str] = word_set("""
    aaron adam adrian ahmed aisha alan albert alex alexander alexandra alice alicia amanda amelia
    amy ana andrea andrew angela anna anne anthony antonio arjun barbara ben benjamin beth brian
    carlos carol caroline catherine charles charlotte chen chris christina christopher claire
    daniel david deborah diana diego dmitri donald dorothy edward elena elizabeth ella emily
    emma eric emilia fatima francesca francisco frank gabriel gary george grace hannah hans
    harry helen henry hiroshi ian isabella jack jacob james jan jane janet jason javier jean
    jennifer jessica jim joan joe john jonathan jorge jose josé joseph joshua juan julia
    julie karen kate katherine kenji kevin laura lauren li liam linda lisa lucas lucy luis
    maria marie mark martin mary matthew mei michael michelle mohammed muhammad nancy natalie
    nicholas nina noah olivia omar oscar patricia paul peter priya rachel raj rebecca richard
    robert rosa ryan sam samuel sandra sara sarah sean sofia sophia sophie stephen steven susan
    thomas tim timothy tom wei william yuki zoe zoë
    """)

TITLES: frozenset[str] = word_set("mr mrs ms mx dr prof professor sir dame madam miss lord lady")

# Legal forms that end a company name.
LEGAL_SUFFIXES: frozenset[str] = word_set(
    "inc inc. ltd ltd. llc l.l.c. gmbh corp corp. co co. plc ag sa s.a. nv bv llp lp "
    "oy ab sarl sas spa s.p.a. kg pty limited corporation incorporated"
)

# Words that make a capitalised phrase an organisation wherever they occur in it.
ORG_WORDS: frozenset[str] = word_set("""
    agency airlines airways association bancorp bank board capital college committee company
    consulting council department federation foundation fund group holdings hospital
    industries institute insurance labs laboratories logistics media ministry motors
    network networks partners pharma pharmaceuticals police school services software
    solutions systems technologies technology telecom university ventures
    """)

# Heads after which " of " stays inside an organisation or place name ("Bank of England").
OF_HEADS: frozenset[str] = word_set("""
    bank university institute department ministry museum republic school college board
    council city state kingdom commonwealth federation association society office bureau
    church court duke house
    """)

NAME_PARTICLES: frozenset[str] = word_set("de del della der den van von da di du le la bin al")

# Capitalised words that do not start a name: days, months, greetings, sentence adverbs.
COMMON_CAPS: frozenset[str] = word_set("""
    monday tuesday wednesday thursday friday saturday sunday january february march april may
    june july august september october november december today tomorrow yesterday tonight
    dear hello hi hey thanks thank please regards sincerely best cheers kind yours
    additionally also although meanwhile moreover furthermore overall finally first second
    third next then however therefore unfortunately fortunately yes no note subject re fwd
    attn attention summary update report order invoice customer customers team all dear
    """)

# All-capital words that are not organisations.
COMMON_ACRONYMS: frozenset[str] = word_set("""
    CEO CFO CTO COO CIO VP HR IT PR QA FAQ PDF API SDK URL HTTP HTTPS AI ML OK ASAP FYI ETA
    TBD ID PIN SKU VAT GDP KPI ROI USD EUR GBP JPY CHF CAD AUD INR CNY AM PM GMT UTC CET EST
    PST NB PS RE FW FWD TL DR NA CSV XML JSON HTML SQL USB GPS SMS PO TV
    """)

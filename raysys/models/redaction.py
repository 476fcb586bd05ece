"""PII redaction: personal data in call text is replaced by typed tags before it is stored or leaves.

What is found (issue 17 part 3), each replaced by its tag:

- ``[CARD]`` payment card numbers (13-19 digits, Luhn-checked, a known card prefix; or any 13-19 digits
  right after card words such as "card number"), ``[CVV]`` the card's security code after its cue,
  ``[PIN]`` a PIN or passcode after its cue;
- ``[ACCOUNT]`` bank account numbers (after "account"), IBANs (mod-97 checked), US routing numbers
  (ABA-checked, after "routing"); ``[SORT_CODE]`` UK sort codes (``12-34-56``, or 6 digits after "sort code");
- ``[PHONE]`` phone numbers valid for their country (Google's ``phonenumbers`` metadata; national numbers
  are tried in ``PII_PHONE_REGIONS``), or 7-15 digits right after phone words;
- ``[EMAIL]`` e-mail addresses, written or spoken ("jane dot doe at gmail dot com");
- ``[SSN]`` US social security numbers (``123-45-6789`` with valid ranges, or 9 digits after "social");
  ``[NINO]`` UK National Insurance numbers (the HMRC prefix rules);
- ``[DOB]`` dates of birth: a date after a birth cue ("date of birth", "born", "DOB", also in the turn
  before), or a full date with a year 1920-2010 without a cue that it is some other event;
- ``[ADDRESS]`` street addresses (house number + street name + street type, town and postcode after it)
  and UK postcodes.

Spoken digits are read as digits first ("four one one one", "oh seven seven double oh ..."), so every
rule holds for transcribed speech too; :func:`redact_turns` also joins a number read out over several
turns of one speaker (a card number given in two halves, the agent saying "go on" in between).

What is kept: numbers that fail these checks (an order number that fails Luhn, "press one"), times,
amounts and prices, dates that are not birth dates where the text says so. Limits: names of people
are not found; an address needs a house number and a street type; a card number misheard by speech
recognition is found only after card words.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import phonenumbers

KINDS = ("CARD", "CVV", "PIN", "ACCOUNT", "SORT_CODE", "PHONE", "EMAIL", "SSN", "NINO", "DOB", "ADDRESS")
DEFAULT_REGIONS = ("GB", "US")


def tag(kind: str) -> str:
    return f"[{kind}]"


@dataclass(frozen=True)
class Span:
    """``text[start:end]`` is personal data of ``kind`` (one of :data:`KINDS`)."""

    start: int
    end: int
    kind: str


@dataclass
class Redacted:
    """A text with its PII replaced: ``text``, the ``spans`` found in the original, counts per kind."""

    text: str
    spans: list[Span] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.spans))


# --- checksums -------------------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)


def _ssn_ok(digits: str) -> bool:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return len(digits) == 9 and area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _aba_ok(digits: str) -> bool:
    if len(digits) != 9:
        return False
    d = [int(c) for c in digits]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0


def _iban_ok(raw: str) -> bool:
    s = re.sub(r"\s", "", raw).upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# --- spoken digits -----------------------------------------------------------------------------------------

_DIGIT_WORDS = {"zero": "0", "nought": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3",
                "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_TEEN_DIGITS = {w: str(10 + i) for i, w in enumerate(("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                                                 "sixteen", "seventeen", "eighteen", "nineteen"))}
_TENS_DIGIT = {w: str(2 + i) for i, w in enumerate(("twenty", "thirty", "forty", "fifty", "sixty", "seventy",
                                                    "eighty", "ninety"))}
_REPEAT = {"double": 2, "triple": 3}
_FILLERS = {"um", "uh", "er", "erm", "ah", "hmm"}
_WORD = re.compile(r"[A-Za-z]+|\d+")


def _digit_view(text: str) -> tuple[str, list[tuple[int, int, int, int]]]:
    """``text`` with runs of spoken digits written as digits, and the segments mapping it back.

    A run is three or more digits spoken in a row (fillers and commas allowed between them); a comma or
    full stop inside a run becomes a space, so spoken groups stay groups. Segments are
    ``(view_start, view_end, text_start, text_end)`` for the replaced runs.
    """
    words = list(_WORD.finditer(text))
    runs: list[tuple[int, int, str]] = []  # (text start, text end, digits with group spaces)
    i = 0
    while i < len(words):
        j, digits, end, last, spoken = i, "", None, None, 0
        while j < len(words):
            w = words[j].group().lower()
            if end is not None and not re.fullmatch(r"[\s,.\-]*", text[end:words[j].start()]):
                break
            gap = "" if last is None else (" " if re.search(r"[,.\-]", text[last:words[j].start()]) else "")
            if w in _DIGIT_WORDS:
                digits += gap + _DIGIT_WORDS[w]
                spoken += w not in ("oh", "o")
            elif w in _TEEN_DIGITS:
                digits += gap + _TEEN_DIGITS[w]
                spoken += 1
            elif w in _TENS_DIGIT:  # "forty one eleven" is 4111; "twenty" alone 20
                unit = words[j + 1].group().lower() if j + 1 < len(words) else ""
                if unit in _DIGIT_WORDS and unit not in ("zero", "nought", "oh", "o") and \
                        not text[words[j].end():words[j + 1].start()].strip(" -"):
                    digits += gap + _TENS_DIGIT[w] + _DIGIT_WORDS[unit]
                    j += 1
                else:
                    digits += gap + _TENS_DIGIT[w] + "0"
                spoken += 1
            elif w in _REPEAT and j + 1 < len(words) and words[j + 1].group().lower() in _DIGIT_WORDS:
                digits += gap + _DIGIT_WORDS[words[j + 1].group().lower()] * _REPEAT[w]
                spoken += 1
                j += 1
            elif w in _FILLERS and digits:
                end = words[j].end()
                j += 1
                continue
            else:
                break
            end = last = words[j].end()
            j += 1
        if spoken and len(digits.replace(" ", "")) >= 3 and last is not None:
            begin = words[i].start()
            if i and words[i - 1].group().lower() == "plus" and not text[words[i - 1].end():begin].strip():
                begin, digits = words[i - 1].start(), "+" + digits.strip()  # "plus four four ..."
            runs.append((begin, last, digits.strip()))
            i = j
        else:
            i += 1
    view, segments, pos = [], [], 0
    length = 0
    for start, end, digits in runs:
        view.append(text[pos:start])
        length += start - pos
        segments.append((length, length + len(digits), start, end))
        view.append(digits)
        length += len(digits)
        pos = end
    view.append(text[pos:])
    return "".join(view), segments


class _Mapper:
    """Offsets in the digit view back to offsets in the original text."""

    def __init__(self, segments: list[tuple[int, int, int, int]]) -> None:
        self.segments = segments
        self.starts = [s[0] for s in segments]

    def _map(self, p: int, end: bool) -> int:
        i = bisect.bisect_right(self.starts, p - 1 if end else p) - 1
        if i < 0:
            return p
        v0, v1, t0, t1 = self.segments[i]
        if (p <= v1) if end else (p < v1):
            return t1 if end else t0
        return t1 + (p - v1)

    def span(self, start: int, end: int) -> tuple[int, int]:
        return self._map(start, False), self._map(end, True)


# --- cues ------------------------------------------------------------------------------------------------

_CUES = {
    "CARD": re.compile(r"\b(card|visa|master ?card|amex|american express|debit|credit|long number)(?: number)?\b"),
    "CVV": re.compile(r"\b(security code|cvv|cvc|cv2|three digits|3 digits|back of the card)\b"),
    "ACCOUNT": re.compile(r"\b(account|acct|a/c|iban|routing)(?: number| no\b\.?| num\b)?"),
    "PIN": re.compile(r"\b(pin|passcode)(?: number)?\b"),
    "SORT_CODE": re.compile(r"\bsort ?code\b"),
    "SSN": re.compile(r"\b(social security|ssn|social)(?: number)?\b"),
    "PHONE": re.compile(r"\b(phone|mobile|cell|landline|telephone|call me|call you|reach me|text me|"
                        r"contact number|number to call|ring me|whatsapp)\b"),
    "DOB": re.compile(r"\b(date of birth|birth ?date|birthday|dob|d\.o\.b|born)\b"),
    "NINO": re.compile(r"\b(national insurance|ni number|nino|insurance number)(?: number)?\b"),
    "ZIP": re.compile(r"\b(zip|zip code|postcode|post code|postal code)\b"),
}
# Numbers that are not personal data: an order or ticket number read out is kept.
_KEEP_CUE = re.compile(r"\b(order|reference|ref|ticket|case|invoice|tracking|confirmation|booking|policy|"
                       r"claim|parcel|receipt|transaction|model|serial|product|item|flight|customer|member|membership)"
                       r"(?: number| no\b\.?| num\b| id\b)?")
_WEAK_PHONE = re.compile(r"\b(?:number|no\.|reach|contact|call|ring|dial)\b")
_NOT_BIRTH = re.compile(r"\b(since|opened|joined|purchased|bought|ordered|paid|payment|moved|started|signed|"
                        r"delivered|delivery|arrived|appointment|due|expir\w*|issued|renew\w*|booked|until|by|"
                        r"from|on|last|next)\b\W*$")


def _cue(kind: str, before: str, reach: int = 48) -> bool:
    """Whether a cue word of ``kind`` ends within ``reach`` characters before the match."""
    return bool(_CUES[kind].search(before[-reach:].lower()))


def _nearest(before: str, reach: int = 48) -> str | None:
    """The kind whose cue is closest before the match (``keep`` for order numbers and the like)."""
    tail = before[-reach:].lower()
    best, where = None, (-1, -1)
    for kind, pattern, strength in [*((k, p, 1) for k, p in _CUES.items()), ("keep", _KEEP_CUE, 2),
                                    ("PHONE", _WEAK_PHONE, 0)]:
        for m in pattern.finditer(tail):
            if (m.end(), strength) > where:
                best, where = kind, (m.end(), strength)
    return best


# --- numbers ---------------------------------------------------------------------------------------------

_GROUP = re.compile(r"(?<![\w/:.])(\+\s?)?\(?\d(?:(?:[ \-.]|\s*\)\s*|\s\(){1,2}\d|\d)*(?![\w/:]|\.\d)")
_CLUSTER = re.compile(r"\d+")


def _phone_ok(digits: str, plus: bool, regions: Sequence[str]) -> bool:
    if not 7 <= len(digits) <= 15:
        return False
    tries = [("+" + digits, None)] if plus else [("+" + digits[2:], None)] if digits.startswith("00") else []
    tries += [] if plus else [(digits, r) for r in regions]
    for number, region in tries:
        try:
            parsed = phonenumbers.parse(number, region)
            # Valid for its country; or of a possible length and dialled with a trunk or "+" prefix (a number
            # in a range the metadata reserves, such as 07700 900xxx, is still somebody's to read out).
            if phonenumbers.is_valid_number(parsed) or (
                    (plus or digits[0] == "0") and phonenumbers.is_possible_number(parsed)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def _card_window(clusters: list[tuple[int, int]], view: str) -> tuple[int, int] | None:
    """The longest valid card number inside a group that starts and ends at its cluster boundaries (so a
    card read with its expiry or security code after it is found, and no card inside a longer number)."""
    digit_pos = [p for a, b in clusters for p in range(a, b)]
    digits = "".join(view[p] for p in digit_pos)
    bounds, k = [0], 0
    for a, b in clusters:
        k += b - a
        bounds.append(k)
    best: tuple[int, int] | None = None
    for x in bounds[:-1]:
        for y in bounds:
            if 13 <= y - x <= 19 and _card_ok(digits[x:y]) and (best is None or y - x > best[1] - best[0]):
                best = (x, y)
    if best is None:
        return None
    return digit_pos[best[0]], digit_pos[best[1] - 1] + 1


def _classify_group(view: str, m: re.Match, before: str, regions: Sequence[str]) -> list[tuple[int, int, str]]:
    """What a group of digits in the digit view is, from its checksums, its shape and the nearest cue."""
    raw = m.group()
    start, end = m.start(), m.end()
    plus = bool(m.group(1))
    clusters = [(start + c.start(), start + c.end()) for c in _CLUSTER.finditer(raw)]
    digits = "".join(view[a:b] for a, b in clusters)
    n = len(digits)
    cue = _nearest(before)
    sizes = [b - a for a, b in clusters]
    # A valid card number is a card number whatever precedes it ("the card for the order is ...").
    window = None if plus or cue in ("CVV", "PIN", "SORT_CODE", "ACCOUNT", "SSN") else _card_window(clusters, view)
    if window is not None:
        return [(window[0], window[1], "CARD")]
    if cue == "keep":
        return []
    if cue == "CVV" and n in (3, 4):
        return [(start, end, "CVV")]
    if cue == "PIN" and 4 <= n <= 6:
        return [(start, end, "PIN")]
    if cue == "SORT_CODE" and n == 6:
        return [(start, end, "SORT_CODE")]
    if cue == "ACCOUNT" and 6 <= n <= 17:
        return [(start, end, "ACCOUNT")]
    if cue == "SSN" and n == 9 and _ssn_ok(digits):
        return [(start, end, "SSN")]
    if cue == "NINO":
        return []  # the NINO rule reads letters and digits together
    if not plus and cue == "CARD" and 13 <= n <= 19:
        return [(start, end, "CARD")]
    if sizes == [2, 2, 2] and re.fullmatch(r"\d\d-\d\d-\d\d", raw):
        return [(start, end, "SORT_CODE")]
    if sizes == [3, 2, 4] and _ssn_ok(digits) and re.fullmatch(r"\d{3}[- ]\d{2}[- ]\d{4}", raw):
        return [(start, end, "SSN")]
    if _phone_ok(digits, plus, regions) or (cue == "PHONE" and 7 <= n <= 15):
        return [(start, end, "PHONE")]
    if cue == "ZIP" and n in (5, 9):
        return [(start, end, "ADDRESS")]
    return []


# --- patterns on the text ----------------------------------------------------------------------------------

_TLD = r"(?:com|co|org|net|uk|ie|edu|gov|io|info|biz|us|ca|au|de|fr|me|ac)"
_EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_SPOKEN_EMAIL = re.compile(
    rf"\b[\w+-]+(?:(?:\s+(?:dot|underscore|dash|hyphen)\s+|[._-])[\w+-]+)*(?:\s+at\s+|\s*@\s*)"
    rf"[\w-]+(?:(?:\s+dot\s+|\.)[\w-]+)*?(?:\s+dot\s+|\.){_TLD}(?:(?:\s+dot\s+|\.)[a-z]{{2,3}})?\b", re.I)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]){11,30}\b")
_NINO = re.compile(r"\b([A-CEGHJ-PR-TW-Z])\s?([A-CEGHJ-NPR-TW-Z])\s?((?:\d\s?){6})([A-D])\b", re.I)
_NINO_BAD_PREFIX = {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}
_POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b")
_POSTCODE_ANY_CASE = re.compile(_POSTCODE.pattern, re.I)

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_ORDINALS = (r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
             r"fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth|"
             r"(?:twenty|thirty)[\s-](?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth))")
_UNITS = r"(?:one|two|three|four|five|six|seven|eight|nine)"
_TEENS = r"(?:ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)"
_TENS = r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
_UNDER_100 = rf"(?:{_TENS}(?:[\s-]{_UNITS})?|{_TEENS}|{_UNITS})"
_SPOKEN_YEAR = rf"(?:nineteen[\s-]{_UNDER_100}|two thousand(?:\s+and)?(?:\s+{_UNDER_100})?|twenty[\s-]{_UNDER_100})"
_YEAR = rf"(?:\d{{4}}|{_SPOKEN_YEAR})"
_DAY = rf"(?:\d{{1,2}}(?:st|nd|rd|th)?|{_ORDINALS})"
_DATE = re.compile(
    rf"\b(?:\d{{1,2}}[/.\-]\d{{1,2}}[/.\-](?:\d{{4}}|\d{{2}})"
    rf"|(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTHS}\b(?:,?\s+{_YEAR})?"
    rf"|{_MONTHS}\s+(?:the\s+)?{_DAY}\b(?:,?\s+{_YEAR})?"
    rf"|{_MONTHS}\s+{_YEAR})(?![\w/])", re.I)
_STREET_TYPES = (r"(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|close|way|court|ct|place|pl|boulevard|blvd|"
                 r"crescent|terrace|gardens|grove|park|square|sq|row|mews|walk|parade|highway|hwy|circle|"
                 r"parkway|pkwy|hill|rise|green|view)")
_STOP = {"the", "a", "an", "on", "in", "at", "to", "for", "of", "my", "your", "our", "down", "up", "and", "or",
         "weeks", "days", "months", "years", "hours", "minutes", "times", "miles", "pounds", "dollars", "is",
         "was", "it", "this", "that", "off", "by", "with", "from", "per", "percent", "items", "people", "calls"}
_HOUSE = rf"(?:\d{{1,5}}[a-z]?|{_UNDER_100}(?:\s+hundred(?:\s+(?:and\s+)?{_UNDER_100})?)?)"
_ADDRESS = re.compile(
    rf"\b(?i:(?:(?:flat|apartment|apt|unit|suite)\s+\w+,?\s+)?{_HOUSE}\s+((?:[a-z'\-]+\s+){{1,3}}){_STREET_TYPES}\b\.?)"
    rf"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"  # a US street's direction
    rf"(?:,?\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?(?=,|\s+[A-Z]{{1,2}}\d|\s+[A-Z]{{2}},?\s+\d{{5}}|\s*$|[.?!]))?"  # town
    rf"(?:,?\s+[A-Z]{{1,2}}\d[A-Z\d]?\s*\d[A-Z]{{2}}\b|,?\s+[A-Z]{{2}},?\s+\d{{5}}(?:-\d{{4}})?\b)?")  # postcode, ZIP


def _year_of(date_text: str) -> int | None:
    m = re.search(r"\d{4}", date_text)
    if m:
        return int(m.group())
    m = re.search(r"/\d{1,2}[/.\-](\d{2})\b|[.\-]\d{1,2}[.\-](\d{2})\b", date_text)
    if m:
        yy = int(m.group(1) or m.group(2))
        return 1900 + yy if yy > 25 else 2000 + yy
    low = date_text.lower()
    if "nineteen" in low:
        return 1950  # a year of the last century, spoken: old enough to be a birth year
    if "two thousand" in low:
        return 2005 if re.search(r"two thousand(?:\s+and)?\s+(one|two|three|four|five|six|seven|eight|nine)\b",
                                 low) else 2015
    return None


def _plausible_date(date_text: str) -> bool:
    parts = re.fullmatch(r"(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}", date_text)
    if not parts:
        return True
    a, b = int(parts.group(1)), int(parts.group(2))
    return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)


def _text_spans(text: str, context: str) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for m in _EMAIL.finditer(text):
        out.append((m.start(), m.end(), "EMAIL"))
    for m in _SPOKEN_EMAIL.finditer(text):
        out.append((m.start(), m.end(), "EMAIL"))
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group()):
            out.append((m.start(), m.end(), "ACCOUNT"))
    for m in _DATE.finditer(text):
        before = context + " " + text[:m.start()]
        if not _plausible_date(m.group()) or _nearest(before) in ("SORT_CODE", "ACCOUNT", "keep"):
            continue
        year = _year_of(m.group())
        cued = _cue("DOB", before, 90)
        has_day = bool(re.search(rf"\d|\b{_ORDINALS}\b", re.sub(_YEAR, "", m.group(), flags=re.I), re.I))
        if cued or (year is not None and 1920 <= year <= 2010 and has_day
                    and not _NOT_BIRTH.search(before[-40:].lower())):
            out.append((m.start(), m.end(), "DOB"))
    for m in _ADDRESS.finditer(text):
        names = m.group(1).split()
        if names and not any(w.lower() in _STOP for w in names):
            out.append((m.start(), m.end(), "ADDRESS"))
    for m in _POSTCODE.finditer(text):
        out.append((m.start(), m.end(), "ADDRESS"))
    for m in _POSTCODE_ANY_CASE.finditer(text):  # "my postcode is sw1a 1aa": lower case only after its cue
        if _cue("ZIP", context + " " + text[:m.start()], 30):
            out.append((m.start(), m.end(), "ADDRESS"))
    return out


def _view_spans(view: str, context: str, regions: Sequence[str]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for m in _NINO.finditer(view):
        prefix = (m.group(1) + m.group(2)).upper()
        written = m.group().isupper() or not re.search(r"[a-z]", m.group())
        if prefix not in _NINO_BAD_PREFIX and (written or _cue("NINO", context + " " + view[:m.start()], 80)):
            out.append((m.start(), m.end(), "NINO"))
    for m in _GROUP.finditer(view):
        out.extend(_classify_group(view, m, context + " " + view[:m.start()], regions))
    return out


def _merge(spans: list[tuple[int, int, str]]) -> list[Span]:
    """Overlapping finds become one: the longest wins its kind; touching ones of one kind join."""
    out: list[Span] = []
    for s, e, k in sorted(spans, key=lambda x: (x[0], -(x[1] - x[0]))):
        if out and s < out[-1].end:
            last = out[-1]
            if e > last.end:
                longer = (e - s) > (last.end - last.start)
                out[-1] = Span(last.start, e, k if longer else last.kind)
            continue
        out.append(Span(s, e, k))
    return out


def find_pii(text: str, context: str = "", regions: Sequence[str] = DEFAULT_REGIONS) -> list[Span]:
    """The PII spans of ``text``, in order and not overlapping.

    ``context``: what was said just before (the previous turns), read for cues only ("what is your date
    of birth?" makes the answer's date a birth date). ``regions``: ISO country codes whose national phone
    numbers are recognised without a ``+`` prefix.
    """
    if not text:
        return []
    view, segments = _digit_view(text)
    mapper = _Mapper(segments)
    found = _text_spans(text, context)
    for s, e, k in _view_spans(view, context, regions):
        a, b = mapper.span(s, e)
        found.append((a, b, k))
    return _merge(found)


def apply_spans(text: str, spans: Sequence[Span]) -> str:
    out, pos = [], 0
    for s in sorted(spans, key=lambda x: x.start):
        out.append(text[pos:s.start])
        out.append(tag(s.kind))
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str, context: str = "", regions: Sequence[str] = DEFAULT_REGIONS) -> Redacted:
    """``text`` with every PII span replaced by its tag (``[CARD]``, ``[PHONE]`` ...)."""
    spans = find_pii(text, context, regions)
    return Redacted(apply_spans(text, spans), spans)

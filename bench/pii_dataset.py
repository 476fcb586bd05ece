"""Build the labelled PII evaluation set ``bench/pii_eval.jsonl`` (templates + random values, fixed seed).

Each line is one item: ``{"id", "kind", "turns": [{"role", "text"}], "spans": [{"turn", "start", "end",
"type"}]}``. ``kind`` is the entity type of a positive item, ``split`` for a number read out over two
customer turns, or ``negative`` for a hard negative (text that must survive: order numbers that fail
Luhn, times, amounts, prices, "press one", dates that are not birth dates, counts, references).

Values are random but well formed: card numbers with a real prefix and a Luhn check digit, phone
numbers that Google's phone metadata accepts (UK mobiles and landlines, US numbers, +44/+1), valid SSN
ranges and National Insurance prefixes. Each value is rendered written ("4111 1111 ...") or spoken
("four one one one, ...", "oh seven seven double oh ..."), in a customer turn answering an agent turn,
sometimes with the cue ("date of birth") only in the agent's question.

    .venv/bin/python bench/pii_dataset.py            # writes bench/pii_eval.jsonl (seed 17)
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import phonenumbers

OUT = Path(__file__).with_name("pii_eval.jsonl")
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FIRST = ["james", "olivia", "mohammed", "sophie", "liam", "amelia", "noah", "isla", "priya", "chen", "maria", "tom"]
LAST = ["smith", "jones", "patel", "williams", "brown", "taylor", "khan", "nguyen", "garcia", "murphy", "wilson"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "hotmail.com", "btinternet.com", "icloud.com", "example.org"]
STREETS = ["Acacia", "Station", "Church", "Victoria", "Mill", "Park", "High", "Oak Tree", "Kingsley", "Elm",
           "Maple", "Riverside", "Green Hill"]
STREET_TYPES = ["Road", "Street", "Avenue", "Lane", "Close", "Drive", "Way", "Crescent", "Gardens", "Court"]
TOWNS = ["Leeds", "Bristol", "Manchester", "Glasgow", "Cardiff", "Norwich", "Boston", "Denver"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ORD = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
       "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
       "twentieth", "twenty first", "twenty second", "twenty third", "twenty fourth", "twenty fifth",
       "twenty sixth", "twenty seventh", "twenty eighth"]
TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}
UNITS = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def asr_style(text: str) -> str:
    return re.sub(r"[,?!]|\.(?=\s|$)", "", text).lower()


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def spoken_digits(digits: str, r: random.Random, groups: list[int] | None = None) -> str:
    words = []
    i = 0
    while i < len(digits):
        d = digits[i]
        if i + 1 < len(digits) and digits[i + 1] == d and r.random() < 0.5:
            words.append("double " + ("oh" if d == "0" else DIGIT_WORDS[int(d)]))
            i += 2
            continue
        words.append("oh" if d == "0" and r.random() < 0.6 else DIGIT_WORDS[int(d)])
        i += 1
    if not groups:
        return " ".join(words)
    out, k, pos = [], 0, 0
    for w in words:  # a comma at group boundaries, as a transcript would punctuate pauses
        n = 2 if w.startswith("double") else 1
        out.append(w)
        pos += n
        if k < len(groups) and pos >= sum(groups[:k + 1]) and pos < len(digits):
            out[-1] += ","
            k += 1
    return " ".join(out)


def card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    body = prefix + "".join(r.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn_digit(body)


def not_luhn(r: random.Random, length: int = 16) -> str:
    while True:
        n = "".join(r.choice("0123456789") for _ in range(length))
        body = n[:-1]
        if n[-1] != luhn_digit(body):
            return n


def phone(r: random.Random) -> tuple[str, str]:
    """(digits as dialled, written form)."""
    while True:
        kind = r.choice(["uk_mobile", "uk_land", "us", "intl_uk", "intl_us"])
        if kind in ("uk_mobile", "intl_uk"):
            nat = "07" + r.choice("4579") + "".join(r.choice("0123456789") for _ in range(8))
        elif kind == "uk_land":
            nat = r.choice(["0113", "0117", "0161", "0141", "0121"]) + r.choice("2345789") + "".join(
                r.choice("0123456789") for _ in range(6))
        else:
            nat = r.choice(["212", "415", "312", "617", "206", "303", "713"]) + r.choice("2345678") + "".join(
                r.choice("0123456789") for _ in range(6))
        region = "US" if kind in ("us", "intl_us") else "GB"
        if not phonenumbers.is_valid_number(phonenumbers.parse(nat, region)):
            continue
        if kind == "uk_mobile":
            return nat, r.choice([f"{nat[:5]} {nat[5:]}", nat, f"{nat[:5]} {nat[5:8]} {nat[8:]}"])
        if kind == "uk_land":
            return nat, f"{nat[:4]} {nat[4:7]} {nat[7:]}"
        if kind == "us":
            return nat, r.choice([f"({nat[:3]}) {nat[3:6]}-{nat[6:]}", f"{nat[:3]}-{nat[3:6]}-{nat[6:]}",
                                  f"{nat[:3]}.{nat[3:6]}.{nat[6:]}"])
        if kind == "intl_uk":
            return "+44" + nat[1:], f"+44 {nat[1:5]} {nat[5:]}"
        return "+1" + nat, f"+1 {nat[:3]} {nat[3:6]} {nat[6:]}"


def spoken_year(y: int) -> str:
    def under100(n: int) -> str:
        if n < 10:
            return "oh " + UNITS[n] if n else "hundred"
        if n < 20:
            return ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                    "eighteen", "nineteen"][n - 10]
        return TENS[n // 10] + (" " + UNITS[n % 10] if n % 10 else "")
    if y >= 2000:
        return "two thousand" + (" and " + UNITS[y - 2000] if y > 2000 else "")
    return "nineteen " + under100(y - 1900)


class Builder:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.items: list[dict] = []

    def add(self, kind: str, turns: list[tuple[str, str]], values: list[tuple[int, str, str]] | tuple = ()) -> None:
        """``values``: (turn index, the value's text as it appears in that turn, type)."""
        spans = []
        if all(not re.search(r"[\d@]", v) for _, v, _ in values) and self.r.random() < 0.5:
            # Speech recognition's style: lower case, no punctuation (spoken values, hard negatives).
            turns = [(role, asr_style(text)) for role, text in turns]
            values = [(turn, asr_style(v), typ) for turn, v, typ in values]
        for turn, value, typ in values:
            start = turns[turn][1].index(value)
            spans.append({"turn": turn, "start": start, "end": start + len(value), "type": typ})
        self.items.append({"id": len(self.items), "kind": kind, "turns": [{"role": a, "text": b} for a, b in turns],
                           "spans": spans})

    def one(self, kind: str, question: str, answers: list[str], value: str, typ: str) -> None:
        answer = self.r.choice(answers).format(v=value)
        if self.r.random() < 0.5:
            self.add(kind, [("customer", answer)], [(0, value, typ)])
        else:
            self.add(kind, [("agent", question), ("customer", answer)], [(1, value, typ)])


def build(seed: int = 17) -> list[dict]:  # one block per entity type reads best
    b = Builder(seed)
    r = b.r
    for _ in range(36):
        n = card(r)
        groups = [4, 6, 5] if len(n) == 15 else [4, 4, 4, 4]
        cuts = [sum(groups[:i]) for i in range(len(groups) + 1)]
        parts = [n[cuts[i]:cuts[i + 1]] for i in range(len(groups))]
        value = r.choice([" ".join(parts), "-".join(parts), n, spoken_digits(n, r, groups), spoken_digits(n, r)])
        b.one("CARD", r.choice(["Can I take the long number on the card?", "What's the card number please?",
                                "And the sixteen digits across the front?"]),
              ["it's {v}", "yeah {v}", "ok so {v}", "the number is {v} and it expires next year",
               "sure, {v}", "{v}"], value, "CARD")
    for _ in range(24):
        cvv = "".join(r.choice("0123456789") for _ in range(3))
        value = r.choice([cvv, spoken_digits(cvv, r)])
        b.add("CVV", [("agent", "And the three digits on the back of the card?"), ("customer", f"security code is {value}")],
              [(1, value, "CVV")])
    for _ in range(12):
        pin = "".join(r.choice("0123456789") for _ in range(4))
        value = r.choice([pin, spoken_digits(pin, r)])
        b.one("PIN", "For security, can you give me your telephone banking passcode?",
              ["my pin is {v}", "the passcode is {v}", "pin number {v}"], value, "PIN")
    for _ in range(40):
        digits, written = phone(r)
        spoken = ("plus " if digits.startswith("+") else "") + spoken_digits(digits.lstrip("+"), r)
        value = r.choice([written, written, spoken])
        b.one("PHONE", r.choice(["What's the best number to reach you on?", "Can I take a contact number?",
                                 "Is there a phone number for you?"]),
              ["you can call me on {v}", "it's {v}", "my mobile's {v}", "{v}, that's my work number",
               "ring me on {v} after six", "best number is {v}"], value, "PHONE")
    for _ in range(36):
        first, last, dom = r.choice(FIRST), r.choice(LAST), r.choice(DOMAINS)
        sep = r.choice([".", "_", ""])
        num = str(r.randint(1, 99)) if r.random() < 0.3 else ""
        written = f"{first}{sep}{last}{num}@{dom}"
        spoken = f"{first} {({'.': 'dot ', '_': 'underscore ', '': ''})[sep]}{last}{num} at " + dom.replace(".", " dot ")
        value = r.choice([written, written, spoken])
        b.one("EMAIL", "And what's your e-mail address?",
              ["it's {v}", "{v}", "my email is {v}", "send it to {v} please"], value, "EMAIL")
    for _ in range(24):
        sc = "".join(r.choice("0123456789") for _ in range(6))
        value = r.choice([f"{sc[:2]}-{sc[2:4]}-{sc[4:]}", f"{sc[:2]} {sc[2:4]} {sc[4:]}", spoken_digits(sc, r, [2, 2, 2])])
        b.one("SORT_CODE", "What's the sort code?", ["sort code is {v}", "it's {v}", "the sort code's {v}"],
              value, "SORT_CODE")
    for _ in range(24):
        acc = "".join(r.choice("0123456789") for _ in range(8))
        value = r.choice([acc, spoken_digits(acc, r)])
        b.one("ACCOUNT", "And the account number?", ["account number is {v}", "my account number's {v}",
                                                     "the account number is {v} I think"], value, "ACCOUNT")
    for _ in range(24):
        while True:
            ssn = f"{r.randint(1, 899):03d}{r.randint(1, 99):02d}{r.randint(1, 9999):04d}"
            if ssn[:3] != "666":
                break
        value = r.choice([f"{ssn[:3]}-{ssn[3:5]}-{ssn[5:]}", spoken_digits(ssn, r)])
        b.one("SSN", "Can you verify your social security number?",
              ["my social is {v}", "social security number {v}", "it's {v}" if "-" in value else "my SSN is {v}"],
              value, "SSN")
    for _ in range(24):
        first = r.choice("ABCEGHJKLMNOPRSTWXY")
        second = r.choice("ABCEGHJKLMNPRSTWXY")
        digits = "".join(r.choice("0123456789") for _ in range(6))
        suffix = r.choice("ABCD")
        if first + second in ("GB", "NK", "TN", "BG"):
            second = "A"
        value = r.choice([f"{first}{second}{digits}{suffix}", f"{first}{second} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"])
        b.one("NINO", "What's your National Insurance number?",
              ["it's {v}", "national insurance number is {v}", "my NI number is {v}"], value, "NINO")
    for _ in range(36):
        y, m, d = r.randint(1940, 2005), r.randint(1, 12), r.randint(1, 28)
        value = r.choice([f"{d:02d}/{m:02d}/{y}", f"{d} {MONTHS[m - 1]} {y}", f"the {ORD[d - 1]} of {MONTHS[m - 1]} {spoken_year(y)}",
                          f"{MONTHS[m - 1]} {d}, {y}", f"the {ORD[d - 1]} of {MONTHS[m - 1]}"])
        b.one("DOB", r.choice(["Can you confirm your date of birth?", "And your DOB please?"]),
              ["{v}", "it's {v}", "I was born on {v}", "date of birth {v}"], value, "DOB")
    for _ in range(30):
        house = str(r.randint(1, 240)) if r.random() < 0.8 else r.choice(["twelve", "forty two", "seven", "twenty one"])
        value = f"{house} {r.choice(STREETS)} {r.choice(STREET_TYPES)}"
        if r.random() < 0.5:
            value += f", {r.choice(TOWNS)}"
        if r.random() < 0.4:
            value += f" {r.choice(['LS1', 'BS8', 'M14', 'G12', 'CF10', 'NR2'])} {r.randint(1, 9)}{r.choice('ABDEFGHJLNPQRSTUWXYZ')}{r.choice('ABDEFGHJLNPQRSTUWXYZ')}"
        b.one("ADDRESS", "What's the first line of your address?",
              ["it's {v}", "I live at {v}", "{v}", "the address is {v}", "send it to {v}"], value, "ADDRESS")
    # A number read out over two customer turns, the agent acknowledging in between.
    for _ in range(24):
        typ = r.choice(["CARD", "CARD", "PHONE"])
        if typ == "CARD":
            n = card(r)
            half = 8 if len(n) == 16 else 7
        else:
            n, _ = phone(r)
            n = n if not n.startswith("+") else "0" + n[3:] if n.startswith("+44") else n[2:]
            half = 5
        first, second = n[:half], n[half:]
        spoken = r.random() < 0.5
        a = spoken_digits(first, r) if spoken else first
        c = spoken_digits(second, r) if spoken else second
        turns = [("agent", "Go ahead with the card number." if typ == "CARD" else "What's your phone number?"),
                 ("customer", f"ok it's {a}"), ("agent", r.choice(["yep", "okay", "mm-hmm, go on"])), ("customer", f"{c}")]
        b.add("split", turns, [(1, a, typ), (3, c, typ)])
    negatives = [
        lambda: f"my order number is {not_luhn(r)}",
        lambda: f"the reference on the letter is {not_luhn(r, 12)}",
        lambda: f"I was charged £{r.randint(5, 900)}.{r.randint(0, 99):02d} twice",
        lambda: f"it's ${r.randint(1, 9)},{r.randint(100, 999)}.00 for the year",
        lambda: f"I called at {r.randint(1, 12)}:{r.randint(0, 59):02d} and waited {r.randint(5, 50)} minutes",
        lambda: f"the payment went out on {r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(2019, 2026)}",
        lambda: f"can the engineer come on the {r.choice(ORD)} of {r.choice(MONTHS)}?",
        lambda: r.choice(["press one for billing", "I pressed two and then three", "it said press nine for more options"]),
        lambda: f"I've rung {r.choice(['three', 'four', 'five'])} times this week",
        lambda: f"my ticket number is {r.randint(10_000, 99_999_999)}",
        lambda: f"the parcel tracking is {not_luhn(r, 14)}",
        lambda: f"I've been a customer since {r.randint(1990, 2024)}",
        lambda: f"about {r.randint(10, 90)} percent of the bill",
        lambda: f"I bought {r.randint(2, 9)} of the {r.randint(100, 900)} ml bottles",
        lambda: f"the invoice {r.randint(100000, 9999999)} from {r.choice(MONTHS)}",
        lambda: f"it happened on {r.choice(['Monday', 'Friday', 'the weekend'])} around {r.randint(1, 11)} pm",
        lambda: f"we moved house in {r.choice(MONTHS)} {r.randint(2010, 2025)}",
        lambda: f"the model number is XR{r.randint(100, 999)}-{r.randint(10, 99)}",
        lambda: f"I waited {r.randint(2, 6)} weeks on the phone to them",
        lambda: f"flight BA {r.randint(100, 2999)} on the {r.choice(ORD)}",
    ]
    for i in range(120):
        text = negatives[i % len(negatives)]()
        b.add("negative", [("agent", "How can I help?"), ("customer", text)] if r.random() < 0.5 else [("customer", text)])
    return b.items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    items = build(args.seed)
    args.out.write_text("".join(json.dumps(i) + "\n" for i in items))
    kinds: dict[str, int] = {}
    for i in items:
        kinds[i["kind"]] = kinds.get(i["kind"], 0) + 1
    print(f"{len(items)} items, {sum(len(i['spans']) for i in items)} spans -> {args.out}: {kinds}")


if __name__ == "__main__":
    main()

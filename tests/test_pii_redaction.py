"""PII redaction on realistic contact-centre utterances (no services): what is tagged and what survives."""

from __future__ import annotations

import pytest

from raysys.analytics.redaction_turns import (
    Policy,
    redact_call_turns,
    redact_transcription,
    redact_turn_dicts,
    redact_turns,
)
from raysys.config import ConfigError, Settings
from raysys.models.redaction import find_pii, luhn_ok, redact
from raysys.storage.postgres import Turn


@pytest.mark.parametrize(("utterance", "expected"), [
    ("Yeah the card number is 4111 1111 1111 1111 expiry oh three twenty seven",
     "Yeah the card number is [CARD] expiry oh three twenty seven"),
    ("it's a Mastercard, 5555-5555-5555-4444.", "it's a Mastercard, [CARD]."),
    ("okay it's four nine two nine, one two three four, five six seven eight, nine nine nine nine",
     "okay it's [CARD]"),
    ("the three digits on the back are seven three one", "the three digits on the back are [CVV]"),
    ("you can ring me on 07700 900123 after five", "you can ring me on [PHONE] after five"),
    ("my mobile is oh seven seven double oh nine double oh four five six", "my mobile is [PHONE]"),
    ("Call me back at (415) 555-2671 please", "Call me back at [PHONE] please"),
    ("my number is plus four four two oh seven nine four six oh nine five eight", "my number is [PHONE]"),
    ("it's jane.doe42@example.co.uk", "it's [EMAIL]"),
    ("email is mark dot jones at gmail dot com", "email is [EMAIL]"),
    ("sort code 40-47-84 and the account number is 31926819",
     "sort code [SORT_CODE] and the account number is [ACCOUNT]"),
    ("sort code is four oh, four seven, eight four", "sort code is [SORT_CODE]"),
    ("my IBAN is GB82 WEST 1234 5698 7654 32", "my IBAN is [ACCOUNT]"),
    ("my social is 536-22-8130", "my social is [SSN]"),
    ("social security number five three six two two eight one three oh", "social security number [SSN]"),
    ("National Insurance number AB 12 34 56 C", "National Insurance number [NINO]"),
    ("my date of birth is the fourth of July nineteen eighty five", "my date of birth is [DOB]"),
    ("I was born on 14/02/1979.", "I was born on [DOB]."),
    ("I live at 22 Acacia Avenue, Leeds LS1 4AP", "I live at [ADDRESS]"),
    ("it's forty two Wallaby Way, Sydney", "it's [ADDRESS]"),
    ("send it to 167 Green Hill Gardens, Glasgow G12 8QQ", "send it to [ADDRESS]"),
    ("my postcode is sw1a 1aa", "my postcode is [ADDRESS]"),
    ("and my pin is 4821", "and my pin is [PIN]"),
    ("reach me at +33 6 12 34 56 78", "reach me at [PHONE]"),
    ("the card I used for the order is 4111 1111 1111 1111", "the card I used for the order is [CARD]"),
    ("it's 4111 1111 1111 1111 123", "it's [CARD] 123"),
    ("it's forty one eleven, eleven eleven, eleven eleven, eleven eleven", "it's [CARD]"),
    ("my number is oh two oh, seven nine four six, oh nine fifty eight", "my number is [PHONE]"),
    ("send it to 1600 Pennsylvania Avenue NW, Washington, DC 20500 please", "send it to [ADDRESS] please"),
])
def test_pii_is_replaced_by_typed_tags(utterance, expected):
    assert redact(utterance).text == expected


@pytest.mark.parametrize("utterance", [
    "My order number is 1234 5678 9012 3456",  # fails Luhn
    "the reference is 4111 1111 1111 1112",
    "my order number is 3084513770336189",  # fails Luhn, though 14 of its digits pass: one number is one number
    "Press one for billing or two for anything else",
    "It was forty nine ninety nine, so £49.99, and then $1,250.00 on the second invoice",
    "I'll call you back at 3:45 on Tuesday the 5th",
    "The payment went out on 3 March 2024 and again on the 12th of April",
    "I've been waiting 3 weeks on the road for this",
    "Your ticket number is 20031987",
    "it took about 10 to 15 minutes, maybe 20",
    "I opened the account in March 2001",
    "my card ending 4242 was declined",  # the last four digits may be kept (PCI DSS)
    "I'd like 2 tickets for the 14th of February 2026",
    "it expired on 12/08/2009, version 2.3.1 of the app",
    "I was on hold from 9.15 to 9.45 and the total was 1,234.56 dollars",
    "my customer number is 10293847",
    "I'll call back at ten thirty, twenty past at the latest",
    "we have 2 lines, 3 phones and 4 tablets",
])
def test_text_that_must_survive(utterance):
    assert find_pii(utterance) == [], redact(utterance).text


def test_a_card_read_over_two_customer_turns_is_tagged_in_both_and_counted_once():
    turns = [("agent", "Can I take the long number on the front of the card?"),
             ("customer", "Yes, it's four one one one, one one one one"),
             ("agent", "Okay, go on"),
             ("customer", "one one one one, one one one one"),
             ("agent", "Thank you, and the expiry?")]
    result = redact_turns(turns)
    assert result.texts[1] == "Yes, it's [CARD]" and result.texts[3] == "[CARD]"
    assert result.texts[2] == "Okay, go on" and result.counts == {"CARD": 1}


def test_a_birth_date_asked_in_the_turn_before_is_a_dob_and_other_dates_are_not():
    result = redact_turns([("agent", "And can you confirm your date of birth?"), ("customer", "yes the 9th of May")])
    assert result.texts[1] == "yes [DOB]"
    result = redact_turns([("agent", "When would you like the engineer?"), ("customer", "the 9th of May")])
    assert result.texts[1] == "the 9th of May" and result.total == 0


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_stored_turns_and_words_are_redacted():
    words = [{"word": w, "start": i, "end": i + 0.5} for i, w in enumerate("my card is 4111 1111 1111 1111 thanks".split())]
    turns = [Turn(0, "customer", 0.0, 8.0, " ".join(w["word"] for w in words), "asr", "x", 0.9, words),
             Turn(1, "agent", 8.0, 9.0, "thanks")]
    redacted, result = redact_call_turns(turns)
    assert redacted[0].text == "my card is [CARD] thanks" and redacted[1] is turns[1]
    assert [w["word"] for w in redacted[0].words] == ["my", "card", "is", "[CARD]", "thanks"]
    assert redacted[0].words[3]["start"] == 3 and redacted[0].words[3]["end"] == 6.5
    assert result.counts == {"CARD": 1}
    rows = redact_turn_dicts([{"speaker_role": "customer", "text": "call me on 07700 900123", "words": None}],
                             Policy())
    assert rows[0]["text"] == "call me on [PHONE]"


def test_transcription_result_is_redacted_unless_the_policy_is_off():
    result = {"turns": [{"role": "customer", "text": "it's 4111 1111 1111 1111", "words": None}], "text": "x"}
    out, found = redact_transcription(result, Policy())
    assert out["turns"][0]["text"] == "it's [CARD]" and out["text"] == "customer: it's [CARD]" and found.total == 1
    assert redact_transcription(result, Policy(calls=False)) == (result, None)


def test_policy_settings_and_tenant_overrides():
    settings = Settings.from_env({})
    assert settings.pii_redaction is True and settings.pii_redact_documents is False
    assert Policy.for_tenant(settings, {"pii_redaction": False, "pii_redact_documents": None}) == \
        Policy(calls=False, documents=False, regions=("GB", "US"))
    off = Settings.from_env({"PII_REDACTION": "off", "PII_REDACT_DOCUMENTS": "on", "PII_PHONE_REGIONS": "de,fr"})
    assert Policy.for_tenant(off, {"pii_redaction": True}) == Policy(True, True, ("DE", "FR"))
    assert Policy(calls=False).text("4111 1111 1111 1111") == "4111 1111 1111 1111"
    with pytest.raises(ConfigError, match="PII_PHONE_REGIONS"):
        Settings.from_env({"PII_PHONE_REGIONS": "Britain"})
    with pytest.raises(ConfigError, match="PII_REDACTION"):
        Settings.from_env({"PII_REDACTION": "maybe"})

"""The one sentiment model: contact-centre phrasing, negation, intensifiers, range, bad input, and the same
scores wherever raysys reads sentiment (call sentiment, emotion valence, CSAT proxy)."""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace

import numpy as np
import pytest

from raysys.analytics import sentiment as call_sentiment
from raysys.errors import InvalidInput
from raysys.models.emotion import TEXT_WEIGHT, BuiltinEmotion, acoustic_valence, text_valence
from raysys.models.sentiment import DOMAIN_VERSION, SentimentModel, default_model, label_for


@pytest.fixture(scope="module")
def model():
    return default_model()


@pytest.mark.parametrize(("text", "label"), [
    # the and the brief's examples
    ("I've been waiting forty minutes", "negative"),
    ("that's not helpful", "negative"),
    ("I want to cancel", "negative"),
    ("you've been very helpful", "positive"),
    ("this is the third time I call", "negative"),
    # more of the same kinds, phrased differently
    ("I've been on hold for forty-five minutes.", "negative"),
    ("I was waiting for 2 hours yesterday", "negative"),
    ("This is the fourth time I'm calling about this bill.", "negative"),
    ("It's still not working after your engineer came.", "negative"),
    ("I'd like to speak to a manager, please.", "negative"),  # VADER alone reads "like" as positive
    ("Nobody ever called me back.", "negative"),
    ("I want to cancel my subscription.", "negative"),
    ("I've been charged twice for the same order.", "negative"),
    ("Thanks for nothing.", "negative"),
    ("That fixed it, thank you so much!", "positive"),
    ("My problem is resolved now.", "positive"),  # VADER alone: "problem" makes it negative
    ("It works now.", "positive"),
    # requests and back-channels carry no opinion
    ("Could you check my balance please?", "neutral"),
    ("Okay, my account number is 4 5 7 2.", "neutral"),
    ("Hi, I'm calling about my bill.", "neutral"),
    ("How can I help you today?", "neutral"),
    ("I want to switch to paperless billing.", "neutral"),
])
def test_contact_centre_phrasing(model, text, label):
    got = model.analyze(text)
    assert got.label == label, (text, got)
    assert label_for(got.score) == got.label


def test_negation_and_intensifiers_move_the_score(model):
    helpful, not_helpful, very_helpful = (model.score(t) for t in (
        "you were helpful", "you were not helpful", "you were very helpful"))
    assert not_helpful < 0 < helpful < very_helpful
    assert model.score("I am extremely unhappy") < model.score("I am unhappy") < 0
    assert model.score("not bad at all") > 0
    assert model.score("I'm not happy with this") < 0
    # a phrase replaces its words: the wait counts once, not as a wait plus a number plus "been"
    assert model.analyze("I've been waiting forty minutes").phrases == ("long wait",)


def test_scores_stay_in_range_and_bad_input_is_refused(model):
    texts = ["terrible awful worst horrible useless!!!", "GREAT GREAT GREAT!!! 😀😀", "", "   ", "ok",
             "I love it " * 200, "I hate it " * 200, "ünïcödé ßtring — with dashes…", "1234 5678"]
    for t in texts:
        s = model.analyze(t)
        assert -1.0 <= s.score <= 1.0 and s.label in ("negative", "neutral", "positive")
    assert model.score("") == 0.0 and model.analyze("  ").label == "neutral"
    assert model.score("I love it " * 200) > 0.9 and model.score("I hate it " * 200) < -0.9
    for bad in (None, 3, b"bytes", ["a"]):
        with pytest.raises(InvalidInput, match="sentiment needs text"):
            model.analyze(bad)


def test_one_model_behind_call_sentiment_segment_valence_and_version(model):
    texts = ["I've been waiting forty minutes", "Thanks, that's great.", "the account number", "not helpful"]
    for t in texts:
        assert text_valence(t) == call_sentiment.text_sentiment(t) == model.score(t)
    # the builtin emotion backend blends the model's score of a segment's transcript into its valence
    # (TEXT_WEIGHT of it, the rest from the label probabilities the voice and the text give together)
    rng = np.random.default_rng(0)
    pieces = [(0.05 * rng.standard_normal(16000)).astype(np.float32) for _ in texts]
    for t, heard in zip(texts, BuiltinEmotion().classify(pieces, texts), strict=True):
        blended = TEXT_WEIGHT * model.score(t) + (1 - TEXT_WEIGHT) * acoustic_valence(heard["scores"])
        assert heard["valence"] == pytest.approx(blended, abs=2e-3), (t, heard)
    turns = [SimpleNamespace(start_s=float(i), end_s=i + 1.0, text=t, speaker_role="customer")
             for i, t in enumerate([*texts, "  "])]
    items = call_sentiment.turn_sentiments(turns)
    assert [i["valence"] for i in items] == [model.score(t) for t in texts]  # the blank turn is left out
    assert items[0]["label"] == "negative" and items[1]["label"] == "positive" and items[0]["role"] == "customer"
    assert call_sentiment.model_version() == model.model_version
    assert model.model_version.startswith("vader-3.") and model.model_version.endswith(DOMAIN_VERSION)


def test_shared_instance_is_safe_across_threads():
    model = SentimentModel()
    texts = ["I've been waiting forty minutes", "That fixed it, thanks", "I want to cancel my contract",
             "nothing to see here"] * 50
    expected = [model.analyze(t) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(model.analyze, texts))
    assert got == expected


def test_digits_and_record_numbers_carry_no_opinion(model):
    # VADER's lexicon rates text-speak numbers (143 = "I love you"); in a call they are account digits
    assert model.score("my account number is 143 187") == 0.0
    assert model.score("card ending 8 6, reference 143") == 0.0


@pytest.mark.parametrize("text", ["I'd like to raise my credit limit.", "Can you help me with my direct debit?",
                                  "What's the interest rate on the savings account?",
                                  "I'm calling customer care about a security question."])
def test_product_names_and_requests_are_neutral(model, text):
    assert model.analyze(text).label == "neutral"


def test_a_negated_request_for_help_is_negative(model):
    assert model.score("that doesn't help me at all") < -0.3
    assert model.score("thank you for your help") > 0.3

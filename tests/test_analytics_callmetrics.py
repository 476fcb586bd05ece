"""Call metrics, speaker mapping, sentiment and summaries on hand-checkable inputs (no Ray)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from analytics_fixtures import utc

from raysys.analytics import callmetrics, summary
from raysys.analytics.sentiment import text_sentiment
from raysys.storage.postgres import Call, Turn


def seg(start, end, speaker, channel=None):
    return {"start": start, "end": end, "speaker": speaker, "channel": channel}


def test_timeline_metrics_talk_silence_overlap_interruptions():
    # agent 0-10, customer 8-20 (interrupts: starts 2 s before the agent stops, lasts 12 s),
    # agent 19.8-20.5 (a back-channel: too short to be an interruption), silence 20.5-25, agent 25-30.
    segments = [seg(0, 10, "agent"), seg(8, 20, "customer"), seg(19.8, 20.5, "agent"), seg(25, 30, "agent")]
    m = callmetrics.timeline_metrics(segments, duration=32)
    assert m["duration_seconds"] == 32
    assert m["talk_seconds"] == pytest.approx(25.5)
    assert m["silence_seconds"] == pytest.approx(6.5)
    assert m["overlap_seconds"] == pytest.approx(2.0 + 0.2)
    assert m["interruptions"] == 1 and m["interruptions_by"] == {"customer": 1}
    assert m["speech_seconds"] == {"agent": pytest.approx(15.7), "customer": pytest.approx(12.0)}


def test_speaker_mapping_by_channel_turns_and_first_speaker():
    stereo = [seg(0, 3, "spk_a", 0), seg(3, 6, "spk_b", 1)]
    assert callmetrics.map_speakers(stereo, [], "stereo") == {"mapping": {"spk_a": "agent", "spk_b": "customer"},
                                                              "method": "channel"}
    mono = [seg(0, 4, "S1"), seg(4, 9, "S0"), seg(9, 12, "S1"), seg(12.5, 13, "S2")]
    turns = [Turn(0, "agent", 0, 4.2, "hello"), Turn(1, "customer", 4.1, 9, "my card"),
             Turn(2, "agent", 9, 12, "done")]
    got = callmetrics.map_speakers(mono, turns)
    assert got["method"] == "turns"
    assert got["mapping"] == {"S0": "customer", "S1": "agent", "S2": "unknown"}
    got = callmetrics.map_speakers(mono, [])
    assert got == {"mapping": {"S0": "customer", "S1": "agent", "S2": "unknown"}, "method": "first_speaker"}


def test_aht_uses_telephony_times_and_sentiment_uses_the_customer():
    start = utc(2025, 3, 10, 9, 0)
    call = Call(id="c", tenant_id="t", customer_id="u", started_at=start, answered_at=start + timedelta(seconds=10),
                ended_at=start + timedelta(seconds=310), hold_seconds=60, acw_seconds=30)
    assert callmetrics.aht(call, recording_seconds=999) == {"talk_seconds": 240.0, "hold_seconds": 60.0,
                                                            "acw_seconds": 30.0, "aht_seconds": 330.0}
    no_times = Call(id="c", tenant_id="t", customer_id="u", started_at=start, acw_seconds=5)
    assert callmetrics.aht(no_times, recording_seconds=100)["aht_seconds"] == 105.0
    items = [{"start": 0, "end": 10, "valence": 0.9, "role": "agent"},
             {"start": 10, "end": 12, "valence": -0.6, "role": "customer"},
             {"start": 12, "end": 14, "valence": -0.2, "role": "customer"},
             {"start": 14, "end": 20, "valence": 0.4, "role": "customer"}]
    s = callmetrics.sentiment_summary(items)
    assert s["start"] == pytest.approx(-0.6) and s["end"] == pytest.approx(0.4)
    assert s["mean"] == pytest.approx((-0.6 * 2 - 0.2 * 2 + 0.4 * 6) / 10)
    assert callmetrics.sentiment_summary([]) == {"start": None, "end": None, "mean": None}


def test_text_sentiment_signs_and_negation():
    assert text_sentiment("Thanks, that's great.") > 0.3
    assert text_sentiment("This is the third time I'm calling, I am really unhappy") < -0.3
    assert text_sentiment("that's not good") < 0
    assert text_sentiment("My account number is 1234") == 0.0
    assert -1 <= text_sentiment("terrible awful worst horrible useless!!!") <= 1


TURNS = [
    {"role": "agent", "text": "Thank you for calling, how can I help you today?", "start": 0},
    {"role": "customer", "text": "Hi.", "start": 3},
    {"role": "customer", "text": "I was charged twice for the same order last week", "start": 4},
    {"role": "customer", "text": "I was charged two times for one order last week", "start": 8},
    {"role": "agent", "text": "I can see the duplicate charge and I have refunded it to your card", "start": 12},
    {"role": "customer", "text": "Thanks, that's great.", "start": 20},
]


def test_extractive_summary_is_central_non_redundant_and_attributed(text_encoder):
    result = summary.extractive_summary(TURNS, text_encoder.encode, max_turns=2)
    assert result["method"] == "extractive" and len(result["sentences"]) == 2
    texts = [s["text"] for s in result["sentences"]]
    assert not ({TURNS[2]["text"], TURNS[3]["text"]} <= set(texts)), "near-duplicates are not both chosen"
    assert "Hi." not in texts
    assert result["text"].splitlines()[0].split(":")[0] in ("Agent", "Customer")
    starts = [s["start"] for s in result["sentences"]]
    assert starts == sorted(starts), "chosen turns are in call order"
    assert summary.extractive_summary([], text_encoder.encode)["text"] == ""


class _ChatHandler(BaseHTTPRequestHandler):
    requests: list = []
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                       "content": "Customer was double charged; agent refunded."}}]})
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode() if type(self).status == 200 else b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatHandler.requests, _ChatHandler.status = [], 200
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_llm_summary_through_an_openai_compatible_endpoint_and_fallback(chat_server, text_encoder):
    result = summary.summarize(TURNS, text_encoder.encode, llm_url=chat_server, llm_model="m1", llm_api_key="k")
    assert result == {"method": "llm", "model": "m1", "text": "Customer was double charged; agent refunded.",
                      "sentences": []}
    path, auth, body = _ChatHandler.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "m1"
    assert "Customer: I was charged twice" in body["messages"][1]["content"]
    _ChatHandler.status = 500
    result = summary.summarize(TURNS, text_encoder.encode, llm_url=chat_server, llm_model="m1")
    assert result["method"] == "extractive" and "500" in result["fallback_reason"] and result["sentences"]

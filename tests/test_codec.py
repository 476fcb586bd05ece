"""The Celery wire codec on its own (no Redis, no bridge), against messages and results captured from a real
Celery 5.7 / kombu 5.7 producer and worker (../shared/celery-wire): every captured message decodes to the
fields Celery meant; what raysys encodes and re-encodes reads back the same; the results raysys writes have
the captured results' fields, key order and shapes; hostile payloads are refused with the error Celery names.
"""

from __future__ import annotations

import base64
import bz2
import datetime as dt
import gzip
import json
import lzma
import sys
import uuid
import zlib

import pytest
from conftest import CELERY_WIRE, wire_message

# The codec: messages (decode/encode), results (the result format, Celery's exceptions), canvas, keys.
from raysys.constants import PRIORITY_SEP
from raysys.errors import Refused, TooLarge
from raysys.queue.canvas import chosen_id, expand, next_message, signature
from raysys.queue.keys import list_for
from raysys.queue.messages import chord_body_id, decode, encode_celery, encode_native, reencode, sniff_id
from raysys.queue.results import (
    RETRY,
    ContentDisallowed,
    DecodeError,
    TaskRevokedError,
    children_of,
    exception_from_meta,
    exception_meta,
    failure_json,
    is_success,
    revoked_json,
    success_json,
)

MESSAGES = sorted(p.name for p in CELERY_WIRE.glob("message_*.json")) or ["message_ingest.json"]
RESULTS = sorted(p.name for p in CELERY_WIRE.glob("result_*.json")) or ["result_success.json"]


def raw_of(name: str) -> bytes:
    return json.dumps(wire_message(name)).encode()


def body_of(env: dict) -> list:
    return json.loads(base64.b64decode(env["body"]))


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# --- every captured message --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MESSAGES)
def test_every_captured_message_decodes_to_its_headers_body_and_properties(name):
    env = wire_message(name)
    headers, props = env["headers"], env["properties"]
    args, kwargs, embed = body_of(env)
    queue = props["delivery_info"]["routing_key"]
    msg = decode(json.dumps(env), queue)
    assert (msg.kind, msg.queue, msg.id, msg.task) == ("celery", queue, headers["id"], headers["task"])
    assert (msg.args, msg.kwargs) == (args, kwargs)
    assert msg.retries == headers["retries"]
    assert msg.eta == (ts(headers["eta"]) if headers["eta"] else None)
    assert msg.expires == (ts(headers["expires"]) if headers["expires"] else None)
    assert (msg.time_limit, msg.soft_time_limit) == tuple(headers["timelimit"])
    assert (msg.root_id, msg.parent_id) == (headers["root_id"], headers["parent_id"])
    assert (msg.group, msg.group_index) == (headers["group"], headers["group_index"])
    assert msg.priority == props["priority"]
    assert msg.ignore_result is bool(headers["ignore_result"])
    assert msg.callbacks == embed["callbacks"] and msg.errbacks == embed["errbacks"]
    assert msg.chain == (embed["chain"] or None) and msg.chord is None
    assert msg.raw == json.dumps(env).encode() and msg.envelope == env
    assert sniff_id(msg.raw) == headers["id"]


def test_full_options_eta_expires_retries_and_time_limits():
    msg = decode(raw_of("message_analytics_full_options.json"), "analytics")
    assert (msg.task, msg.args, msg.kwargs) == ("workers.tasks.process_call_analytics", ["call-9"], {"tenant": "acme"})
    assert msg.eta == pytest.approx(dt.datetime(2026, 11, 28, 23, 38, 10, 81687, tzinfo=dt.UTC).timestamp())
    assert msg.expires - msg.eta == pytest.approx(270.0)
    assert (msg.retries, msg.time_limit, msg.soft_time_limit) == (2, 60.0, 50.0)


def test_eta_given_as_a_datetime_and_naive_times_read_in_the_workers_zone():
    msg = decode(raw_of("message_analytics_eta_datetime.json"), "analytics")
    assert msg.eta == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()
    assert msg.expires == dt.datetime(2030, 1, 3, tzinfo=dt.UTC).timestamp()
    env = wire_message("message_analytics_eta_datetime.json")
    env["headers"]["eta"] = "2030-01-02T03:04:05"  # naive: Celery reads it in its timezone
    paris = decode(json.dumps(env), "analytics", tz="Europe/Paris")
    assert paris.eta == dt.datetime(2030, 1, 2, 2, 4, 5, tzinfo=dt.UTC).timestamp()
    assert decode(json.dumps(env), "analytics").eta == msg.eta  # UTC when no zone is configured


@pytest.mark.parametrize("level", [0, 3, 5, 9])
def test_priorities_and_the_celery_list_they_live_in(level):
    msg = decode(raw_of(f"message_ingest_priority_{level}.json"), "ingest")
    assert msg.priority == level and msg.args == [f"p{level}"]
    # kombu's Redis layout: steps 0, 3, 6, 9; step 0 is the queue itself.
    assert list_for("ingest", level) == {0: "ingest", 3: f"ingest{PRIORITY_SEP}3",
                                         5: f"ingest{PRIORITY_SEP}3", 9: f"ingest{PRIORITY_SEP}9"}[level]


def test_link_and_link_error_callbacks():
    msg = decode(raw_of("message_link_callback.json"), "ingest")
    assert [(s["task"], s["args"], s["immutable"]) for s in msg.callbacks] == [
        ("workers.tasks.generate_daily_report", ["2024-03-03"], True)]
    assert [(s["task"], s["args"]) for s in msg.errbacks] == [("workers.tasks.noop", ["err"])]


def test_chain_is_stored_last_step_first_with_the_ids_the_producer_chose():
    msg = decode(raw_of("message_chain.json"), "ingest")
    assert [s["task"] for s in msg.chain] == ["workers.tasks.generate_daily_report",
                                              "workers.tasks.process_call_analytics"]
    assert chosen_id(msg.chain[-1]) == "0b6ddaa4-d49b-4de1-8cf8-7a13981fa76c"  # the next step
    assert msg.chain[0]["immutable"] is True and msg.chain[-1]["kwargs"] == {"tenant": "x"}


def test_queue_override_unrouted_name_and_send_task_without_ignore_result():
    override = decode(raw_of("message_explicit_queue_override.json"), "analytics")
    assert override.task == "workers.tasks.ingest_document" and override.queue == "analytics"
    unrouted = decode(raw_of("message_send_task_unrouted_name.json"), "celery")
    assert (unrouted.task, unrouted.args, unrouted.queue) == ("workers.tasks.unknown_thing", [1], "celery")
    sent = decode(raw_of("message_reports_send_task.json"), "reports")
    assert sent.ignore_result is False  # send_task writes ignore_result: null


def test_group_and_chord_fields():
    group_id, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    chord = signature("workers.tasks.generate_daily_report", ["d"], task_id=body_id)
    msg = decode(encode_celery("tests.add", [1, 2], group=group_id, group_index=3, chord=chord, queue="ingest"),
                 "ingest")
    assert (msg.group, msg.group_index) == (group_id, 3)
    assert msg.chord["task"] == "workers.tasks.generate_daily_report"
    assert chord_body_id(msg.chord) == (body_id,)
    members = [signature("tests.add", [i, i]) for i in range(3)]
    expanded = expand(signature("celery.group", kwargs={"tasks": members}, task_id=group_id))
    assert [(s["args"], gid, i) for s, _, gid, i in expanded] == [([i, i], group_id, i) for i in range(3)]


# --- encode -> decode round trips -------------------------------------------------------------------------


def test_encode_celery_has_the_shape_of_a_captured_message_and_round_trips():
    captured = wire_message("message_analytics_full_options.json")
    eta = ts(captured["headers"]["eta"])
    expires = ts(captured["headers"]["expires"])
    link = [signature("workers.tasks.noop", ["ok"], immutable=True)]
    raw = encode_celery("workers.tasks.process_call_analytics", ["call-9"], {"tenant": "acme"}, queue="analytics",
                        eta=eta, expires=expires, retries=2, time_limit=60, soft_time_limit=50, priority=5,
                        callbacks=link, errbacks=link, task_id=captured["headers"]["id"])
    env = json.loads(raw)
    assert list(env) == list(captured)
    assert list(env["headers"]) == list(captured["headers"])
    assert set(env["properties"]) == set(captured["properties"])
    for key in ("task", "id", "eta", "expires", "retries", "timelimit", "root_id", "argsrepr", "kwargsrepr"):
        assert env["headers"][key] == captured["headers"][key], key
    msg = decode(raw, "analytics")
    assert (msg.task, msg.args, msg.kwargs, msg.retries) == ("workers.tasks.process_call_analytics", ["call-9"],
                                                             {"tenant": "acme"}, 2)
    assert (msg.eta, msg.expires, msg.time_limit, msg.soft_time_limit) == (pytest.approx(eta), pytest.approx(expires),
                                                                            60.0, 50.0)
    assert (msg.priority, msg.callbacks, msg.errbacks) == (5, link, link)


def test_kombu_type_markers_round_trip():
    value = {"when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC), "day": dt.date(2024, 5, 6),
             "id": uuid.UUID(int=7), "blob": b"\xff\x00", "text": b"abc"}
    msg = decode(encode_celery("tests.echo", [value], queue="ingest"), "ingest")
    assert msg.args == [value]


def test_native_envelope_round_trips_with_countdown_made_absolute_on_reencode():
    raw = encode_native("tests.add", [1], {"y": 2}, task_id="n-1", countdown=30, retries=1, priority=6)
    msg = decode(raw, "ingest")
    assert (msg.kind, msg.id, msg.task, msg.args, msg.kwargs, msg.retries) == ("native", "n-1", "tests.add", [1],
                                                                             {"y": 2}, 1)
    assert msg.eta is not None
    again = decode(reencode(msg), "ingest")
    assert again.eta == pytest.approx(msg.eta) and "countdown" not in json.loads(again.raw)


def test_reencode_for_a_retry_matches_what_the_celery_worker_published():
    """The worker's retry of message retry_2 is message retry_5: only retries, eta and delivery_tag differ."""
    first, second = wire_message("message_worker_published_retry_2.json"), wire_message(
        "message_worker_published_retry_5.json")
    eta = ts(second["headers"]["eta"])
    ours = json.loads(reencode(decode(json.dumps(first), "ingest"), retries=2, eta=eta))
    assert ours["body"] == second["body"]
    assert {k: v for k, v in ours["headers"].items() if k != "eta"} == \
        {k: v for k, v in second["headers"].items() if k != "eta"}
    assert ts(ours["headers"]["eta"]) == pytest.approx(eta, abs=1e-5)
    assert {k: v for k, v in ours["properties"].items() if k != "delivery_tag"} == \
        {k: v for k, v in second["properties"].items() if k != "delivery_tag"}
    assert ours["properties"]["delivery_tag"] != first["properties"]["delivery_tag"]


@pytest.mark.parametrize(("captured", "sig", "prepend", "chain", "queue"), [
    ("message_worker_published_chain_step2_3.json",
     signature("workers.tasks.process_call_analytics", [], {"tenant": "x"},
               task_id="0b3696aa-622e-43c8-9835-754fc620e429"),
     ({"doc_id": "doc-chain", "source": "s3", "chunks": 3},), [], "analytics"),
    ("message_worker_published_link_callback_4.json",
     signature("workers.tasks.generate_daily_report", ["linked"], immutable=True,
               task_id="0789ac42-b523-4f2b-8b30-26e08c02a12c"),
     ("ignored: immutable",), None, "reports"),
])
def test_next_message_matches_what_the_celery_worker_published(captured, sig, prepend, chain, queue):
    want = wire_message(captured)
    parent_id = want["headers"]["parent_id"]
    parent = decode(encode_celery("workers.tasks.ingest_document", ["doc"], task_id=parent_id, queue="ingest"),
                    "ingest")
    lst, raw, task_id = next_message(sig, parent, prepend=prepend, chain=chain, default_queue=queue)
    got = json.loads(raw)
    assert (lst, task_id) == (queue, want["headers"]["id"])
    assert body_of(got)[:2] == body_of(want)[:2]
    assert (body_of(got)[2]["chain"] or None) == (body_of(want)[2]["chain"] or None)
    skip = {"origin", "argsrepr", "kwargsrepr"}  # the producer's host; Python reprs (checked through args)
    assert {k: v for k, v in got["headers"].items() if k not in skip} == \
        {k: v for k, v in want["headers"].items() if k not in skip}
    assert got["properties"]["delivery_info"] == want["properties"]["delivery_info"]
    assert got["properties"]["priority"] == want["properties"]["priority"]


# --- results as Celery writes them -------------------------------------------------------------------------


def assert_like_celery(ours: str, name: str, *, ignore: tuple[str, ...] = ()) -> dict:
    """``ours`` (a result raysys stores) has the captured result's keys in Celery's order and its values,
    with a ``date_done`` of the same form; returns the captured result."""
    want, got = wire_message(name), json.loads(ours)
    assert list(got) == list(want)
    for key in want:
        if key == "date_done" and want[key] is not None:
            assert dt.datetime.fromisoformat(got[key]).utcoffset() == dt.timedelta(0), got[key]
        elif key not in ignore:
            assert got[key] == want[key], key
    return want


def test_success_results_read_back_as_celery_writes_them():
    want = wire_message("result_success.json")
    assert_like_celery(success_json(want["task_id"], json.dumps(want["result"])), "result_success.json")
    assert is_success(success_json("x", "1"))

    want = wire_message("result_success_with_children.json")
    child = want["children"][0][0][0]
    assert_like_celery(success_json(want["task_id"], json.dumps(want["result"]), children=children_of([child])),
                       "result_success_with_children.json")

    want = wire_message("result_success_after_retry.json")
    ours = success_json(want["task_id"], json.dumps(want["result"]), parent_id=want["parent_id"])
    assert_like_celery(ours, "result_success_after_retry.json", ignore=("traceback",))
    assert not json.loads(ours)["traceback"] and not want["traceback"]  # Celery writes "" after a retry, we null


def test_failure_retry_and_revoked_results_read_back_as_celery_writes_them():
    want = wire_message("result_failure_valueerror.json")
    assert_like_celery(failure_json(want["task_id"], exception_meta(ValueError("bad input: x")), want["traceback"]),
                       "result_failure_valueerror.json")

    custom = type("MyCustomError", (Exception,), {"__module__": "workers.tasks"})
    want = wire_message("result_failure_custom_exc.json")
    assert_like_celery(failure_json(want["task_id"], exception_meta(custom("custom", 42)), want["traceback"]),
                       "result_failure_custom_exc.json")

    want = wire_message("result_retry.json")
    ours = failure_json(want["task_id"], exception_meta(RuntimeError("try 0")), want["traceback"], status=RETRY,
                        children=children_of([want["task_id"]]))
    assert json.loads(ours)["date_done"] is None  # not ready
    assert_like_celery(ours, "result_retry.json")

    want = wire_message("result_revoked_expired.json")
    assert_like_celery(revoked_json(want["task_id"], "expired"), "result_revoked_expired.json")


def test_captured_failures_come_back_as_the_exceptions_a_celery_client_raises():
    value_error = exception_from_meta(wire_message("result_failure_valueerror.json")["result"])
    assert type(value_error) is ValueError and value_error.args == ("bad input: x",)
    custom = exception_from_meta(wire_message("result_failure_custom_exc.json")["result"])
    assert type(custom).__name__ == "MyCustomError" and type(custom).__module__ == "workers.tasks"
    assert custom.args == ("custom", 42) and isinstance(custom, Exception)
    revoked = exception_from_meta(wire_message("result_revoked_expired.json")["result"])
    # Celery's own class once celery is imported in the process (as a Celery client has it), else raysys'.
    assert type(revoked).__name__ == "TaskRevokedError" and revoked.args == ("expired",)
    assert type(revoked) in (TaskRevokedError, getattr(sys.modules.get("celery.exceptions"), "TaskRevokedError", None))
    assert exception_from_meta({"exc_type": "SystemExit", "exc_module": "os", "exc_message": [1]}).__class__ \
        .__name__ == "SystemExit"  # an unknown module's class is made up, never imported


@pytest.mark.parametrize("name", RESULTS)
def test_every_captured_result_has_celerys_key_order(name):
    want = wire_message(name)
    keys = [k for k in ("status", "result", "traceback", "children", "date_done", "parent_id", "task_id") if k in want]
    assert list(want) == keys
    assert is_success(json.dumps(want)) is (want["status"] == "SUCCESS")


# --- refusals ----------------------------------------------------------------------------------------------


def refusal(raw: bytes | str, **kw) -> Refused:
    with pytest.raises(Refused) as info:
        decode(raw, "ingest", **kw)
    return info.value


def with_body(env: dict, data: bytes, **headers) -> str:
    env = json.loads(json.dumps(env))
    env["body"] = base64.b64encode(data).decode()
    env["headers"].update(headers)
    return json.dumps(env)


def test_pickle_and_other_content_types_are_refused_as_content_disallowed():
    env = wire_message("message_ingest.json")
    for ctype in ("application/x-python-serialize", "application/x-yaml", "application/x-msgpack", None):
        err = refusal(json.dumps({**env, "content-type": ctype}))
        assert err.exc_cls is ContentDisallowed and err.task_id == env["headers"]["id"], ctype
        assert "content type" in str(err)


@pytest.mark.parametrize(("method", "compress"), [("application/x-gzip", gzip.compress),
                                                  ("zlib", zlib.compress),
                                                  ("application/x-bz2", bz2.compress),
                                                  ("application/x-lzma", lzma.compress)])
def test_compressed_bodies_are_read(method, compress):
    env = wire_message("message_ingest.json")
    plain = base64.b64decode(env["body"])
    msg = decode(with_body(env, compress(plain), compression=method), "ingest")
    assert (msg.args, msg.kwargs) == (["doc-1"], {"source": "gcs", "options": {"lang": "en"}})


def test_unknown_compression_and_decompression_bombs_are_refused():
    env = wire_message("message_ingest.json")
    err = refusal(with_body(env, b"\x00\x01", compression="br"))
    assert err.exc_cls is ContentDisallowed and "unsupported compression" in str(err)
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    err = refusal(with_body(env, bomb, compression="application/x-gzip"), max_bytes=1_000_000)
    assert err.exc_cls is TooLarge and "decompresses to more than" in str(err)
    err = refusal(with_body(env, b"not gzip at all", compression="gzip"))
    assert err.exc_cls is DecodeError and err.task_id == env["headers"]["id"]


def test_oversize_messages_are_refused_with_the_id_sniffed():
    env = wire_message("message_ingest.json")
    raw = with_body(env, json.dumps([["x" * 5000], {}, {}]).encode())
    err = refusal(raw, max_bytes=1000)
    assert err.exc_cls is TooLarge and err.task_id == env["headers"]["id"] and "exceeds the limit" in str(err)


@pytest.mark.parametrize(("mutate", "expect"), [
    (lambda e: "{not json", "malformed JSON"),
    (lambda e: "[1, 2]", "not a JSON object"),
    (lambda e: json.dumps({"hello": 1}), "neither a Celery protocol v2 message nor a raysys envelope"),
    (lambda e: json.dumps({**e, "body": "%%% not base64"}), "bad body encoding"),
    (lambda e: with_body(e, b"{broken"), "malformed JSON body"),
    (lambda e: with_body(e, b'"just a string"'), "body is not [args, kwargs, embed]"),
    (lambda e: with_body(e, b'[{"a": 1}, {}, {}]'), "body args must be a list"),
    (lambda e: with_body(e, b'[[], [], {}]'), "body kwargs must be an object"),
    (lambda e: with_body(e, b'[[], {}, {"callbacks": [{"args": []}]}]'), "must hold signatures with a task name"),
    (lambda e: with_body(e, base64.b64decode(e["body"]), retries=-1), "retries must be a whole number"),
    (lambda e: with_body(e, base64.b64decode(e["body"]), timelimit=[1]), "timelimit must be [hard, soft]"),
    (lambda e: with_body(e, base64.b64decode(e["body"]), timelimit=["x", None]), "must be a number of seconds"),
    (lambda e: with_body(e, base64.b64decode(e["body"]), eta="next tuesday"), "eta is not an ISO-8601 time"),
    (lambda e: with_body(e, base64.b64decode(e["body"]), task=None), "without a task header"),
])
def test_malformed_messages_are_refused_as_decode_errors(mutate, expect):
    err = refusal(mutate(wire_message("message_ingest.json")))
    assert err.exc_cls is DecodeError and expect in str(err)


def test_refusals_name_the_job_when_its_id_can_be_read():
    env = wire_message("message_ingest.json")
    err = refusal(with_body(env, b"[[], [], {}]"))
    assert (err.task_id, err.task) == (env["headers"]["id"], env["headers"]["task"])
    assert sniff_id(b'{"id": "abc-1", "oops') == "abc-1"
    assert sniff_id(b"\xff\xfe garbage") is None

"""Issue 13's low items on real services: SMTP credentials only over TLS (aiosmtpd on loopback), session
cleanup confined to the session key prefix and keys deleted before rows (real Redis and PostgreSQL), and a
daily report e-mailed once however often its job runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
import redis
from analytics_fixtures import run, with_db

from raysys.errors import InvalidInput
from raysys.stack import free_port

NOW = datetime.now(UTC)


# --- SMTP: no login without TLS ------------------------------------------------------------------------------


@pytest.fixture
def auth_smtp():
    """An aiosmtpd server on loopback that offers AUTH without TLS (as a careless relay would); yields
    (port, handler with .messages, list of the logins it was sent)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    logins: list[tuple[str, str]] = []

    class Collect:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope.content)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    handler = Collect()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    yield controller.port, handler, logins
    controller.stop()


def _message() -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = "report", "reports@raysys.test", "ops@acme.test"
    msg.set_content("hello")
    return msg


def test_smtp_credentials_are_never_sent_without_tls(auth_smtp):
    from raysys.analytics import mail

    port, handler, logins = auth_smtp
    with pytest.raises(InvalidInput, match="no TLS"):
        mail.send(f"smtp://user:s3cret@127.0.0.1:{port}", _message())
    with pytest.raises(InvalidInput, match="STARTTLS"):  # asked for STARTTLS, the server has none: no login
        mail.send(f"smtp://user:s3cret@127.0.0.1:{port}?starttls=true", _message())
    with pytest.raises(InvalidInput, match="loopback"):
        mail.send("smtp://user:s3cret@mail.example.com:25?insecure_auth=true", _message())
    assert logins == [] and handler.messages == []
    # Explicitly insecure, to a loopback server: allowed.
    mail.send(f"smtp://user:s3cret@127.0.0.1:{port}?insecure_auth=true", _message())
    assert logins == [("user", "s3cret")] and len(handler.messages) == 1
    # No credentials: plain SMTP to a relay stays possible.
    mail.send(f"smtp://127.0.0.1:{port}", _message())
    assert len(handler.messages) == 2 and len(logins) == 1


# --- cleanup: prefix and order --------------------------------------------------------------------------------


def _seed_sessions(settings, tenant: str, keys: dict[str, str]) -> None:
    async def go(db):
        await db.upsert_tenant(tenant)
        for sid, key in keys.items():
            await db.pool.execute("INSERT INTO sessions (id, tenant_id, redis_key, expires_at) VALUES ($1, $2, $3, $4)",
                                  f"{tenant}_{sid}", tenant, key, NOW - timedelta(minutes=5))

    run(with_db(settings, go))


def _session_ids(settings, tenant: str) -> list[str]:
    async def go(db):
        return sorted(r["id"] for r in await db.pool.fetch("SELECT id FROM sessions WHERE tenant_id = $1", tenant))

    return run(with_db(settings, go))


def test_cleanup_deletes_only_session_keys(ctx, asettings, tenant_id):
    """A sessions row naming a queue, a result or any key outside ``session:`` never gets that key deleted."""
    from raysys.tasks.maintenance import cleanup

    r = redis.Redis.from_url(asettings.redis_url)
    victims = {"queue": "ingest", "result": "celery-task-meta-abc", "lease": "raysys:sched:lease"}
    for key in victims.values():
        r.lpush(key, "precious") if key == "ingest" else r.set(key, "precious")
    r.set(f"session:{tenant_id}_ok", "{}")
    _seed_sessions(asettings, tenant_id, {**victims, "ok": f"session:{tenant_id}_ok"})
    out = cleanup(asettings, wh=lambda *a: [])
    assert all(r.exists(k) for k in victims.values()) and not r.exists(f"session:{tenant_id}_ok")
    assert out["redis_keys_deleted"] == 1 and out["redis_keys_refused"] == 3 and out["sessions_deleted"] == 4
    assert _session_ids(asettings, tenant_id) == []
    r.close()


def test_cleanup_deletes_keys_before_rows(ctx, asettings, tenant_id):
    """Redis unreachable during cleanup: no sessions row is deleted (a row without its key is harmless and goes
    next run; a key whose row is gone would never be deleted)."""
    from raysys.tasks.maintenance import cleanup

    _seed_sessions(asettings, tenant_id, {"a": f"session:{tenant_id}_a", "b": f"session:{tenant_id}_b"})
    down = asettings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0", result_backend=None)
    with pytest.raises(redis.exceptions.ConnectionError):
        cleanup(down, wh=lambda *a: [])
    assert _session_ids(asettings, tenant_id) == [f"{tenant_id}_a", f"{tenant_id}_b"]
    out = cleanup(asettings, wh=lambda *a: [])
    assert out["sessions_deleted"] == 2 and _session_ids(asettings, tenant_id) == []


# --- reports: one e-mail per tenant and day ----------------------------------------------------------------------


def test_a_report_rerun_or_retry_does_not_send_its_email_again(ctx, asettings, tenant_id, smtp_server):
    """SMTP down on the first try (retried, nothing sent), then the report goes out once; a redelivered or
    retried job for the same tenant and day saves the report again without e-mailing it again."""
    from raysys.errors import Retry
    from raysys.tasks.reports import generate_daily_report

    url, handler = smtp_server

    async def seed(db):
        await db.upsert_tenant(tenant_id, "Acme", ["ops@acme.test"])

    run(with_db(asettings, seed))
    day = "2025-03-10"
    ctx.settings = asettings.replace(smtp_url=f"smtp://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(Retry):
        generate_daily_report(ctx, tenant_id, day)
    ctx.settings = asettings.replace(smtp_url=url)
    first = generate_daily_report(ctx, tenant_id, day)
    assert first["emailed"] is True and len(handler.messages) == 1
    again = generate_daily_report(ctx, tenant_id, day)
    assert len(handler.messages) == 1
    assert again["emailed"] is True and again["already_emailed_by"] == ctx.task_id
    assert first["already_emailed_by"] is None
    other_day = generate_daily_report(ctx, tenant_id, "2025-03-11")
    assert other_day["already_emailed_by"] is None and len(handler.messages) == 2

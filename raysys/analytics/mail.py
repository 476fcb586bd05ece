"""Report e-mail: an HTML body with the charts inline (``cid:`` images) and the CSVs attached, over SMTP.

``SMTP_URL`` is ``smtp://[user:password@]host[:port][?starttls=true]`` or ``smtps://...`` (TLS from the
first byte). Standard library only (``smtplib``/``email``).

Credentials never travel in clear: with a user name, the connection is ``smtps://`` or upgraded with
STARTTLS (``?starttls=true``, certificate verified) before ``AUTH``; a server that does not offer
STARTTLS gets no login. ``?insecure_auth=true`` allows a login without TLS to a loopback host only (a
local relay or a test server).
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
import urllib.parse
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import make_msgid

from raysys.analytics.report import Report
from raysys.errors import InvalidInput


def build_message(report: Report, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """A multipart message: text and HTML alternatives, chart PNGs related to the HTML, CSV attachments."""
    if not recipients:
        raise InvalidInput(f"tenant {report.tenant_id!r} has no report recipients.")
    msg = EmailMessage()
    msg["Subject"] = report.subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    domain = sender.rsplit("@", 1)[-1] or "raysys"
    cids = {name: make_msgid(idstring=name, domain=domain) for name in report.charts}
    m = report.metrics
    msg.set_content(
        f"{report.subject}\n\nTotal calls: {int(m.get('total_calls', 0))}\n"
        + (f"AHT mean: {float(m['aht_mean']) / 60:.1f} min, p90 {float(m['aht_p90']) / 60:.1f} min\n"
           f"FCR: {float(m['fcr']) * 100:.1f} %\nCSAT proxy: {float(m['csat_proxy']):+.2f}\n" if m else "")
        + "\nThe HTML version has the charts; the CSV files are attached.\n")
    msg.add_alternative(report.html(src=lambda name: "cid:" + cids[name][1:-1]), subtype="html")
    html_part = msg.get_payload()[1]
    for name, cid in cids.items():
        html_part.add_related(report.charts[name], maintype="image", subtype="png", cid=cid,
                              filename=f"{name}.png")
    for filename, data in report.csv_files.items():
        msg.add_attachment(data, maintype="text", subtype="csv", filename=filename)
    return msg


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].strip().lower() in ("1", "true", "yes", "on")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def send(smtp_url: str, msg: EmailMessage, timeout: float = 30.0) -> None:
    """Deliver ``msg`` through the SMTP server at ``smtp_url``.

    Raises:
        InvalidInput: the URL would send credentials without TLS (no ``smtps://``, no ``starttls=true``,
            and not ``insecure_auth=true`` on a loopback host), or the server offers no STARTTLS.
        smtplib.SMTPException, OSError: delivery failed (worth a retry).
    """
    url = urllib.parse.urlparse(smtp_url)
    query = urllib.parse.parse_qs(url.query)
    host = url.hostname or "localhost"
    tls = url.scheme == "smtps"
    starttls = url.scheme == "smtp" and _flag(query, "starttls")
    insecure = _flag(query, "insecure_auth")
    if insecure and not _loopback(host):
        raise InvalidInput(f"SMTP_URL: insecure_auth=true is only allowed for a loopback host, not {host!r}.")
    if url.username and not (tls or starttls or insecure):
        raise InvalidInput("SMTP_URL has credentials but no TLS: use smtps:// or ?starttls=true (a password is "
                           "never sent in clear; insecure_auth=true allows it to a loopback host only).")
    if url.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(host, url.port or 465, timeout=timeout,
                                                context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(host, url.port or 25, timeout=timeout)
    with client:
        if starttls:
            client.ehlo()
            if not client.has_extn("starttls"):
                raise InvalidInput(f"SMTP server {host!r} does not offer STARTTLS, which SMTP_URL requires.")
            client.starttls(context=ssl.create_default_context())
        if url.username:
            client.login(urllib.parse.unquote(url.username), urllib.parse.unquote(url.password or ""))
        client.send_message(msg)

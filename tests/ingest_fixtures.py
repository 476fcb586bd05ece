"""Real documents for the ingestion tests, written by the tests themselves (fpdf2, python-docx, text).

The corpus is a small bank help centre: each file covers different topics, so a paraphrased question
has exactly one right chunk. ``QUESTIONS`` maps paraphrased questions (sharing few words with the
text) to the file and heading that answer them.
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

PDF_PAGES = [
    ("Lost or Stolen Cards",
     "If your card is lost or stolen, freeze it immediately in the mobile app under Cards, then call "
     "the 24-hour hotline so we can block it permanently. A replacement card is posted to your home "
     "address and arrives within five working days. Any transactions you did not make after the loss "
     "will be refunded once our fraud team has reviewed them."),
    ("International Transfers",
     "Payments abroad are sent over the SWIFT network. A transfer to a foreign bank normally arrives "
     "within one to three business days, depending on the destination country and intermediary banks. "
     "We charge a flat fee of 15 euros per outgoing international payment; the receiving bank may "
     "deduct its own charges. Exchange rates are fixed at the moment you confirm the payment."),
    ("Closing Your Account",
     "To close a current account, first move any remaining balance and cancel standing orders and "
     "direct debits. Then visit a branch with photo identification or send a signed letter. Closure "
     "takes up to ten days and a final statement is sent to you by post."),
]

DOCX_SECTIONS = [
    ("Refund Timelines",
     ["Refunds for purchases paid with a debit card are credited back to your account within five to "
      "seven working days after the merchant has approved the return.",
      "Credit card refunds appear on your next monthly statement."]),
    ("Disputed Payments",
     ["If a merchant refuses to refund you, open a dispute in online banking within 120 days of the "
      "payment and attach the receipt and any correspondence."]),
]

HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Mortgage FAQ</title>
<style>body { font-family: sans-serif }</style><script>window.analytics = {track: function(){}};</script>
</head><body>
<header><div class="logo">Example Bank</div><p>Open an account today - Careers - Investor relations</p></header>
<nav><ul><li><a href="/">Home</a></li><li><a href="/login">Log in to online banking</a></li>
<li><a href="/cards">Credit cards with zero fees</a></li></ul></nav>
<main>
  <h1>Mortgage questions</h1>
  <h2>Overpaying your mortgage</h2>
  <p>You can pay off up to ten percent of the outstanding loan
     each year without an early repayment charge. Larger overpayments
     are charged at two percent of the extra amount.</p>
  <h2>Switching to a new rate</h2>
  <p>When your fixed rate period ends, you move to our standard variable rate unless you choose a new
     deal up to six months in advance.</p>
  <div style="display: none">Tracking pixel text that must not be indexed</div>
</main>
<aside><h3>Related</h3><p>Savings accounts with bonus interest</p></aside>
<footer><p>Copyright Example Bank. Cookie settings. Accessibility statement.</p></footer>
</body></html>
"""

MARKDOWN_DOC = """---
title: Online banking help
---
# Online banking help

## Resetting your password

Forgotten your password? Choose **Forgot password** on the [sign-in page](https://bank.example/login),
enter your customer number and the one-time code we text to your registered mobile phone, then pick
a new password of at least twelve characters.

## Two-factor authentication

Every new device must be approved with a code from the authenticator app before it can make payments.
"""

TEXT_DOC = """Branch opening hours

Our branches open from 9 am to 5 pm on weekdays and from 10 am to 1 pm on Saturdays. All branches are
closed on Sundays and public holidays.

Cash machines outside every branch work around the clock.
"""

# question -> (file name, heading fragment (or None), words of the right chunk)
QUESTIONS = {
    "my wallet was taken with my bank card in it, what should I do?": ("handbook.pdf", "Lost or Stolen Cards", "freeze"),
    "how long does it take for money sent to another country to arrive?": ("handbook.pdf", "International Transfers", "SWIFT"),
    "when will I get my money back after returning something I bought with my debit card?": ("refunds.docx", "Refund Timelines", "debit card"),
    "can I repay extra on my home loan without a penalty?": ("mortgage.html", "Overpaying your mortgage", "ten percent"),
    "I can't remember my login credentials": ("banking.md", "Resetting your password", "Forgot password"),
    "what time do you open on a Saturday?": ("hours.txt", None, "Saturdays"),
}


def make_pdf(path: Path, pages: list[tuple[str, str]] = PDF_PAGES, title: str = "Card and payments handbook",
             *, filler_paragraphs: int = 0, seed: int = 0) -> Path:
    """A real PDF with a text layer: one heading and its text per page (plus optional filler text)."""
    from fpdf import FPDF

    rng = random.Random(seed)
    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_auto_page_break(True, margin=15)
    for heading, text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.multi_cell(0, 10, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        for _ in range(filler_paragraphs):
            pdf.ln(3)
            pdf.multi_cell(0, 6, filler_paragraph(rng), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


_FILLER_WORDS = ("account balance statement branch customer payment transfer card interest rate fee "
                 "mortgage loan savings deposit overdraft limit review service request document policy "
                 "verification identity address online mobile application support agent period month").split()


def filler_paragraph(rng: random.Random, sentences: int = 5) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(_FILLER_WORDS) for _ in range(rng.randint(10, 18))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def make_docx(path: Path, sections: list[tuple[str, list[str]]] = DOCX_SECTIONS, title: str = "Refund policy") -> Path:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_heading(title, level=0)
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for text in paragraphs:
            document.add_paragraph(text)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Payment type", "Refund time"
    table.cell(1, 0).text, table.cell(1, 1).text = "Debit card", "5-7 working days"
    document.save(str(path))
    return path


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write the five-format corpus into ``folder``; return name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "handbook.pdf": make_pdf(folder / "handbook.pdf"),
        "refunds.docx": make_docx(folder / "refunds.docx"),
        "mortgage.html": folder / "mortgage.html",
        "banking.md": folder / "banking.md",
        "hours.txt": folder / "hours.txt",
    }
    files["mortgage.html"].write_text(HTML_PAGE)
    files["banking.md"].write_text(MARKDOWN_DOC)
    files["hours.txt"].write_text(TEXT_DOC)
    return files


def encrypted_pdf(source: Path, path: Path, password: str = "s3cret") -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(str(source)))
    writer.encrypt(user_password=password, owner_password=password, algorithm="AES-256")
    with open(path, "wb") as fh:
        writer.write(fh)
    return path


def corrupt_docx(path: Path) -> Path:
    """A ZIP that claims to be a Word document but whose document.xml is not XML."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "this is not <xml")
    path.write_bytes(buf.getvalue())
    return path


PNG_BYTES = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15"
             b"\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")

"""Detection by content, parsers and the chunker, on real files (no services needed)."""

from __future__ import annotations

import io
import zipfile

import pytest
from ingest_fixtures import HTML_PAGE, MARKDOWN_DOC, PNG_BYTES, make_docx, make_pdf

from raysys.actors.embedding import default_model
from raysys.errors import InvalidInput, UnsupportedMedia
from raysys.ingest.chunking import chunk_blocks, token_counter
from raysys.ingest.detect import sniff
from raysys.ingest.parse import Block, parse


@pytest.fixture(scope="module")
def counter():
    return token_counter(default_model())


def test_type_is_decided_by_content_not_extension(tmp_path):
    pdf = make_pdf(tmp_path / "a.pdf").read_bytes()
    docx = make_docx(tmp_path / "a.docx").read_bytes()
    assert sniff(pdf, "report.txt") == "pdf"
    assert sniff(docx, "report.pdf") == "docx"
    assert sniff(HTML_PAGE.encode(), "page.md") == "html"
    assert sniff(HTML_PAGE.encode(), "noextension") == "html"
    assert sniff(MARKDOWN_DOC.encode(), "notes") == "markdown"
    assert sniff(b"Plain words, nothing else.\n", "notes") == "text"
    assert sniff("Caf\u00e9 cr\u00e8me".encode("cp1252"), "menu.txt") == "text"
    with pytest.raises(UnsupportedMedia, match="PNG image"):
        sniff(PNG_BYTES, "scan.pdf")
    with pytest.raises(UnsupportedMedia, match="binary data"):
        sniff(bytes(range(256)), "x.txt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(UnsupportedMedia, match="Excel"):
        sniff(buf.getvalue(), "sheet.docx")
    with pytest.raises(UnsupportedMedia, match="legacy OLE2"):
        sniff(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600), "old.doc")
    with pytest.raises(InvalidInput, match="encrypted"):
        sniff(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + "EncryptedPackage".encode("utf-16-le") + bytes(100), "x.docx")
    with pytest.raises(InvalidInput, match="corrupt ZIP"):
        sniff(b"PK\x03\x04" + bytes(50), "x.docx")


def test_parsers_keep_headings_pages_and_main_text(tmp_path):
    pdf = parse("pdf", make_pdf(tmp_path / "a.pdf").read_bytes())
    assert pdf.pages == 3 and pdf.title == "Card and payments handbook"
    assert {(b.page, b.heading) for b in pdf.blocks} == {(1, "Lost or Stolen Cards"), (2, "International Transfers"),
                                                          (3, "Closing Your Account")}
    docx = parse("docx", make_docx(tmp_path / "a.docx").read_bytes())
    assert any("Payment type | Refund time" == b.text for b in docx.blocks)  # tables are kept, row by row
    html = parse("html", HTML_PAGE.encode())
    assert html.title == "Mortgage FAQ"
    assert [b.heading for b in html.blocks] == ["Mortgage questions > Overpaying your mortgage",
                                                 "Mortgage questions > Switching to a new rate"]
    assert "outstanding loan each year" in html.blocks[0].text  # source line breaks collapsed
    md = parse("markdown", MARKDOWN_DOC.encode())
    assert md.title == "Online banking help"
    assert "title:" not in " ".join(b.text for b in md.blocks)  # front matter skipped
    assert "Choose Forgot password on the sign-in page," in md.blocks[0].text  # markup stripped, link text kept
    with pytest.raises(InvalidInput, match="no text"):
        parse("text", b"   \n\n  ")


def test_chunks_fit_the_model_keep_their_heading_and_overlap(counter):
    sentences = [f"Sentence number {i} explains one rule about card payments and their limits." for i in range(120)]
    blocks = [Block(" ".join(sentences[:60]), 4, "Limits"), Block(" ".join(sentences[60:]), 5, "Limits"),
              Block("word" + " longword" * 2000, 6, "Run-on"), Block("Short tail.", 6, "Other")]
    chunks = chunk_blocks(blocks, counter, target_tokens=120, overlap_tokens=20)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert counter.count(c.embed_text) <= counter.max_tokens  # never truncated by the model
        assert c.embed_text.startswith(c.heading + "\n")
    limits = [c for c in chunks if c.heading == "Limits"]
    assert len(limits) >= 8 and {c.page for c in limits} == {4, 5}
    for a, b in zip(limits, limits[1:], strict=False):  # consecutive chunks share a trailing sentence
        assert a.text.rsplit(". ", 1)[-1].rstrip(".") in b.text
    assert len([c for c in chunks if c.heading == "Run-on"]) >= 15  # a sentence longer than the budget is cut
    assert chunks[-1].heading == "Other" and chunks[-1].text == "Short tail."
    assert any("Sentence number 119" in c.text for c in limits)


def test_a_docx_that_expands_too_far_is_refused(monkeypatch):
    from raysys.errors import TooLarge
    from raysys.ingest import detect

    monkeypatch.setattr(detect, "MAX_UNZIPPED_BYTES", 1024 * 1024)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"0" * (2 * 1024 * 1024))
    assert len(buf.getvalue()) < 10_000  # small on disk, 2 MiB inside
    with pytest.raises(TooLarge, match="expands to"):
        sniff(buf.getvalue(), "bomb.docx")

"""What kind of document a file is, decided by its bytes (magic numbers and text sniffing).

The extension is only a hint between formats that share bytes (Markdown and plain text); it never
makes a binary file acceptable, and a ``report.pdf`` that holds HTML is read as HTML.

Kinds: ``pdf``, ``docx``, ``html``, ``markdown``, ``text``. Everything else is refused with
:class:`raysys.errors.UnsupportedMedia`, naming what the bytes look like where that is known.
"""

from __future__ import annotations

import io
import re
import zipfile

from raysys.errors import InvalidInput, TooLarge, UnsupportedMedia

MIME_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "html": "text/html",
    "markdown": "text/markdown",
    "text": "text/plain",
}

# Binary formats people hand to an ingester by mistake: magic prefix -> what it is.
_KNOWN_BINARY: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"RIFF", "a RIFF file (WAV/AVI/WebP)"),
    (b"OggS", "an Ogg audio/video file"),
    (b"fLaC", "a FLAC audio file"),
    (b"ID3\x03", "an MP3 audio file"),
    (b"ID3\x04", "an MP3 audio file"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a", "a RAR archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"{\\rtf", "an RTF document"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"%!PS-Adobe", "a PostScript file"),
)
MAX_UNZIPPED_BYTES = 512 * 1024 * 1024  # a DOCX whose parts expand beyond this is refused
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")

_HTML_START = re.compile(
    rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body|title|meta|main|article|div|p|h[1-6])[\s>/]",
    re.IGNORECASE | re.DOTALL,
)
_MD_HINT = re.compile(r"^(#{1,6} \S|[=-]{3,}\s*$|```|\s*[-*+] \S.*\]\(|\[.+\]\(.+\))", re.MULTILINE)
_MARKDOWN_EXT = (".md", ".markdown", ".mdown", ".mkd")
_TEXT_EXT = (".txt", ".text", ".log", ".csv", ".rst")


def sniff(data: bytes, filename: str = "") -> str:
    """The document kind of ``data``: ``pdf``, ``docx``, ``html``, ``markdown`` or ``text``.

    Raises:
        UnsupportedMedia: the bytes are another format, or binary data that is not text.
        InvalidInput: an encrypted Office document (it is an OLE2 container with an encrypted package).
    """
    name = filename.lower()
    if not data:
        raise InvalidInput("the document is empty")
    # PDF: readers tolerate a little leading whitespace (or a BOM) before the header.
    if data[:1024].lstrip(b" \t\r\n\x00\xef\xbb\xbf").startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(_ZIP):
        return _sniff_zip(data)
    if data.startswith(_OLE2):
        if "EncryptedPackage".encode("utf-16-le") in data:
            raise InvalidInput("the document is an encrypted (password-protected) Office file; "
                               "remove the password and ingest it again")
        raise UnsupportedMedia("the document is a legacy OLE2 Office file (.doc/.xls/.ppt); "
                               "save it as .docx, PDF or text")
    for magic, what in _KNOWN_BINARY:
        if data.startswith(magic):
            raise UnsupportedMedia(f"unsupported document type: the content is {what}")
    text = decode_text(data)
    head = text[:4096].encode("utf-8", "replace")
    if _HTML_START.match(head) or (name.endswith((".html", ".htm", ".xhtml")) and "<" in text[:4096]):
        return "html"
    if name.endswith(_MARKDOWN_EXT):
        return "markdown"
    if name.endswith(_TEXT_EXT):
        return "text"
    return "markdown" if _MD_HINT.search(text[:20_000]) else "text"


def _sniff_zip(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            unzipped = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidInput(f"the document is a corrupt ZIP/DOCX container: {exc}") from None
    if unzipped > MAX_UNZIPPED_BYTES:  # a zip bomb, or a document no one can read whole
        raise TooLarge(f"the document expands to {unzipped:,} bytes, more than {MAX_UNZIPPED_BYTES:,}")
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        raise UnsupportedMedia("unsupported document type: the content is an Excel workbook (.xlsx)")
    if "ppt/presentation.xml" in names:
        raise UnsupportedMedia("unsupported document type: the content is a PowerPoint deck (.pptx)")
    if "mimetype" in names:
        raise UnsupportedMedia("unsupported document type: the content is an OpenDocument or EPUB file")
    raise UnsupportedMedia("unsupported document type: the content is a ZIP archive")


def decode_text(data: bytes) -> str:
    """Decode text bytes (UTF-8, UTF-16 with BOM, else Windows-1252); refuse binary data.

    Raises:
        UnsupportedMedia: the bytes hold NULs or many control characters (binary, not text).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    sample = data[:65_536]
    controls = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    if b"\x00" in sample or controls > len(sample) * 0.01:
        raise UnsupportedMedia("unsupported document type: the content is binary data, not a known document format")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")

"""Document parsers: bytes of a PDF, DOCX, HTML, Markdown or text file -> headed text blocks.

Every parser returns a :class:`ParsedDocument` whose blocks are paragraphs in reading order, each
with the page it is on (PDF only) and the heading path it sits under (``"Refunds > Card refunds"``).
What each parser keeps:

- PDF: the text layer of each page (pypdf); headings from the outline (bookmarks) and from lines
  that look like headings (numbered, ALL CAPS or short Title Case lines). No OCR: a scanned PDF
  without a text layer is refused. An encrypted PDF opens only when its user password is empty.
- DOCX: paragraphs and tables in body order; ``Title``/``Heading N`` styles are headings.
- HTML: the main text; ``nav``, ``header``, ``footer``, ``aside``, scripts, styles, forms and hidden
  elements are dropped; ``<main>``/``<article>`` is preferred to the whole ``<body>``.
- Markdown: ATX and setext headings, inline markup stripped (link text kept), front matter skipped.
- Text: paragraphs separated by blank lines.

Errors: :class:`raysys.errors.InvalidInput` for corrupt or encrypted files and files with no text,
:class:`raysys.errors.TooLarge` beyond ``max_pages``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

from raysys.errors import InvalidInput, TooLarge
from raysys.ingest.detect import MIME_TYPES, decode_text

HEADING_SEP = " > "
_MAX_HEADING_CHARS = 200


@dataclass
class Block:
    """One paragraph: its text, the page it starts on (1-based, PDF only), its heading path."""

    text: str
    page: int | None = None
    heading: str | None = None


@dataclass
class ParsedDocument:
    kind: str
    title: str | None
    pages: int | None
    blocks: list[Block] = field(default_factory=list)

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.kind]

    @property
    def chars(self) -> int:
        return sum(len(b.text) for b in self.blocks)


class _Headings:
    """The current heading path; ``set(level, text)`` drops deeper levels."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, str]] = []

    def set(self, level: int, text: str) -> None:
        text = _clean(text)[:_MAX_HEADING_CHARS]
        if not text:
            return
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text))

    @property
    def path(self) -> str | None:
        return HEADING_SEP.join(t for _, t in self.stack) or None


_WS = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def parse(kind: str, data: bytes, *, max_pages: int | None = None, filename: str = "") -> ParsedDocument:
    """Parse ``data`` as ``kind`` (from :func:`raysys.ingest.detect.sniff`).

    Raises:
        InvalidInput: corrupt, encrypted, or no extractable text.
        TooLarge: more than ``max_pages`` pages.
    """
    parser = {"pdf": parse_pdf, "docx": parse_docx, "html": parse_html, "markdown": parse_markdown,
              "text": parse_text}[kind]
    doc = parser(data, max_pages=max_pages)
    doc.blocks = [b for b in doc.blocks if b.text.strip()]
    if not doc.blocks:
        what = "no text layer (a scanned PDF? OCR is not supported)" if kind == "pdf" else "no text"
        raise InvalidInput(f"the document has {what}")
    if not doc.title and filename:
        doc.title = filename
    return doc


# --- PDF ------------------------------------------------------------------------------------------------------

_NUMBERED = re.compile(r"^(\d+(\.\d+)*\.?|[IVX]+\.|[A-Z]\.|(chapter|section|part|appendix)\s+\S+)\s+\S", re.I)
_TERMINAL = ".,;:!?"


def _looks_like_heading(line: str) -> int | None:
    """A heading level (1-3) for a PDF text line that looks like a heading, else None."""
    if not (2 <= len(line) <= 90) or line[-1] in _TERMINAL or not any(c.isalpha() for c in line):
        return None
    words = line.split()
    if len(words) > 12:
        return None
    m = _NUMBERED.match(line)
    if m:
        number = m.group(1).rstrip(".")
        return min(3, number.count(".") + 1) if number[0].isdigit() else 1
    letters = [c for c in line if c.isalpha()]
    if len(letters) >= 4 and all(c.isupper() for c in letters):
        return 1
    small = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with", "vs", "&"}
    caps = [w for w in words if w.lower() not in small]
    if 1 <= len(words) <= 8 and caps and all(w[0].isupper() or not w[0].isalpha() for w in caps):
        return 2
    return None


def _outline_headings(reader) -> dict[int, list[tuple[int, str]]]:
    """page index -> [(level, title)] from the PDF outline, if it has one."""
    out: dict[int, list[tuple[int, str]]] = {}

    def walk(items, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001 - a broken bookmark is no reason to refuse the file
                continue
            if page is not None and page >= 0:
                out.setdefault(page, []).append((level, str(item.title)))

    try:
        walk(reader.outline, 1)
    except Exception:  # noqa: BLE001 - a broken outline only costs the headings
        return {}
    return out


def parse_pdf(data: bytes, *, max_pages: int | None = None) -> ParsedDocument:
    from pypdf import PdfReader  # noqa: PLC0415 - pypdf: only PDF files need it
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError  # noqa: PLC0415 - pypdf: only PDF files need it

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError) as exc:
                raise InvalidInput(f"the PDF is encrypted with a scheme that cannot be opened: {exc}") from None
            if not opened:
                raise InvalidInput("the PDF is encrypted (password-protected); remove the password and ingest it again")
        count = len(reader.pages)
    except InvalidInput:
        raise
    except FileNotDecryptedError:
        raise InvalidInput("the PDF is encrypted (password-protected); remove the password and ingest it again") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise InvalidInput(f"the PDF is corrupt and cannot be read: {exc or type(exc).__name__}") from None
    if count == 0:
        raise InvalidInput("the PDF has no pages")
    if max_pages is not None and count > max_pages:
        raise TooLarge(f"the PDF has {count} pages, more than the limit of {max_pages} (MAX_DOCUMENT_PAGES)")

    title = None
    try:
        meta = reader.metadata
        title = _clean(str(meta.title)) if meta and meta.title else None
    except Exception:  # noqa: BLE001 - metadata is optional
        title = None
    outline = _outline_headings(reader)
    headings = _Headings()
    blocks: list[Block] = []
    for index in range(count):
        try:
            text = reader.pages[index].extract_text() or ""
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
            raise InvalidInput(f"the PDF is corrupt: page {index + 1} cannot be read ({exc})") from None
        for level, heading in outline.get(index, []):
            headings.set(level, heading)
        page_no = index + 1
        para: list[str] = []

        def flush(para: list[str] = para, page_no: int = page_no) -> None:
            if para:
                blocks.append(Block(_join_lines(para), page_no, headings.path))
                para.clear()

        for raw in text.splitlines():
            line = _clean(raw)
            if not line:
                flush()
                continue
            level = _looks_like_heading(line)
            if level is not None:
                flush()
                if title is None and not blocks and index == 0:
                    title = line
                headings.set(level, line)
                continue
            para.append(line)
        flush()
    return ParsedDocument("pdf", title, count, blocks)


def _join_lines(lines: list[str]) -> str:
    out = lines[0]
    for line in lines[1:]:
        # a word hyphenated across lines: "refund-" + "able" -> "refundable"
        if out.endswith("-") and len(out) > 1 and out[-2].isalpha() and line[:1].islower():
            out = out[:-1] + line
        else:
            out = out + " " + line
    return out


# --- DOCX -----------------------------------------------------------------------------------------------------


def parse_docx(data: bytes, *, max_pages: int | None = None) -> ParsedDocument:
    import docx  # noqa: PLC0415 - python-docx: only DOCX files need it
    from docx.opc.exceptions import OpcError  # noqa: PLC0415 - python-docx: only DOCX files need it
    from docx.table import Table  # noqa: PLC0415 - python-docx: only DOCX files need it

    try:
        document = docx.Document(io.BytesIO(data))
        title = _clean(document.core_properties.title or "") or None
        items = list(document.iter_inner_content())
    except (OpcError, KeyError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise InvalidInput(f"the DOCX is corrupt and cannot be read: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("lxml", "zipfile")):
            raise InvalidInput(f"the DOCX is corrupt and cannot be read: {exc}") from None
        raise
    headings = _Headings()
    blocks: list[Block] = []
    for item in items:
        if isinstance(item, Table):
            for row in item.rows:
                cells: list[str] = []
                for cell in row.cells:
                    text = _clean(cell.text)
                    if text and (not cells or cells[-1] != text):  # merged cells repeat their text
                        cells.append(text)
                if cells:
                    blocks.append(Block(" | ".join(cells), None, headings.path))
            continue
        text = _clean(item.text)
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        if style == "Title":
            title = title or text
            headings.set(0, text)
        elif style.startswith("Heading"):
            digits = "".join(c for c in style if c.isdigit())
            headings.set(int(digits) if digits else 1, text)
        else:
            blocks.append(Block(text, None, headings.path))
    return ParsedDocument("docx", title, None, blocks)


# --- HTML -----------------------------------------------------------------------------------------------------

_DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "iframe",
              "svg", "canvas", "button", "select", "dialog", "menu", "object", "embed")
_DROP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"}
_BLOCK_TAGS = ("p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "pre", "blockquote",
               "table", "tr", "td", "th", "figure", "figcaption", "address", "details", "summary", "hr", "br")
_HEADING_TAG = re.compile(r"^h[1-6]$")
_MARK = "\x01"


def parse_html(data: bytes, *, max_pages: int | None = None) -> ParsedDocument:
    from bs4 import BeautifulSoup, Comment, NavigableString  # noqa: PLC0415 - BeautifulSoup: only HTML files need it

    soup = BeautifulSoup(decode_text(data), "lxml")
    title_tag = soup.find("title")
    title = _clean(title_tag.get_text(" ")) if title_tag else None
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.decomposed:
            continue
        attrs = tag.attrs or {}
        hidden = "hidden" in attrs or str(attrs.get("aria-hidden", "")).lower() == "true"
        style = str(attrs.get("style", "")).replace(" ", "").lower()
        if hidden or "display:none" in style or str(attrs.get("role", "")).lower() in _DROP_ROLES:
            tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    root = soup.find("main") or soup.find("article") or soup.find("body") or soup
    # Source formatting is not structure: collapse whitespace inside text, except in <pre>.
    for node in list(root.find_all(string=True)):
        if isinstance(node, NavigableString) and not node.find_parent("pre"):
            node.replace_with(re.sub(r"\s+", " ", str(node)))
    for tag in root.find_all(_HEADING_TAG):
        text = _clean(tag.get_text(" "))
        tag.replace_with(f"\n{_MARK}{tag.name[1]}{_MARK}{text}\n" if text else "\n")
    for tag in root.find_all(_BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    headings = _Headings()
    blocks: list[Block] = []
    for line in root.get_text().split("\n"):
        if line.startswith(_MARK):
            _, level, text = line.split(_MARK, 2)
            headings.set(int(level), text)
            if not title and level == "1":
                title = _clean(text)
            continue
        text = _clean(line)
        if text:
            blocks.append(Block(text, None, headings.path))
    return ParsedDocument("html", title or None, None, blocks)


# --- Markdown -------------------------------------------------------------------------------------------------

_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-{2,})\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_LIST = re.compile(r"^\s*([-*+]|\d+[.)])\s+")
_INLINE = (
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),           # images: alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),            # links: link text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),           # reference links
    (re.compile(r"<[^>\n]+>"), ""),                           # inline HTML
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),                 # bold
    (re.compile(r"(?<![\w*])[*_]([^*_\n]+)[*_](?![\w*])"), r"\1"),  # italics
    (re.compile(r"`([^`]+)`"), r"\1"),                        # inline code
)


def _strip_inline(text: str) -> str:
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return _clean(text)


def parse_markdown(data: bytes, *, max_pages: int | None = None) -> ParsedDocument:
    lines = decode_text(data).splitlines()
    if lines and lines[0].strip() == "---":  # YAML front matter
        for end in range(1, min(len(lines), 200)):
            if lines[end].strip() in ("---", "..."):
                lines = lines[end + 1:]
                break
    headings = _Headings()
    blocks: list[Block] = []
    title: str | None = None
    para: list[str] = []
    in_fence = False

    def flush() -> None:
        if para:
            blocks.append(Block(_strip_inline(" ".join(para)) if not in_fence else "\n".join(para),
                                None, headings.path))
            para.clear()

    for line in lines:
        if _FENCE.match(line):
            flush()
            in_fence = not in_fence
            continue
        if in_fence:
            para.append(line)
            continue
        m = _ATX.match(line)
        if m:
            flush()
            headings.set(len(m.group(1)), _strip_inline(m.group(2)))
            title = title or (_strip_inline(m.group(2)) if len(m.group(1)) == 1 else None)
            continue
        if _SETEXT.match(line):
            if para:  # setext heading: the paragraph above the underline is the heading
                text = _strip_inline(" ".join(para))
                para.clear()
                level = 1 if line.strip().startswith("=") else 2
                headings.set(level, text)
                title = title or (text if level == 1 else None)
            continue  # otherwise a thematic break
        if not line.strip():
            flush()
            continue
        if _LIST.match(line):
            flush()
            para.append(_LIST.sub("", line, count=1))
            continue
        para.append(line.strip().lstrip(">").strip() if line.lstrip().startswith(">") else line.strip())
    flush()
    return ParsedDocument("markdown", title, None, blocks)


# --- plain text -----------------------------------------------------------------------------------------------


def parse_text(data: bytes, *, max_pages: int | None = None) -> ParsedDocument:
    text = decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    blocks = [Block(_clean(p.replace("\n", " "))) for p in re.split(r"\n\s*\n", text)]
    first = next((b.text for b in blocks if b.text), "")
    title = first if 0 < len(first) <= 120 else None
    return ParsedDocument("text", title, None, blocks)

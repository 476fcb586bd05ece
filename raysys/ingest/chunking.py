"""Chunking: headed paragraphs -> chunks that fit the embedding model, with a little overlap.

Rules:

- A chunk never crosses a heading: each chunk belongs to one heading path, and the text that is
  embedded is ``heading + "\\n" + text``, so the heading's words count against the token budget.
- Chunks are packed from whole sentences up to ``target_tokens``; a sentence longer than the budget
  is cut at token boundaries. Nothing is ever truncated silently by the model.
- Consecutive chunks under the same heading overlap by up to ``overlap_tokens`` of whole trailing
  sentences, so a fact split across a boundary is still found.
- A chunk may run on from one page to the next; its ``page`` is the page its own text starts on.

Token counts come from the embedding model's own tokenizer (``tokenizer.json`` in the model folder,
loaded with the ``tokenizers`` library: 25 ms, no model weights), and ``max_tokens`` is the model's
``max_seq_length`` less the two special tokens.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raysys.ingest.parse import Block

DEFAULT_TARGET_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 32
MAX_HEADING_TOKENS = 48

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9À-Ý])")


@dataclass
class Chunk:
    position: int
    text: str
    page: int | None
    heading: str | None
    tokens: int

    @property
    def embed_text(self) -> str:
        """What is embedded: the heading path, then the text."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


class TokenCounter:
    """The embedding model's tokenizer, without the model. ``max_tokens`` excludes [CLS]/[SEP]."""

    def __init__(self, model_path: str) -> None:
        path = Path(model_path)
        seq = 256
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer  # noqa: PLC0415 - tokenizers: only when the model's tokenizer is loaded

            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            self._encode_batch = lambda texts: [(e.ids, e.offsets) for e in
                                                tok.encode_batch(list(texts), add_special_tokens=False)]
        else:  # a hub id or a folder without a fast tokenizer file
            from transformers import AutoTokenizer  # noqa: PLC0415 - transformers: heavy, only when no tokenizer.json is found

            auto = AutoTokenizer.from_pretrained(model_path)
            seq = min(seq, int(getattr(auto, "model_max_length", seq) or seq))

            def encode_batch(texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
                enc = auto(list(texts), add_special_tokens=False, return_offsets_mapping=True)
                return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))

            self._encode_batch = encode_batch
        config = path / "sentence_bert_config.json"
        if config.is_file():
            seq = int(json.loads(config.read_text()).get("max_seq_length", seq))
        self.max_tokens = seq - 2

    def count(self, text: str) -> int:
        return len(self._encode_batch([text])[0][0])

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids, _ in self._encode_batch(texts)] if texts else []

    def split(self, text: str, size: int) -> list[str]:
        """Cut ``text`` into pieces of at most ``size`` tokens, at token boundaries."""
        _, offsets = self._encode_batch([text])[0]
        pieces = []
        for start in range(0, len(offsets), size):
            window = offsets[start:start + size]
            end = offsets[start + size][0] if start + size < len(offsets) else len(text)
            pieces.append(text[window[0][0]:end].strip())
        return [p for p in pieces if p]


@functools.lru_cache(maxsize=4)
def token_counter(model_path: str) -> TokenCounter:
    """One :class:`TokenCounter` per model and process."""
    return TokenCounter(model_path)


@dataclass
class _Unit:
    text: str
    page: int | None
    tokens: int
    new_paragraph: bool


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def chunk_blocks(blocks: Sequence[Block], counter: TokenCounter, *, target_tokens: int = DEFAULT_TARGET_TOKENS,
                 overlap_tokens: int = DEFAULT_OVERLAP_TOKENS) -> list[Chunk]:
    """Pack ``blocks`` into :class:`Chunk` objects numbered from 0 (see the module rules)."""
    # group consecutive blocks by heading
    groups: list[tuple[str | None, list[Block]]] = []
    for block in blocks:
        if groups and groups[-1][0] == block.heading:
            groups[-1][1].append(block)
        else:
            groups.append((block.heading, [block]))
    chunks: list[Chunk] = []
    for heading, group in groups:
        htok = 0
        if heading:
            htok = counter.count(heading)
            if htok > MAX_HEADING_TOKENS:
                heading = counter.split(heading, MAX_HEADING_TOKENS)[-1]
                htok = counter.count(heading)
        budget = counter.max_tokens - (htok + 1 if heading else 0)  # +1: margin for the joining newline
        target = max(16, min(target_tokens, budget))
        units = _units(group, counter, budget)
        chunks.extend(_pack(units, heading, target, budget, min(overlap_tokens, target // 4), len(chunks)))
    return chunks


def _units(blocks: Sequence[Block], counter: TokenCounter, budget: int) -> list[_Unit]:
    sentences: list[tuple[str, int | None, bool]] = []
    for block in blocks:
        for i, sentence in enumerate(split_sentences(block.text)):
            sentences.append((sentence, block.page, i == 0))
    counts = counter.count_many([s for s, _, _ in sentences])
    units: list[_Unit] = []
    for (text, page, new_par), tokens in zip(sentences, counts, strict=True):
        if tokens <= budget:
            units.append(_Unit(text, page, tokens, new_par))
            continue
        for j, piece in enumerate(counter.split(text, budget)):
            units.append(_Unit(piece, page, min(budget, counter.count(piece)), new_par and j == 0))
    return units


def _join(units: Sequence[_Unit]) -> str:
    out: list[str] = []
    for k, unit in enumerate(units):
        if k:
            out.append("\n" if unit.new_paragraph else " ")
        out.append(unit.text)
    return "".join(out)


def _pack(units: list[_Unit], heading: str | None, target: int, budget: int, overlap: int,
          first_position: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[_Unit] = []
    fresh = 0  # index in current of the first unit that is not overlap
    size = 0

    def emit() -> None:
        if len(current) > fresh:
            page = current[fresh].page
            chunks.append(Chunk(first_position + len(chunks), _join(current), page, heading, size))

    for unit in units:
        if current and size + unit.tokens > target:
            emit()
            # carry whole trailing sentences (up to `overlap` tokens) into the next chunk
            carry: list[_Unit] = []
            carried = 0
            for prev in reversed(current[fresh:]):
                if carried + prev.tokens > overlap or len(carry) + 1 >= len(current[fresh:]):
                    break
                carry.insert(0, prev)
                carried += prev.tokens
            if carried + unit.tokens > budget:
                carry, carried = [], 0
            current, fresh, size = carry, len(carry), carried
        current.append(unit)
        size += unit.tokens
    emit()
    return chunks

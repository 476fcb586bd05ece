"""Call summaries: extractive by default, an OpenAI-compatible chat endpoint when one is configured.

Extractive: the call's turns are embedded; each turn is scored by its similarity to the call's
centroid (centrality) and picked by maximal marginal relevance, so the summary covers the call
without repeating itself. The chosen turns are given in call order with who said them.

Abstractive: when ``SUMMARY_LLM_URL`` is set, the transcript is sent to ``<url>/chat/completions``
(OpenAI's chat API, which vLLM, llama.cpp, Ollama and others serve). Any error or empty answer falls
back to the extractive summary; the result says which method produced it and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import numpy as np

log = logging.getLogger(__name__)

Encoder = Callable[[Sequence[str]], np.ndarray]
MIN_WORDS = 4  # turns shorter than this ("Hi.", "Okay.") are chosen only when nothing else is left
SYSTEM_PROMPT = ("You summarise contact-centre calls for supervisors. In at most three sentences, say why the "
                 "customer called, what the agent did, and how the call ended. Use only facts from the transcript.")


def _line(turn: dict) -> str:
    return f"{str(turn.get('role') or 'unknown').capitalize()}: {turn['text'].strip()}"


def extractive_summary(turns: Sequence[dict], encode: Encoder, max_turns: int = 3,
                       diversity: float = 0.3) -> dict[str, Any]:
    """Pick up to ``max_turns`` central, non-redundant turns (``{"role", "text", "start"}``).

    ``diversity`` in [0, 1] trades centrality (0) for novelty (1) in maximal marginal relevance.
    Returns ``{"method": "extractive", "text", "sentences": [{"role", "text", "start"}]}``.
    """
    items = [t for t in turns if (t.get("text") or "").strip()]
    if not items:
        return {"method": "extractive", "text": "", "sentences": []}
    long_enough = [t for t in items if len(t["text"].split()) >= MIN_WORDS]
    candidates = long_enough if len(long_enough) >= min(max_turns, len(items)) else items
    vectors = np.asarray(encode([t["text"] for t in candidates]), dtype=np.float32)
    centroid = vectors.mean(axis=0)
    centroid /= np.linalg.norm(centroid) or 1.0
    relevance = vectors @ centroid
    similarity = vectors @ vectors.T
    chosen: list[int] = []
    while len(chosen) < min(max_turns, len(candidates)):
        best, best_score = -1, -np.inf
        for i in range(len(candidates)):
            if i in chosen:
                continue
            redundancy = max((similarity[i, j] for j in chosen), default=0.0)
            score = (1 - diversity) * relevance[i] - diversity * redundancy
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    picked = [candidates[i] for i in sorted(chosen, key=lambda i: (candidates[i].get("start", 0.0), i))]
    sentences = [{"role": t.get("role") or "unknown", "text": t["text"].strip(), "start": t.get("start")}
                 for t in picked]
    return {"method": "extractive", "text": "\n".join(_line(t) for t in picked), "sentences": sentences}


def llm_summary(turns: Sequence[dict], url: str, model: str, api_key: str | None = None,
                timeout: float = 30.0) -> str:
    """Ask an OpenAI-compatible chat endpoint for a summary. Raises on any HTTP or format error."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    transcript = "\n".join(_line(t) for t in turns if (t.get("text") or "").strip())
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.post(endpoint, timeout=timeout, headers=headers, json={
        "model": model, "temperature": 0,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": transcript}],
    })
    response.raise_for_status()
    text = response.json()["choices"][0]["message"]["content"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the chat endpoint returned an empty summary")
    return text.strip()


def summarize(turns: Sequence[dict], encode: Encoder, *, llm_url: str | None = None, llm_model: str = "",
              llm_api_key: str | None = None, max_turns: int = 3) -> dict[str, Any]:
    """The call's summary: by the configured chat endpoint, else (or on its failure) extractive."""
    if llm_url and any((t.get("text") or "").strip() for t in turns):
        try:
            return {"method": "llm", "model": llm_model,
                    "text": llm_summary(turns, llm_url, llm_model, llm_api_key), "sentences": []}
        except Exception as exc:  # noqa: BLE001 - any failure of the endpoint falls back
            log.warning("summary endpoint %s failed (%s: %s); using the extractive summary",
                        llm_url, type(exc).__name__, exc)
            result = extractive_summary(turns, encode, max_turns=max_turns)
            result["fallback_reason"] = f"{type(exc).__name__}: {exc}"[:300]
            return result
    return extractive_summary(turns, encode, max_turns=max_turns)

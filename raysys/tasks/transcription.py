"""``workers.tasks.transcribe_call(call_id, audio_path)`` (queue ``analytics``): transcribe a call's recording
and store the turns with ``source='asr'`` unless the platform wrote turns for the call (platform turns win).

The transcription itself (words → speaker turns) is :mod:`raysys.analytics.transcripts`.
"""

from __future__ import annotations

from typing import Any

from raysys.analytics import redaction_turns
from raysys.analytics.transcripts import stored_turns, transcribe_recording
from raysys.constants import ORCHESTRATION_CPUS
from raysys.errors import InvalidInput, NotFound
from raysys.paths import confine_file
from raysys.storage.postgres import has_database, open_db, run_sync
from raysys.tasks.registry import TaskContext, task


@task("workers.tasks.transcribe_call", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def transcribe_call(ctx: TaskContext, call_id: str, audio_path: str) -> dict[str, Any]:
    """Transcribe ``audio_path`` for ``call_id``; store the turns (source 'asr') if the call exists and the
    platform wrote none.

    Returns ``{"call_id", "turns", "text", "language", "duration", "backend", "model_version", "stored",
    "rtf"}``; ``stored`` is False when the call is not in the database or has platform turns.
    Raises Forbidden (outside the allowed roots), NotFound (no such file), InvalidInput (bad audio).
    """
    if not isinstance(call_id, str) or not call_id:
        raise InvalidInput("call_id must be a non-empty string")

    path = confine_file(audio_path, ctx.settings.allowed_roots, "recording")
    call, tenant_pii = None, None
    if has_database(ctx.settings):  # without one: transcribe, store nothing
        async def load():
            async with open_db(ctx.settings) as db:
                try:
                    found = await db.get_call(call_id)
                except NotFound:
                    return None, None
                return found, await db.tenant_pii(found.tenant_id)
        call, tenant_pii = run_sync(load())
    layout = call.audio_layout if call is not None and call.audio_layout else "auto"
    result = transcribe_recording(ctx.settings, path, layout=layout, progress=ctx.progress)
    # Stored and returned (the job result lands in Redis) only redacted, under the call's tenant's policy.
    result, _ = redaction_turns.redact_transcription(result, redaction_turns.Policy.for_tenant(ctx.settings,
                                                                                                 tenant_pii))
    stored = False
    if call is not None:
        rows = stored_turns(result)

        async def store():
            async with open_db(ctx.settings) as db:
                return await db.save_asr_turns(call.tenant_id, call.id, rows)

        stored = run_sync(store())
    return {"call_id": call_id, "turns": result["turns"], "text": result["text"], "language": result["language"],
            "duration": result["duration"], "layout": result["layout"], "backend": result["backend"],
            "model_version": result["model_version"], "stored": stored, "rtf": result["rtf"]}


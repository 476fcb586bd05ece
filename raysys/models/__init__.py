"""Model backends, in-process and free of Ray: the actors in :mod:`raysys.actors` hold one each.

- :mod:`raysys.models.diarization` — the :class:`Diarizer` interface, the backend factory and the
  stereo channel split; :mod:`.builtin_diarization` (silero-vad + resemblyzer, offline; its VAD in
  :mod:`.speech_detection`, its clustering in :mod:`.speaker_clustering`) and
  :mod:`.pyannote_backend` (``pyannote.audio`` pipelines).
- :mod:`raysys.models.precision` — the autocast precision of torch models (bfloat16 where the CPU
  or GPU computes it natively), shared by the diarizer and the sentence encoder.
- :mod:`raysys.models.emotion` — the :class:`EmotionModel` interface, the backend factory, the
  builtin trained model (descriptors in :mod:`.emotion_features`, training recipe in
  :mod:`.emotion_training`) and text valence; :mod:`.speechbrain_backend` (wav2vec2-IEMOCAP recipe interface).
- :mod:`raysys.models.sentiment` — the one text sentiment model (VADER + a contact-centre phrase layer)
  behind call sentiment, segment valence from a transcript and the CSAT proxy.
- :mod:`raysys.models.random_checkpoints` — small random-weight pyannote and speechbrain checkpoints
  built offline, for tests, benchmarks and the GPU check (never for real use: their output is noise).
- :mod:`raysys.models.transcription` — the :class:`Transcriber` interface (words with times and
  confidence), PocketSphinx and faster-whisper backends, chunking at pauses, words → speaker turns;
  :mod:`.random_whisper` builds a random-weight Whisper folder offline for tests and benchmarks.

Layer 1, beside :mod:`raysys.storage` (neither imports the other): may import only the foundation
(config, errors, constants, paths, audio, runtime); imported by actors and every layer above.
"""

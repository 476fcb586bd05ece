-- Issue 15: turns can come from speech recognition. `source` says who wrote a turn ('platform': the
-- contact-centre platform's own transcript; 'asr': raysys transcribed the recording), `model_version`
-- which backend and model produced it, `confidence` the mean word confidence, and `words` the words
-- with their times ([{"word", "start", "end", "confidence"}]). Existing rows are the platform's.
ALTER TABLE call_turns
    ADD COLUMN source        text NOT NULL DEFAULT 'platform' CHECK (source IN ('platform', 'asr')),
    ADD COLUMN model_version text,
    ADD COLUMN confidence    double precision,
    ADD COLUMN words         jsonb;

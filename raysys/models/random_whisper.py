"""A tiny random-weight multilingual Whisper in faster-whisper's on-disk form, built offline.

No Whisper weights can be downloaded on the machines raysys is tested on, yet the faster-whisper
loading path (CTranslate2 model folder, ``tokenizer.json``, ``preprocessor_config.json``, language
detection, word timestamps) must run end to end. :func:`build_random_whisper` writes:

- a Hugging Face ``WhisperForConditionalGeneration`` with the real multilingual layout (51,865 ids:
  50,257 text tokens, ``<|endoftext|>``, ``<|startoftranscript|>``, 99 language tokens, the task and
  timestamp tokens)
  but 2 tiny layers, and a byte-level tokenizer built locally with the ``tokenizers`` library;
- that model converted with CTranslate2's ``TransformersConverter`` — the same converter that makes
  the ``Systran/faster-whisper-*`` folders.

Its output is noise: use it for contracts and speed, never for accuracy.
"""

from __future__ import annotations

from pathlib import Path

N_TEXT_TOKENS = 50257  # ids of the text tokens; multilingual Whisper puts <|endoftext|> right after them
N_LANGUAGES = 99  # multilingual Whisper before large-v3
N_TIMESTAMPS = 1501  # <|0.00|> … <|30.00|>


def _byte_alphabet() -> list[str]:
    """GPT-2's byte → printable character table (the ByteLevel pre-tokenizer's alphabet), in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _special_tokens() -> list[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES  # noqa: PLC0415 - transformers: heavy, only to build the test checkpoint

    languages = [f"<|{code}|>" for code in list(LANGUAGES)[:N_LANGUAGES]]
    return ["<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def build_tokenizer():
    """A ``tokenizers.Tokenizer`` with Whisper's multilingual ids (text tokens are bytes and fillers)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415 - tokenizers: only to build the test checkpoint

    vocab: dict[str, int] = {}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    # Fill the text range with letter strings (never produced: there are no merges), then <|endoftext|>.
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(vocab) < N_TEXT_TOKENS:
        a, b, c = letters[i // 676 % 26], letters[i // 26 % 26], letters[i % 26]
        token = f"{a}{b}{c}{i // 17576}"
        if token not in vocab:
            vocab[token] = len(vocab)
        i += 1
    vocab["<|endoftext|>"] = len(vocab)
    for token in _special_tokens():
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ["<|endoftext|>", *_special_tokens()]])
    return tok


def build_random_whisper(root: str | Path, *, d_model: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random-weight faster-whisper model folder under ``root`` and return it (``root/ct2``).

    Offline: nothing is downloaded. The folder loads with ``faster_whisper.WhisperModel(path)``.
    """
    import torch  # noqa: PLC0415 - torch: heavy, only where the model runs
    from ctranslate2.converters import TransformersConverter  # noqa: PLC0415 - ctranslate2: heavy, only to build the test checkpoint
    from transformers import (  # noqa: PLC0415 - transformers: heavy, only to build the test checkpoint
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    root = Path(root)
    hf_dir, out = root / "hf", root / "ct2"
    hf_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = build_tokenizer()
    specials = _special_tokens()
    sot, eot = tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|endoftext|>")
    vocab_size = tok.get_vocab_size() + N_TIMESTAMPS  # 51,865: CTranslate2 calls that multilingual
    config = WhisperConfig(vocab_size=vocab_size, num_mel_bins=80, d_model=d_model, encoder_layers=layers,
                           decoder_layers=layers, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_source_positions=1500,
                           max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[220, eot])
    model = WhisperForConditionalGeneration(config)
    languages = specials[1:1 + N_LANGUAGES]
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot, suppress_tokens=[],
        begin_suppress_tokens=[220, eot], is_multilingual=True, max_length=448,
        lang_to_id={code: tok.token_to_id(code) for code in languages},
        task_to_id={"translate": tok.token_to_id("<|translate|>"), "transcribe": tok.token_to_id("<|transcribe|>")},
        no_timestamps_token_id=tok.token_to_id("<|notimestamps|>"),
        alignment_heads=[[layers - 1, h] for h in range(2)])
    model.save_pretrained(hf_dir)
    WhisperTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                         additional_special_tokens=specials).save_pretrained(hf_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)
    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
        str(out), force=True)
    return out

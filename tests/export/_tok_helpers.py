"""Sentencepiece models and a large mixed text for the tokenizer-export tests (everything from this machine's
Python installation: no download)."""
import glob
import io
import os
from pathlib import Path

STDLIB = Path(os.__file__).parent
_FILES = sorted(glob.glob(str(STDLIB / "*.py")))
TRAIN_FILES, TEXT_FILES = _FILES[:24], _FILES[24:44]

# unicode from many scripts, compatibility forms that NFKC changes, emoji (outside a small vocabulary: byte
# fallback or <unk>), control characters, whitespace runs of every kind, literal special-token text
UNICODE = ("Ünïcödé — “quotes” ‘single’ 日本語のテキスト 中文 한국어 Ελληνικά Кириллица العربية עברית हिन्दी ไทย "
           "emoji 😀🎉👍🏽 🇫🇷 ﬁ ligature ① ½ ＦＵＬＬ　ＷＩＤＴＨ\u00a0nbsp\u200bzero-width\u2028line-sep tab\there\r\n"
           "CRLF   runs     of spaces\n\n\n\t\t  mixed \x07bell \x00nul <s> </s> <unk> <0x41> ▁marker ⁇ café cafe\u0301")
EDGE = ["", " ", "   ", "\n", "\t", "a", " leading", "trailing  ", "  both  ", "a  b   c", "<s>", "</s>x", "▁", "▁▁x",
        "1234567890", "x = 3.14159e-10", "    indented = True\n        deeper()\n"]


def mixed_texts() -> list[str]:
    """Whole stdlib source files (code, docstrings, comments), the unicode sample and edge cases."""
    files = [Path(f).read_text(encoding="utf-8", errors="replace") for f in TEXT_FILES]
    return files + [UNICODE, UNICODE * 3 + "\n".join(files[:2])] + EDGE


def _lines(texts):
    for t in texts:
        for line in t.splitlines():
            if line.strip():
                yield line


# name -> sentencepiece trainer options: what our spm_train writes (nmt_nfkc, whitespace removal, no byte
# fallback), the same with byte fallback, LLaMA-2's options (identity normalization, whitespace kept, byte
# fallback, split digits, whitespace-only pieces), no dummy prefix, and unigram
VARIANTS = {
    "ours": dict(model_type="bpe"),
    "ours-bytes": dict(model_type="bpe", byte_fallback=True),
    "llama2": dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                   remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True),
    "no-prefix": dict(model_type="bpe", add_dummy_prefix=False),
    "unigram": dict(model_type="unigram", byte_fallback=True),
}


def train_spm(path: Path, vocab_size: int = 600, **options) -> Path:
    import sentencepiece as spm

    texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in TRAIN_FILES]
    model = io.BytesIO()
    options = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1, "hard_vocab_limit": False, "minloglevel": 2,
               "character_coverage": 1.0 if options.get("byte_fallback") else 0.9995, "num_threads": 1, **options}
    spm.SentencePieceTrainer.train(sentence_iterator=_lines(texts), model_writer=model, vocab_size=vocab_size,
                                   **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path

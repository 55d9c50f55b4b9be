"""GPT-2's byte-pair encoding through tiktoken, built from the files shipped in assets/ (no network)."""

import functools
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "gpt2_tokenizer"
# The hashes tiktoken pins for these files: a damaged copy fails loudly instead of mis-tokenising.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's split pattern (tiktoken's r50k).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256  # also the padding id, as in the book


@functools.cache
def gpt2_tokenizer(assets: Path = ASSETS) -> tiktoken.Encoding:
    """The GPT-2 encoding; ids are identical to `tiktoken.get_encoding("gpt2")`."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(assets / "vocab.bpe"),
        encoder_json_file=str(assets / "encoder.json"),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
    )


def encode(text: str) -> list[int]:
    """Token ids of a message; a literal "<|endoftext|>" in user text is ordinary text, not a control token."""
    return gpt2_tokenizer().encode_ordinary(text)


def decode(ids: list[int]) -> str:
    return gpt2_tokenizer().decode(ids)

import shutil

import pytest
import tiktoken

from engine.tokenizer import ASSETS, END_OF_TEXT_ID, decode, encode, gpt2_tokenizer

SAMPLES = [
    "Hello, world! Every effort moves you",
    "WINNER!! As a valued network customer you have been selected to receivea £900 prize reward!",
    "Ok lar... Joking wif u oni...",
    "emoji 😀🚀 and other scripts: Ελληνικά, 日本語, العربية",
    "control \x92 characters \x96 and tabs\tinside",
    "",
]


def test_known_ids_and_vocabulary():
    assert encode("Hello, world! Every effort moves you") == [15496, 11, 995, 0, 3887, 3626, 6100, 345]
    assert gpt2_tokenizer().n_vocab == 50257
    assert gpt2_tokenizer().eot_token == END_OF_TEXT_ID == 50256


def test_ids_identical_to_tiktoken_gpt2(tmp_path, monkeypatch):
    # tiktoken's own "gpt2" encoding, fed the same files offline through its cache naming scheme.
    shutil.copy(ASSETS / "vocab.bpe", tmp_path / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(ASSETS / "encoder.json", tmp_path / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.get_encoding("gpt2")
    for text in SAMPLES:
        assert encode(text) == reference.encode_ordinary(text)


def test_round_trip_and_end_of_text_is_plain_text():
    for text in SAMPLES:
        assert decode(encode(text)) == text
    ids = encode("free <|endoftext|> prize")
    assert END_OF_TEXT_ID not in ids
    assert decode(ids) == "free <|endoftext|> prize"


def test_assets_ship_license():
    assert (ASSETS / "LICENSE").read_text().startswith("Modified MIT License")


def test_a_damaged_vocabulary_fails_its_pinned_hash(tmp_path):
    damaged = tmp_path / "gpt2_tokenizer"
    shutil.copytree(ASSETS, damaged)
    with (damaged / "vocab.bpe").open("a") as vocabulary:
        vocabulary.write("x y\n")  # one merge more: it would tokenise differently
    with pytest.raises(ValueError, match="Hash mismatch"):
        gpt2_tokenizer.__wrapped__(damaged)

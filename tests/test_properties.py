"""Property-based tests: whatever text arrives, parsing and classifying behave."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.classifier import Classifier
from engine.data.reading import parse_messages
from engine.errors import DataError, InputError
from engine.tokenizer import decode, encode

# Message text as it can appear in the TSV: anything but the line break that ends a record.
message_text = st.text(st.characters(exclude_characters="\n", exclude_categories=("Cs",)), min_size=1, max_size=80).filter(
    lambda t: t.strip() and not t.endswith("\r")
)
labelled = st.lists(st.tuples(st.sampled_from(["ham", "spam"]), message_text), min_size=1, max_size=30)


@given(labelled)
def test_parsing_returns_every_message_unchanged(rows):
    raw = "".join(f"{label}\t{text}\n" for label, text in rows).encode("utf-8")
    frame = parse_messages(raw)
    # A first row that looks like a header is skipped by design; nothing else may be lost or altered.
    assert list(zip(frame.Label, frame.Text, strict=True)) == rows


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_fail_cleanly(raw):
    try:
        frame = parse_messages(raw)
    except DataError as error:
        assert str(error)
    else:
        assert set(frame.Label) <= {"ham", "spam"} and len(frame) >= 1


@given(st.text(max_size=200))
def test_tokenizer_round_trips_any_text(text):
    assert decode(encode(text)) == text


@pytest.fixture(scope="module")
def classifier(trained_run):
    return Classifier.load(trained_run[1][-1].adapter_dir, torch.device("cpu"))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_any_message_is_classified_or_refused_as_empty(classifier, text):
    if not text.strip():
        with pytest.raises(InputError, match="empty"):
            classifier.classify(text)
        return
    (prediction,) = classifier.classify(text)
    assert prediction.label in ("ham", "spam")
    assert 0.0 <= prediction.probabilities["spam"] <= 1.0
    assert 1 <= prediction.tokens <= classifier.config.max_length

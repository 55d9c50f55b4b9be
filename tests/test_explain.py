import pytest
import torch
from conftest import TINY, randomise_lora

from engine.adapter import AdapterConfig
from engine.classifier import Classifier, build_classifier
from engine.config import LoRAConfig
from engine.errors import InputError
from engine.explain import explained_class, token_scores, word_influence
from engine.model import GPT
from engine.tokenizer import decode, encode


@pytest.fixture(scope="module")
def classifier(trained_run):
    return Classifier.load(trained_run[1][-1].adapter_dir, torch.device("cpu"))


def test_last_token_score_is_the_classification(classifier):
    text = "Congratulations, you have won a free holiday! Call now"
    scores = token_scores(classifier, text)
    assert "".join(s.token for s in scores) == text
    assert scores[-1].probability == pytest.approx(classifier.classify(text)[0].probabilities["spam"], abs=1e-5)
    # Causal: the score after each prefix equals classifying that prefix alone.
    prefix = "".join(s.token for s in scores[:4])
    assert scores[3].probability == pytest.approx(classifier.classify(prefix)[0].probabilities["spam"], abs=1e-5)


def test_word_influence_matches_rescoring_without_the_word(classifier):
    text = "URGENT claim your prize today"
    influences = word_influence(classifier, text)
    assert sorted(w.word for w in influences) == sorted(text.split())
    assert [abs(w.influence) for w in influences] == sorted((abs(w.influence) for w in influences), reverse=True)
    full = classifier.classify(text)[0].probabilities["spam"]
    prize = next(w for w in influences if w.word == "prize")
    assert prize.probability_without == pytest.approx(classifier.classify("URGENT claim your today")[0].probabilities["spam"], abs=1e-5)
    assert prize.influence == pytest.approx(full - prize.probability_without, abs=1e-6)


def test_with_three_classes_the_answered_class_is_explained():
    lora = LoRAConfig(rank=2, alpha=4)
    model = build_classifier(GPT(TINY), lora, n_classes=3)
    torch.manual_seed(0)
    randomise_lora(model, 0.5)
    config = AdapterConfig("tiny", TINY, lora, "last_token", "batch", TINY.context_length, ("bills", "friends", "work"))
    classifier = Classifier(model, config, torch.device("cpu"))
    text = "pay the gas bill by friday"
    answer = classifier.classify(text)[0]
    assert explained_class(classifier, text) == answer.label
    assert token_scores(classifier, text)[-1].probability == pytest.approx(answer.probability, abs=1e-5)
    influences = word_influence(classifier, text)
    bill = next(w for w in influences if w.word == "bill")
    assert bill.probability_without == pytest.approx(classifier.classify("pay the gas by friday")[0].probabilities[answer.label], abs=1e-5)


def test_empty_message_cannot_be_explained(classifier):
    with pytest.raises(InputError):
        token_scores(classifier, "  ")
    with pytest.raises(InputError):
        word_influence(classifier, "")


def test_batch_classification_of_a_file(classifier, tmp_path):
    import pandas as pd

    from engine.batch import classify_file, read_messages_file

    lines = tmp_path / "messages.txt"
    lines.write_text("Free entry in a weekly prize draw\n\nok see you at 7\r\nCall 0800 now to claim\n")
    assert read_messages_file(lines) == ["Free entry in a weekly prize draw", "ok see you at 7", "Call 0800 now to claim"]
    table = classify_file(classifier, lines, tmp_path / "out.csv")
    saved = pd.read_csv(tmp_path / "out.csv")
    assert list(saved.columns) == ["message", "label", "p_ham", "p_spam", "truncated"]
    assert saved.message.tolist() == table.message.tolist() and len(saved) == 3
    assert saved.p_spam.tolist() == pytest.approx([p.probabilities["spam"] for p in classifier.classify(table.message.tolist())], abs=1e-5)
    csv_file = tmp_path / "messages.csv"
    csv_file.write_text('id,text\n1,"hello, there"\n2,WIN cash\n')
    assert read_messages_file(csv_file) == ["hello, there", "WIN cash"]


def test_characters_split_across_tokens_are_shown_whole(classifier):
    text = "🎉🎉 You WON a free iPhone 📱!!! Café"
    ids = encode(text)
    scores = token_scores(classifier, text)
    assert "".join(s.token for s in scores) == text
    assert "\ufffd" not in "".join(s.token for s in scores)
    assert "🎉" in [s.token for s in scores] and len(scores) < len(ids)  # the emoji's byte tokens were grouped
    # A group scores as its last token: the message read up to the end of the character.
    first = next(i for i in range(1, len(ids) + 1) if decode(ids[:i]) == "🎉")
    assert scores[0].probability == pytest.approx(classifier.classify("🎉")[0].probabilities["spam"], abs=1e-5)
    assert first > 1

import pytest
import torch

from engine.classifier import Classifier
from engine.errors import InputError
from engine.explain import token_scores, word_influence


@pytest.fixture(scope="module")
def classifier(trained_run):
    return Classifier.load(trained_run[1][-1].adapter_dir, torch.device("cpu"))


def test_last_token_score_is_the_classification(classifier):
    text = "Congratulations, you have won a free holiday! Call now"
    scores = token_scores(classifier, text)
    assert "".join(s.token for s in scores) == text
    assert scores[-1].p_spam == pytest.approx(classifier.classify(text)[0].p_spam, abs=1e-5)
    # Causal: the score after each prefix equals classifying that prefix alone.
    prefix = "".join(s.token for s in scores[:4])
    assert scores[3].p_spam == pytest.approx(classifier.classify(prefix)[0].p_spam, abs=1e-5)


def test_word_influence_matches_rescoring_without_the_word(classifier):
    text = "URGENT claim your prize today"
    influences = word_influence(classifier, text)
    assert sorted(w.word for w in influences) == sorted(text.split())
    assert [abs(w.influence) for w in influences] == sorted((abs(w.influence) for w in influences), reverse=True)
    full = classifier.classify(text)[0].p_spam
    prize = next(w for w in influences if w.word == "prize")
    assert prize.p_spam_without == pytest.approx(classifier.classify("URGENT claim your today")[0].p_spam, abs=1e-5)
    assert prize.influence == pytest.approx(full - prize.p_spam_without, abs=1e-6)


def test_empty_message_cannot_be_explained(classifier):
    with pytest.raises(InputError):
        token_scores(classifier, "  ")
    with pytest.raises(InputError):
        word_influence(classifier, "")

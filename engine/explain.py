"""Why a message got its answer: P(class) as the message is read token by token, and which words matter.

GPT-2 is causal, so the class head applied at position i sees exactly tokens 0..i: one forward
pass gives the score "so far" at every token. Leaving one word out at a time and re-scoring shows
which words moved the decision most.

The class explained is the positive one with two classes (spam for the SMS data), so "towards"
always means the same thing; with three or more, the class the model predicts for the message.
"""

import re
from dataclasses import dataclass

import torch

from engine.classifier import Classifier, class_probabilities
from engine.errors import InputError
from engine.evaluate import positive_class
from engine.tokenizer import encode, gpt2_tokenizer

MAX_WORDS = 64  # leave-one-out re-scores the message once per word: cap the work for long texts


@dataclass(frozen=True)
class TokenScore:
    token: str  # the token's text (may start with a space); tokens that split a character are grouped
    probability: float  # P(the explained class) reading the message up to and including this token


@dataclass(frozen=True)
class WordInfluence:
    word: str
    probability_without: float  # P(the explained class) with the word left out
    influence: float  # P(the explained class) with the word minus without it: > 0 pushes towards that class


def explained_class(classifier: Classifier, text: str) -> str:
    """The class an explanation follows: the positive one of two, else the one predicted for `text`."""
    labels = classifier.config.labels
    positive = positive_class(labels)
    if positive is not None:
        return labels[positive]
    if not text.strip():
        raise InputError("the message is empty: type some text to explain")
    return classifier.classify(text)[0].label


@torch.inference_mode()
def token_scores(classifier: Classifier, text: str, label: str | None = None) -> list[TokenScore]:
    """P(`label`) after each token, from one forward pass over the (truncated) message; `label`
    defaults to the explained class (see `explained_class`)."""
    if not text.strip():
        raise InputError("the message is empty: type some text to explain")
    label = label or explained_class(classifier, text)
    ids = encode(text)[: classifier.config.max_length]
    model = classifier.model
    hidden = model.hidden_states(torch.tensor([ids], device=classifier.device))[0]  # (T, C)
    probabilities = class_probabilities(model.score(hidden))[:, classifier.config.labels.index(label)].tolist()
    return whole_characters(ids, probabilities)


def whole_characters(ids: list[int], probabilities: list[float]) -> list[TokenScore]:
    """One score per run of tokens that decodes to whole characters.

    GPT-2's tokens are bytes: an emoji or an accented letter can be split over several tokens, none of
    which decodes alone. Such tokens are grouped until their bytes form valid UTF-8; the group gets the
    last token's score, the first point at which the model has read the whole character.
    """
    scores: list[TokenScore] = []
    pending = b""
    for token, p in zip(ids, probabilities, strict=True):
        pending += gpt2_tokenizer().decode_single_token_bytes(token)
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: wait for the rest
        scores.append(TokenScore(text, p))
        pending = b""
    if pending:  # the message was cut inside a character
        scores.append(TokenScore(pending.decode("utf-8", errors="replace"), probabilities[-1]))
    return scores


def word_influence(classifier: Classifier, text: str, label: str | None = None) -> list[WordInfluence]:
    """Each word's effect on P(`label`) (default: the explained class), found by scoring the message
    without it; strongest first."""
    words = re.findall(r"\S+", text)
    if not words:
        raise InputError("the message is empty: type some text to explain")
    label = label or explained_class(classifier, text)
    words = words[:MAX_WORDS]
    variants = [" ".join(words[:i] + words[i + 1 :]) or "." for i in range(len(words))]
    full, *without = classifier.classify([" ".join(words), *variants])
    influences = [
        WordInfluence(word, prediction.probabilities[label], full.probabilities[label] - prediction.probabilities[label])
        for word, prediction in zip(words, without, strict=True)
    ]
    return sorted(influences, key=lambda w: abs(w.influence), reverse=True)

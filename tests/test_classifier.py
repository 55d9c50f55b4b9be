import pytest
import torch

from engine.classifier import Classifier
from engine.errors import InputError


@pytest.fixture(scope="module")
def classifier(trained_run):
    return Classifier.load(trained_run[1][-1].adapter_dir, torch.device("cpu"))


def test_classify_returns_label_and_probability(classifier):
    (prediction,) = classifier.classify(["Congratulations! You won a free cruise, text WIN to 80086"])
    assert set(prediction.probabilities) == {"ham", "spam"}
    assert prediction.probability == prediction.probabilities[prediction.label] == max(prediction.probabilities.values())
    assert sum(prediction.probabilities.values()) == pytest.approx(1)
    assert (prediction.label == "spam") == (prediction.probabilities["spam"] > 0.5)


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_message_is_a_clear_error(classifier, bad):
    with pytest.raises(InputError, match="message 2 is empty"):
        classifier.classify(["fine", bad])


def test_long_message_is_truncated_to_the_model_limit(classifier):
    (prediction,) = classifier.classify(["free entry " * 2000])
    assert prediction.truncated and prediction.tokens == classifier.config.max_length == 256


def test_unusual_text_is_handled(classifier):
    texts = ["emoji 😀 and Ελληνικά", "nul \x00 and bell \x07", "literal <|endoftext|> token"]
    assert len(classifier.classify(texts)) == 3


def test_merged_classifier_matches_the_training_model(trained_run, classifier):
    from engine.adapter import load_tensors, read_adapter
    from engine.classifier import build_classifier
    from engine.model import read_positions
    from engine.tokenizer import encode
    from engine.weights import load_model

    config, tensors = read_adapter(trained_run[1][-1].adapter_dir)
    unmerged = build_classifier(load_model(config.base_model, torch.device("cpu")), config.lora)
    load_tensors(unmerged, tensors)
    text = "URGENT! Your mobile number has been awarded a £2000 prize"
    ids = torch.tensor([encode(text)])
    expected = torch.softmax(unmerged(ids, read_positions(torch.tensor([ids.size(1)]), ids.size(1), "last_token")), -1)[0, 1]
    assert classifier.classify(text)[0].probabilities["spam"] == pytest.approx(expected.item(), abs=1e-5)


def test_before_and_after_differ(classifier):
    weights = {name: tensor.clone() for name, tensor in classifier.model.state_dict().items()}
    before, after = classifier.compare_with_base("Free tickets! Reply YES")
    assert before.probabilities != after.probabilities
    assert classifier.classify("Free tickets! Reply YES")[0].probabilities == pytest.approx(after.probabilities, abs=1e-6)
    assert all(torch.equal(tensor, weights[name]) for name, tensor in classifier.model.state_dict().items())  # nothing rewritten


def test_before_is_the_base_models_answer(classifier):
    from engine.lora import merge_lora, set_lora_enabled, unmerge_lora

    text = "Free tickets! Reply YES"
    before, _ = classifier.compare_with_base(text)  # merged weights, the update taken out on the fly
    unmerge_lora(classifier.model)
    set_lora_enabled(classifier.model, False)  # the base weights themselves
    try:
        base_only = classifier.classify(text)[0]
    finally:
        set_lora_enabled(classifier.model, True)
        merge_lora(classifier.model)
    assert before.probabilities["spam"] == pytest.approx(base_only.probabilities["spam"], abs=1e-5)


def test_batched_classification_equals_one_at_a_time(classifier):
    from conftest import SMS_ZIP

    from engine.data.prepared import read_source_file

    texts = read_source_file(SMS_ZIP).Text[:70].tolist()  # varied lengths, more than one batch
    together = classifier.classify(texts)
    for text, prediction in zip(texts, together, strict=True):
        alone = classifier.classify(text)[0]
        assert alone.label == prediction.label
        assert alone.probabilities["spam"] == pytest.approx(prediction.probabilities["spam"], abs=1e-5)


def test_int8_path_agrees_with_fp32(trained_run, classifier):
    from conftest import SMS_ZIP

    from engine.data.prepared import read_source_file

    quantized = Classifier.load(trained_run[1][-1].adapter_dir, torch.device("cpu"), int8=True)
    assert quantized.int8
    texts = read_source_file(SMS_ZIP).Text[:100].tolist()
    fp32 = classifier.classify(texts)
    int8 = quantized.classify(texts)
    agreement = sum(a.label == b.label for a, b in zip(fp32, int8, strict=True)) / len(texts)
    assert agreement >= 0.9
    assert max(abs(a.probabilities["spam"] - b.probabilities["spam"]) for a, b in zip(fp32, int8, strict=True)) < 0.2
    before, after = quantized.compare_with_base("Free tickets! Reply YES")
    fp32_before, fp32_after = classifier.compare_with_base("Free tickets! Reply YES")
    assert before.probabilities["spam"] == pytest.approx(fp32_before.probabilities["spam"], abs=0.2)
    assert after.probabilities["spam"] == pytest.approx(fp32_after.probabilities["spam"], abs=0.2)
    assert before.probabilities != after.probabilities

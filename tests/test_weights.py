import pytest
import torch
from conftest import TINY, write_hf_checkpoint
from safetensors.torch import load_file, save_file

from engine.errors import ConfigError, WeightsError
from engine.model import GPT
from engine.weights import convert, fetch, hf_state_dict, load_model, resolve


def test_convert_splits_c_attn_and_transposes_conv1d():
    torch.manual_seed(0)
    model = GPT(TINY)
    converted = convert(hf_state_dict(model), TINY)
    for key, tensor in model.state_dict().items():
        assert torch.equal(converted[key], tensor), key


def test_missing_tensor_is_named(tmp_path):
    folder = write_hf_checkpoint(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"lacks tensor h\.1\.mlp\.c_fc\.weight"):
        load_model(str(folder), torch.device("cpu"))


def test_wrong_shape_is_named(tmp_path):
    folder = write_hf_checkpoint(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.0.mlp.c_proj.weight"] = torch.zeros(4 * TINY.n_embd, TINY.n_embd + 1)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"h\.0\.mlp\.c_proj\.weight has shape"):
        load_model(str(folder), torch.device("cpu"))


def test_truncated_checkpoint_is_reported(tmp_path):
    folder = write_hf_checkpoint(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(str(folder), torch.device("cpu"))


def test_pickle_checkpoints_are_refused_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(WeightsError, match="pickle"):
        resolve(str(tmp_path / "pytorch_model.bin"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 50257, "n_positions": 64, "n_embd": 8, "n_layer": 1, "n_head": 2}')
    with pytest.raises(WeightsError, match=r"no model\.safetensors \(pytorch_model\.bin are pickles"):
        resolve(str(tmp_path))
    assert not marker.exists()


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ConfigError, match="gpt2-small, gpt2-medium, gpt2-large, gpt2-xl"):
        resolve("gpt3")


def test_bare_safetensors_file_of_unknown_size_needs_its_config(tmp_path):
    folder = write_hf_checkpoint(tmp_path)
    with pytest.raises(WeightsError, match="not one of the four GPT-2 sizes"):
        resolve(str(folder / "model.safetensors"))


def test_fetch_downloads_through_huggingface_hub_from_hf_endpoint(http_server, tmp_path, monkeypatch):
    import huggingface_hub.constants

    payload = b"pretend these are weights"
    http_server.routes["/openai-community/gpt2/resolve/main/model.safetensors"] = (
        200,
        payload,
        {"X-Repo-Commit": "a" * 40, "ETag": '"0123456789abcdef"'},
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest set it at import
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    progress = []
    path = fetch(resolve("gpt2-small"), lambda received, total: progress.append((received, total)))
    assert path.read_bytes() == payload
    assert str(path).startswith(str(tmp_path / "hub"))
    assert progress[-1] == (len(payload), len(payload))
    # Offline, the shared cache answers without any request.
    hits = len(http_server.hits)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch(resolve("gpt2-small")).read_bytes() == payload
    assert len(http_server.hits) == hits


def test_offline_without_cache_says_where_to_put_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        fetch(resolve("gpt2-medium"))
    message = str(error.value)
    assert "gpt2-medium (openai-community/gpt2-medium) is not on this machine" in message and "1,520 MB" in message
    assert "--model FOLDER" in message and "HF_HUB_OFFLINE" in message


def test_unreachable_server_fails_at_once_without_retries(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(WeightsError, match=r"gpt2-small \(openai-community/gpt2\) is not on this machine and 127.0.0.1 cannot be reached .* \(548 MB\)"):
        fetch(resolve("gpt2-small"))


def test_a_size_in_the_cache_is_found_without_the_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from engine.weights import cached

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert cached(resolve("gpt2-small")) is None
    snapshot = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # unreachable: the cache must answer alone
    assert cached(resolve("gpt2-small")) == snapshot / "model.safetensors"
    assert fetch(resolve("gpt2-small")) == snapshot / "model.safetensors"
    assert cached(resolve("gpt2-medium")) is None


@pytest.mark.parametrize("size", ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_weight_count_from_the_shape_matches_the_model(size):
    from engine.config import GPT2_SIZES
    from engine.weights import download_bytes, weight_count

    config = GPT2_SIZES[size]
    with torch.device("meta"):
        assert weight_count(config) == sum(p.numel() for p in GPT(config).parameters())
    # the Hub's files: 548 MB, 1.52 GB, 3.25 GB, 6.43 GB
    assert round(download_bytes(config) / 1e7) == {"gpt2-small": 55, "gpt2-medium": 152, "gpt2-large": 325, "gpt2-xl": 643}[size]

"""Loading SciScore: folders, names, the hub, open_clip files, and every bad checkpoint."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from science_t2i.nodes.core.images import to_pil
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.sciscore import DEFAULT_SCISCORE, load_clip_directory, load_sciscore
from tiny_clip import (TINY_OPEN_CLIP_CFG, build_tiny_clip, build_tiny_open_clip,
                       random_uint8_images)

PROMPT = "an unripe apple on the table"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("load") / "tiny", image_size=32, seed=2)


@pytest.fixture
def copy_of(clip_dir, tmp_path):
    def make(name: str = "copy"):
        return shutil.copytree(clip_dir, tmp_path / name)
    return make


def test_load_clip_directory_returns_model_tokenizer_and_image_config(clip_dir):
    model, tokenizer, cfg = load_clip_directory(clip_dir)
    assert type(model).__name__ == "CLIPModel" and not model.training
    assert model.config._attn_implementation == "sdpa"
    assert tokenizer(PROMPT)["input_ids"][-1] == tokenizer.eos_token_id
    assert cfg["size"] == cfg["crop_size"] == 32
    assert cfg["image_mean"][0] == pytest.approx(0.48145466)


def test_name_in_models_folder_and_any_path(models_dir, clip_dir):
    shutil.copytree(clip_dir, models_dir / "sciscore" / "mine")
    by_name = load_sciscore("mine", device="cpu")
    by_path = load_sciscore(str(clip_dir), device="cpu")
    images = random_uint8_images(2, 32, 32)
    assert torch.allclose(by_name.score(images, PROMPT), by_path.score(images, PROMPT))


def test_missing_model_folder_names_the_folder_and_the_command(models_dir):
    with pytest.raises(ScienceT2IError) as err:
        load_sciscore("no-such-model", device="cpu")
    msg = str(err.value)
    assert str(models_dir / "sciscore") in msg and "hf download" in msg


def test_folder_without_weights(copy_of):
    folder = copy_of()
    (folder / "model.safetensors").unlink()
    with pytest.raises(ScienceT2IError, match="no weights"):
        load_sciscore(str(folder), device="cpu")


def test_folder_without_config(copy_of):
    folder = copy_of()
    (folder / "config.json").unlink()
    with pytest.raises(ScienceT2IError, match="no config.json"):
        load_sciscore(str(folder), device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(copy_of, damage):
    folder = copy_of()
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64)
    with pytest.raises(ScienceT2IError, match="download it again|corrupt|truncated"):
        load_sciscore(str(folder), device="cpu")


def test_config_that_is_not_clip(copy_of):
    folder = copy_of()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScienceT2IError, match="'bert' model, not a CLIP model"):
        load_sciscore(str(folder), device="cpu")


def test_missing_tokenizer_files(copy_of):
    folder = copy_of()
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()
    with pytest.raises(ScienceT2IError, match="tokenizer"):
        load_sciscore(str(folder), device="cpu")


def test_missing_preprocessor_config_falls_back_to_clip_defaults(copy_of, clip_dir):
    folder = copy_of()
    (folder / "preprocessor_config.json").unlink()
    model = load_sciscore(str(folder), device="cpu")
    assert model.image_size == 32 and model.mean[0] == pytest.approx(0.48145466)


def test_pickle_weights_load_only_with_weights_only(copy_of, clip_dir):
    from safetensors.torch import load_file
    folder = copy_of("pickle")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    images = random_uint8_images(2, 32, 32)
    ref = load_sciscore(str(clip_dir), device="cpu").score(images, PROMPT)
    assert torch.allclose(load_sciscore(str(folder), device="cpu").score(images, PROMPT), ref)

    import argparse  # a pickle holding an object that needs code to rebuild: refused
    torch.save({"x": argparse.Namespace(a=1)}, folder / "pytorch_model.bin")
    with pytest.raises(ScienceT2IError, match="weights_only=True"):
        load_sciscore(str(folder), device="cpu")


def test_hub_id_offline_names_folder_and_command(models_dir, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ScienceT2IError) as err:
        load_sciscore(DEFAULT_SCISCORE, device="cpu")
    target = models_dir / "sciscore" / "SciScore"
    msg = str(err.value)
    assert "offline" in msg
    assert f"hf download {DEFAULT_SCISCORE} --local-dir {target}" in msg
    assert not (models_dir / "sciscore").exists()  # nothing created offline


def test_hub_id_downloads_into_models_sciscore_once(models_dir, clip_dir, monkeypatch):
    import huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the download below is faked, not offline
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns=None, **kw):
        calls.append((repo_id, local_dir))
        shutil.copytree(clip_dir, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_sciscore(DEFAULT_SCISCORE, device="cpu")
    target = models_dir / "sciscore" / "SciScore"
    assert calls == [(DEFAULT_SCISCORE, str(target.with_name("SciScore.partial")))]
    assert (target / "model.safetensors").is_file()
    assert not target.with_name("SciScore.partial").exists()
    load_sciscore(DEFAULT_SCISCORE, device="cpu")  # second use: already on disk
    assert len(calls) == 1
    assert model.score(random_uint8_images(1, 32, 32), PROMPT).shape == (1,)


def _open_clip_reference(path, images, prompt):
    """open_clip's own loader and PIL transforms, independent of the pack."""
    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path.parent}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path.parent}")
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(to_pil(im)) for im in images])
        img = model.encode_image(pixels)
        txt = model.encode_text(tokenizer([prompt] * len(images)))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (img * txt).sum(-1)


def test_open_clip_safetensors(tmp_path):
    path = build_tiny_open_clip(tmp_path / "oc")
    model = load_sciscore(str(path), device="cpu")
    assert model.clip is None and model.image_size == 32
    assert model.logit_scale_exp == pytest.approx(math.exp(2.3), rel=1e-5)
    images = random_uint8_images(3, 32, 32, seed=4)
    ref = _open_clip_reference(path, images, PROMPT)
    assert (model.score(images, PROMPT) - ref).abs().max().item() < 1e-4


def test_open_clip_architecture_registered_in_process(tmp_path):
    import open_clip
    from safetensors.torch import load_file, save_file
    src = build_tiny_open_clip(tmp_path / "src")
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-vit-test.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(cfg_dir)  # registers "tiny-vit-test"
    loose = tmp_path / "loose"
    loose.mkdir()
    state = load_file(str(src))
    # no open_clip_config.json beside it: the architecture comes from the file's metadata
    save_file(state, str(loose / "a.safetensors"), metadata={"open_clip_arch": "tiny-vit-test"})
    save_file(state, str(loose / "b.safetensors"))
    images = random_uint8_images(2, 32, 32)
    ref = load_sciscore(str(src), device="cpu").score(images, PROMPT)
    a = load_sciscore(str(loose / "a.safetensors"), device="cpu")
    b = load_sciscore(str(loose / "b.safetensors"), device="cpu", open_clip_arch="tiny-vit-test")
    assert torch.allclose(a.score(images, PROMPT), ref, atol=1e-5)
    assert torch.allclose(b.score(images, PROMPT), ref, atol=1e-5)
    # the wrong architecture is named in the error
    other = dict(TINY_OPEN_CLIP_CFG, embed_dim=8)
    (cfg_dir / "tiny-vit-other.json").write_text(json.dumps(other))
    open_clip.add_model_config(cfg_dir)
    with pytest.raises(ScienceT2IError, match="does not fit open_clip's 'tiny-vit-other'"):
        load_sciscore(str(loose / "b.safetensors"), device="cpu", open_clip_arch="tiny-vit-other")


def test_safetensors_file_that_is_not_open_clip(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "x.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ScienceT2IError, match="not an open_clip CLIP checkpoint"):
        load_sciscore(str(path), device="cpu")

"""The shared digests keep the formats existing caches were written with, and the one
model-source resolver recognises Hub ids as huggingface_hub does."""
from __future__ import annotations

import hashlib
import json

import pytest
from huggingface_hub.utils import HFValidationError, validate_repo_id
from science_t2i.nodes import _comfy
from science_t2i.nodes.core import digest, hub
from science_t2i.training.eval.judge_cache import cache_key, image_digest
from science_t2i.training.flux.latent_cache import image_key, prompt_key


def test_judge_cache_keys_keep_their_formula():
    parts = ("pair", 3, "an unripe apple", "forward", "ab" * 32, None, "local:m", "1")
    expected = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    assert cache_key(*parts) == expected


def test_latent_cache_keys_keep_their_formula():
    def joined(*parts):   # the latent cache's key rule, written out
        h = hashlib.sha256()
        for p in parts:
            h.update(p if isinstance(p, bytes) else p.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()[:32]
    data = b"\x89PNG fake bytes"
    assert prompt_key("a green apple", "enc-1") == "txt-" + joined("a green apple", "enc-1")
    assert image_key(data, "enc-1", 512, False) == "img-" + joined(
        hashlib.sha256(data).digest(), "enc-1", "512", "shortest-side-bicubic-centre-crop-v1",
        "strict")


def test_json_digest_is_canonical_json(tmp_path):
    obj = {"b": [1, 2.5], "a": {"z": None}}
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    assert digest.json_digest(obj) == hashlib.sha256(text.encode()).hexdigest()
    assert digest.json_digest(obj, 16) == hashlib.sha256(text.encode()).hexdigest()[:16]
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (3 << 20))
    assert digest.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()

    class Ref:
        data, path = None, None
    ref = Ref()
    ref.path = path
    assert image_digest(ref) == digest.file_sha256(path)


NAMES = ["Jialuo21/SciScore", "IDEA-Research/grounding-dino-tiny", "openai/clip-vit-base-patch16",
         "a/b", "org/model.v2", "bad//id", "org/na--me", "org/name.", "x" * 97 + "/y",
         "org/name:tag", "org\\name", "no-slash", "a/b/c", "", "org/ with space"]


@pytest.mark.parametrize("name", NAMES)
def test_hub_ids_are_what_huggingface_hub_accepts(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        validate_repo_id(name)
        valid = name.count("/") == 1
    except HFValidationError:
        valid = False
    assert hub.looks_like_hub_id(name) == valid


def test_paths_and_file_names_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert not hub.looks_like_hub_id("org/model")                 # an existing folder
    assert not hub.looks_like_hub_id("sub/model.safetensors")     # a file in a models folder
    assert not hub.looks_like_hub_id("./org/model") and not hub.looks_like_hub_id("~/m")


def test_one_resolver_finds_a_downloaded_copy_by_its_repo_name(models_dir):
    assert hub.local_model("grounding-dino", "IDEA-Research/grounding-dino-tiny") is None
    copy = models_dir / "grounding-dino" / "grounding-dino-tiny"
    copy.mkdir(parents=True)
    # a folder without the marker file is not a finished download
    assert hub.local_model("grounding-dino", "IDEA-Research/grounding-dino-tiny",
                           marker="config.json") is None
    (copy / "config.json").write_text("{}")
    assert hub.local_model("grounding-dino", "IDEA-Research/grounding-dino-tiny",
                           marker="config.json") == copy
    assert hub.repo_folder("grounding-dino", "IDEA-Research/grounding-dino-tiny") == copy
    # a name inside the folder, and any path, resolve as before
    assert hub.local_model("grounding-dino", "grounding-dino-tiny") == copy
    assert hub.local_model("grounding-dino", str(copy)) == copy
    assert _comfy.default_folder("grounding-dino") == models_dir / "grounding-dino"

"""nodes/_comfy.py: standalone fallbacks and the ComfyUI paths (with stub ComfyUI modules)."""
from __future__ import annotations

import pytest
import torch
from science_t2i.nodes import _comfy


class ReadOnlyDevice(torch.nn.Module):
    """Like a transformers model: ``device`` is a read-only property."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    @property
    def device(self):
        return self.lin.weight.device


def test_standalone_models_dir_from_env_and_flag(models_dir, tmp_path):
    assert not _comfy.IN_COMFY
    assert _comfy.models_dir() == models_dir
    assert _comfy.default_folder("sciscore") == models_dir / "sciscore"
    _comfy.set_models_dir(tmp_path / "flag")
    assert _comfy.default_folder("loras") == (tmp_path / "flag" / "loras").resolve()


def test_list_and_resolve_models(models_dir):
    (models_dir / "sciscore" / "SciScore").mkdir(parents=True)
    (models_dir / "sciscore" / "SciScore" / "config.json").write_text("{}")
    (models_dir / "sciscore" / "clip-h.safetensors").write_bytes(b"")
    (models_dir / "sciscore" / "notes.txt").write_text("x")
    assert _comfy.list_models("sciscore") == ["SciScore", "clip-h.safetensors"]
    assert _comfy.resolve_model("sciscore", "SciScore") == models_dir / "sciscore" / "SciScore"
    assert _comfy.resolve_model("sciscore", "missing") is None


def test_pick_dtype():
    assert _comfy.pick_dtype(torch.device("cpu")) == torch.float32
    assert _comfy.pick_dtype(torch.device("cpu"), "bf16") == torch.float32  # documented fallback
    assert _comfy.pick_dtype(torch.device("cuda")) == torch.float16
    assert _comfy.pick_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        _comfy.pick_dtype(torch.device("cpu"), "fp8")


def test_comfy_registers_folders_and_wraps_readonly_device_models(comfy):
    assert _comfy.IN_COMFY
    paths = comfy.folder_paths.folder_names_and_paths
    assert paths["sciscore"][0] == [str(comfy.models_dir / "sciscore")]
    assert "grounding-dino" in paths
    model = ReadOnlyDevice()
    handle = _comfy.wrap_model(model, torch.device("cpu"))
    _comfy.load_to_device(handle)  # the stub, like ComfyUI, assigns handle.model.device
    assert comfy.loaded == [handle]
    assert handle.model.inner is model


def test_progress_and_interrupt_in_comfy(comfy):
    with _comfy.Progress(3) as bar:
        bar.update(2)
    assert comfy.progress[-1].current == 2
    _comfy.check_interrupt()
    comfy.interrupt = True
    with pytest.raises(Exception) as info:
        _comfy.check_interrupt()
    assert type(info.value).__name__ == "InterruptProcessingException"


def test_lora_functions_need_comfy_standalone():
    from science_t2i.nodes.errors import ScienceT2IError
    with pytest.raises(ScienceT2IError, match="needs ComfyUI"):
        _comfy.lora_key_map(object())


def test_atomic_writes_get_normal_permissions_and_keep_old_file_on_failure(tmp_path):
    import os
    import stat

    from science_t2i.nodes.core.files import atomic_path, write_json_atomic
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_directory_swaps_whole_folders_and_keeps_the_old_one_on_failure(tmp_path):
    from science_t2i.nodes.core.files import atomic_directory
    target = tmp_path / "best"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_directory(target) as tmp:  # replacing an existing folder
        (tmp / "a.txt").write_text("2")
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]

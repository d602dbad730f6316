"""Shared fixtures. Tiny-model builders live in tests/tiny_*.py (importable: pytest puts
tests/ on the path via pyproject's ``pythonpath``)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SCIENCE_T2I_NO_PROGRESS", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A fresh standalone models dir (what --models-dir / $SCIENCE_T2I_MODELS point to)."""
    from science_t2i.nodes import _comfy
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("SCIENCE_T2I_MODELS", str(d))
    _comfy.set_models_dir(None)
    yield d
    _comfy.set_models_dir(None)


@pytest.fixture
def comfy(tmp_path):
    """Run with stub ComfyUI modules installed (folder_paths, comfy.model_management, ...)."""
    yield from _stub(tmp_path, newer=False)


@pytest.fixture
def comfy_newer(tmp_path):
    """The stub with what later cores added (dynamic VRAM patcher, LoRA metadata)."""
    yield from _stub(tmp_path, newer=True)


def _stub(tmp_path, newer):
    from comfy_stub import install_comfy_stub, uninstall_comfy_stub
    d = tmp_path / "comfy_models"
    d.mkdir()
    state = install_comfy_stub(d, newer=newer)
    state.models_dir = d
    yield state
    uninstall_comfy_stub()


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (use with ``pytest.mark.usefixtures``): a second intra-op
    thread only adds start-up and synchronisation, which on a busy shared machine makes each
    step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_models_dir_leaks():
    """``--models-dir`` on a command sets the process-wide models folder: each test starts
    from the default, so a tiny model one test made never shows in another's lists."""
    from science_t2i.nodes import _comfy
    yield
    _comfy.set_models_dir(None)

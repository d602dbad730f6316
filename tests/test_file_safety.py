"""What the pack leaves on disk: usual permissions, a best/ folder that survives a kill at any
moment of its replacement, hub downloads that appear whole or not at all, and the `hf`
command in every download hint."""
from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from science_t2i.nodes import _comfy, masks
from science_t2i.nodes.core import files
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.nodes.masks.gdino import download_grounding_dino
from science_t2i.nodes.sciscore.loading import DEFAULT_SCISCORE, HUB_PATTERNS, resolve_source
from tiny_clip import build_tiny_clip

PACKAGE = Path(files.__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", image_size=32, seed=0)


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub not in offline mode (the tests' default), for faked downloads."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def bare_cwd(tmp_path, monkeypatch):
    """An empty working directory and no models folder configured: ./models is the default."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("SCIENCE_T2I_MODELS", raising=False)
    _comfy.set_models_dir(None)
    yield cwd
    _comfy.set_models_dir(None)


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.lstat().st_mode)
            for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- 1. permissions

@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_everything_written_gets_the_mode_plain_tools_give(umask, tmp_path, tiny_clip_dir,
                                                           monkeypatch, online):
    import huggingface_hub
    from science_t2i.nodes.lora.files import save_flux_lora
    from science_t2i.nodes.sciscore.loading import load_clip_directory
    from science_t2i.nodes.sciscore.save import save_scored_pngs
    from science_t2i.training.core.checkpoints import CheckpointManager
    from science_t2i.training.flux.latent_cache import LatentCache
    from science_t2i.training.sciscore.trainer import save_sciscore_folder
    from tiny_lora import tiny_lora_transformer

    out = tmp_path / "out"
    save_flux_lora(tiny_lora_transformer(), out / "loras" / "science.safetensors")
    LatentCache(out / "latents").put_many({"txt-1": {"t5": torch.zeros(3, 4)}})
    clip, tokenizer, image_cfg = load_clip_directory(tiny_clip_dir)
    for _ in range(2):  # written, then replaced
        save_sciscore_folder(clip, tokenizer, image_cfg, out / "sciscore" / "best",
                             extra={"step": 1})
    CheckpointManager(out / "sciscore" / "checkpoints").save(3, {"w": torch.ones(2)})
    save_scored_pngs(torch.rand(1, 8, 8, 3), ["p"], [0.5], out / "images", "run/img")
    files.write_json_atomic(out / "a" / "b.json", {"x": 1})
    monkeypatch.setattr(huggingface_hub, "snapshot_download",  # keeps the source's 0644
                        lambda repo_id, local_dir, **kw: shutil.copytree(tiny_clip_dir, local_dir))
    monkeypatch.setenv("SCIENCE_T2I_MODELS", str(out / "models"))
    # a fresh models folder even where an earlier test left ComfyUI's (stub) one in place
    monkeypatch.setattr(_comfy, "resolve_model", lambda kind, name: None)
    monkeypatch.setattr(_comfy, "default_folder", lambda kind: out / "models" / kind)
    # where it lands depends on the models folder in use (ComfyUI's when a stub is loaded)
    downloaded = Path(resolve_source(DEFAULT_SCISCORE))

    modes = _modes(out)
    want = {name: (0o777 if (out / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == want
    # the names a user copies or ComfyUI reads, spelled out
    assert modes["loras/science.safetensors"] == 0o666 & ~umask
    assert modes["sciscore/best"] == 0o777 & ~umask
    assert modes["sciscore/best/model.safetensors"] == 0o666 & ~umask
    assert stat.S_IMODE(downloaded.stat().st_mode) == 0o777 & ~umask
    assert all(stat.S_IMODE(p.stat().st_mode) == (0o777 if p.is_dir() else 0o666) & ~umask
               for p in downloaded.rglob("*"))
    assert any(n.startswith("latents/shard-") for n in modes)
    assert os.umask(umask) == umask  # reading it left the process umask alone


# ----------------------------------------------------------------------------- 2. best/ swaps

def _write_copy(folder: Path, tag: str) -> None:
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "model.bin").write_text(tag * 1000)
    (folder / "sub" / "x.json").write_text(tag)


def _whole_copy(folder: Path) -> str | None:
    """The tag of a complete copy in ``folder``; None if it is missing or partial."""
    if not folder.is_dir():
        return None
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    if names != ["model.bin", "sub", "sub/x.json"]:
        return None
    tag = (folder / "sub" / "x.json").read_text()
    return tag if (folder / "model.bin").read_text() == tag * 1000 else None


def _replace_then_die(target: Path, kill_at: int, exchange: bool) -> None:
    """In a forked child: replace ``target`` by a "new" copy with atomic_directory and
    SIGKILL this process right after its ``kill_at``-th step (a file half written, each
    rename or exchange, half of and all of each deletion)."""
    count = itertools.count(1)

    def step():
        if next(count) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    real_replace, real_rmtree, real_exchange = os.replace, shutil.rmtree, files._exchange

    def replace(src, dst):
        real_replace(src, dst)
        step()

    def rmtree(path, *args, **kwargs):
        first = next((f for f in Path(path).rglob("*") if f.is_file()), None)
        if first is not None:
            first.unlink()
            step()
        real_rmtree(path, *args, **kwargs)
        step()

    def exchange_step(a, b):
        if not exchange:
            return False  # the two-rename path of systems without an atomic exchange
        done = real_exchange(a, b)
        step()
        return done

    os.replace, shutil.rmtree, files._exchange = replace, rmtree, exchange_step
    with files.atomic_directory(target) as tmp:
        (tmp / "model.bin").write_text("new")
        step()
        _write_copy(tmp, "new")


def _kill_child(target: Path, kill_at: int, exchange: bool) -> int:
    """The exit status of the forked child (negative: the signal that ended it)."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            _replace_then_die(target, kill_at, exchange)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked child")
@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
def test_a_kill_at_any_moment_of_a_best_swap_keeps_best_and_the_next_start_or_save_cleans_up(
        tmp_path, exchange):
    if exchange and files._SWAP is None:
        pytest.skip("no atomic exchange call on this system")
    for kill_at in itertools.count(1):
        run = tmp_path / f"kill{kill_at}" / "run"
        with files.atomic_directory(run / "best") as tmp:
            _write_copy(tmp, "old")
        status = _kill_child(run / "best", kill_at, exchange)
        if status == 0:
            break  # the swap finished before this step: every step has been tried
        assert status == -signal.SIGKILL
        now = _whole_copy(run / "best")
        if exchange:  # best/ is the old or the new copy at every instant
            assert now in ("old", "new"), kill_at
        else:  # or, between the two renames, the old one waits beside it
            assert now in ("old", "new") or _whole_copy(run / ".tmp-old-best") == "old"
        # the next start puts best/ back and removes every spare copy ...
        save = shutil.copytree(run, run.parent / "save")
        files.recover_directory(run / "best")
        assert _whole_copy(run / "best") in ("old", "new")
        assert [p.name for p in run.iterdir()] == ["best"]
        # ... and so does the next save, without a start in between
        with files.atomic_directory(save / "best") as tmp:
            _write_copy(tmp, "newer")
        assert _whole_copy(save / "best") == "newer"
        assert [p.name for p in save.iterdir()] == ["best"]
    # steps: half-written, [exchange | 3 renames], half / all of one deletion
    assert kill_at == (5 if exchange else 7)


def test_sciscore_trainer_start_restores_best_after_a_kill_mid_swap(tiny_clip_dir, tmp_path):
    from science_t2i.nodes.sciscore.loading import load_clip_directory
    from science_t2i.training.core.config import load_config
    from science_t2i.training.sciscore import trainer as ts
    from tiny_science_scenes import write_science_dataset

    data = write_science_dataset(tmp_path / "data", 2, seed=1, images_per_side=1)
    out = tmp_path / "run"
    clip, tokenizer, image_cfg = load_clip_directory(tiny_clip_dir)
    ts.save_sciscore_folder(clip, tokenizer, image_cfg, out / "best", extra={"step": 4})
    weights = (out / "best" / "model.safetensors").read_bytes()
    # what a kill between the two renames of a replacement leaves: no best/, the old copy
    # moved aside, the finished new copy under its temporary name
    os.replace(out / "best", out / ".tmp-old-best")
    shutil.copytree(out / ".tmp-old-best", out / ".tmp-best-abcd1234")
    cfg = load_config(ts.SciScoreTrainConfig, None, [
        f"data.path={data}", "data.split=", "data.eval_fraction=0.5", f"model.init={tiny_clip_dir}",
        f"output_dir={out}", "data.num_workers=1", "log.progress=false",
        "train.batch_size=2", "train.micro_batch_size=2"])
    trainer = ts.SciScoreTrainer(cfg).setup()
    trainer.stream.close()
    assert (out / "best" / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in out.iterdir()) == ["best"]


# ----------------------------------------------------------------------------- 3-4. downloads

def test_offline_download_creates_nothing_and_names_the_hf_command(bare_cwd):
    with pytest.raises(ScienceT2IError) as err:
        resolve_source(DEFAULT_SCISCORE)  # the real huggingface_hub, offline (conftest)
    msg = str(err.value)
    target = bare_cwd / "models" / "sciscore" / "SciScore"
    assert "offline" in msg and f"hf download {DEFAULT_SCISCORE} --local-dir {target}" in msg
    assert "--include '*.safetensors'" in msg and "huggingface-cli" not in msg
    with pytest.raises(ScienceT2IError, match="hf download IDEA-Research/grounding-dino-base"):
        masks.load_grounding_dino("IDEA-Research/grounding-dino-base")
    assert list(bare_cwd.iterdir()) == []  # no models/, no sciscore/, no grounding-dino/


def test_the_hf_command_in_the_hint_parses(tmp_path):
    from science_t2i.nodes.core import hub
    exe = Path(sys.executable).with_name("hf")
    if not exe.is_file():
        pytest.skip("huggingface_hub's hf command is not installed here")
    command = hub.download_command(DEFAULT_SCISCORE, tmp_path / "a dir" / "SciScore",
                                   HUB_PATTERNS)
    args = shlex.split(command)
    assert args[:5] == ["hf", "download", DEFAULT_SCISCORE, "--local-dir",
                        str(tmp_path / "a dir" / "SciScore")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([str(exe), *args[1:]], env=env, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 2 and "No such option" not in output  # 2: a usage error
    assert "offline" in output.lower()


def test_a_failed_download_leaves_nothing_and_a_partial_one_is_resumed(bare_cwd, online,
                                                                       monkeypatch):
    import huggingface_hub
    target = bare_cwd / "models" / "sciscore" / "SciScore"

    def no_network(repo_id, local_dir, **kw):
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)  # as hf does first
        raise ConnectionError("no route to host")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ScienceT2IError, match="ConnectionError: no route to host") as err:
        resolve_source(DEFAULT_SCISCORE)
    assert f"hf download {DEFAULT_SCISCORE} --local-dir {target}" in str(err.value)
    assert list(bare_cwd.iterdir()) == []

    def cut_off(repo_id, local_dir, **kw):
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "config.json").write_text("{}")
        raise ConnectionError("connection reset")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cut_off)
    with pytest.raises(ScienceT2IError, match="next attempt continues"):
        resolve_source(DEFAULT_SCISCORE)
    partial = target.with_name("SciScore.partial")
    assert not target.exists() and (partial / "config.json").is_file()

    seen = []

    def resume(repo_id, local_dir, allow_patterns=None, **kw):
        seen.append((Path(local_dir), allow_patterns, (Path(local_dir) / "config.json").exists()))
        for name in ("model.safetensors", "vocab.json"):
            (Path(local_dir) / name).write_text(name)
            assert not target.exists()  # never visible half-done under the model's name
    monkeypatch.setattr(huggingface_hub, "snapshot_download", resume)
    assert resolve_source(DEFAULT_SCISCORE) == target
    assert seen == [(partial, HUB_PATTERNS, True)]  # continued in the partial folder
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors",
                                                        "vocab.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["SciScore"]


def test_grounding_dino_downloads_through_the_same_atomic_helper(bare_cwd, online, monkeypatch):
    import huggingface_hub
    target = bare_cwd / "models" / "grounding-dino" / "grounding-dino-tiny"
    files_written = ["config.json", "model.safetensors", "preprocessor_config.json"]

    def fake(repo_id, local_dir, allow_patterns=None, **kw):
        assert Path(local_dir) != target and Path(local_dir).parent == target.parent
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        for name in files_written:
            (Path(local_dir) / name).write_text("{}")
            assert not target.exists()
        return local_dir
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert download_grounding_dino(masks.DEFAULT_GDINO) == target
    assert sorted(p.name for p in target.iterdir()) == files_written
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]

    # a repo without config.json is refused, and leaves nothing behind
    shutil.rmtree(bare_cwd / "models")
    files_written = ["model.safetensors"]
    with pytest.raises(ScienceT2IError, match="(?s)has no config.json.*hf download"):
        download_grounding_dino(masks.DEFAULT_GDINO)
    assert list(bare_cwd.iterdir()) == []


def test_no_download_hint_names_the_retired_huggingface_cli():
    sources = [p for d in ("nodes", "training") for p in (PACKAGE / d).rglob("*.py")]
    assert len(sources) > 20
    assert [p.name for p in sources if "huggingface-cli" in p.read_text(encoding="utf-8")] == []


# ----------------------------------------------------------------------------- 5. box maths

def test_box_conversions_are_torchvisions(monkeypatch):
    import torchvision.ops
    real, calls = torchvision.ops.box_convert, []

    def counted(boxes, in_fmt, out_fmt):
        calls.append((in_fmt, out_fmt))
        return real(boxes, in_fmt, out_fmt)
    monkeypatch.setattr(torchvision.ops, "box_convert", counted)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [30.0, 10.0, 90.0, 40.0]])
    out, fallback = masks.subject_boxes(boxes, 100, 80, "merge")
    assert not fallback and ("xyxy", "cxcywh") in calls and ("cxcywh", "xyxy") in calls
    # the paper's merge: enclosing box [10, 10, 90, 60] -> normalised w 0.8, h 0.625, each
    # + 0.1 around the same centre -> [5, 6, 95, 64] in pixels
    assert torch.allclose(out, torch.tensor([[5.0, 6.0, 95.0, 64.0]]), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    b = torch.rand(64, 4, generator=g) * 3 - 1
    cx, cy, w, h = b.unbind(-1)  # the hand-written formulas they replace, bit for bit
    assert torch.equal(masks.cxcywh_to_xyxy(b),
                       torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1))
    assert torch.equal(masks.xyxy_to_cxcywh(b),
                       torch.stack([(cx + w) / 2, (cy + h) / 2, w - cx, h - cy], -1))

"""Shared training infrastructure: config trees, atomic checkpoints, RNG state, run log."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.checkpoints import (CheckpointManager, capture_rng_state,
                                                   restore_rng_state)
from science_t2i.training.core.config import (config_to_dict, load_config, resume_digest,
                                              save_config)
from science_t2i.training.core.run_log import RunLog


@dataclass
class Optim:
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.999)
    use_8bit: bool = False


@dataclass
class Cfg:
    steps: int = 10
    name: str = "run"
    output_dir: Path = Path("out")
    sampler: Literal["uniform", "logit_normal"] = "uniform"
    seed: Optional[int] = None
    targets: list[str] = field(default_factory=lambda: ["to_k", "to_q"])
    optim: Optim = field(default_factory=Optim)


# ----------------------------------------------------------------------------- config

def test_defaults_file_and_overrides_are_merged_and_typed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 3\noptim:\n  lr: 1e-4\n  betas: [0.8, 0.9]\n")
    assert load_config(Cfg, None, ["name=no"]).name == "no"     # not YAML's false
    assert load_config(Cfg, None, ["name=0123"]).name == "0123"
    cfg = load_config(Cfg, f, ["optim.use_8bit=true", "name=abc", "seed=7",
                               "targets=to_v,to_out.0", "output_dir=~/x", "sampler=logit_normal"])
    assert cfg.steps == 3 and isinstance(cfg.steps, int)
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)  # YAML 1.1
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.use_8bit is True
    assert cfg.seed == 7 and cfg.name == "abc"
    assert cfg.targets == ["to_v", "to_out.0"]
    assert cfg.output_dir == Path("~/x").expanduser()
    assert cfg.sampler == "logit_normal"
    # untouched defaults survive
    assert load_config(Cfg, None, []).optim.lr == 2e-5


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('steps = 5\n[optim]\nlr = 0.001\n')
    cfg = load_config(Cfg, f, ["steps=6"])
    assert cfg.steps == 6 and cfg.optim.lr == 0.001


@pytest.mark.parametrize("overrides, needle", [
    (["optim.lrr=1"], "Did you mean 'lr'"),
    (["optim.learning_rate=1"], "'optim.learning_rate'. Valid keys here: betas, lr, use_8bit"),
    (["stepz=1"], "steps"),
    (["optim.lr.x=1"], "not a section"),
    (["steps"], "key.sub=value"),
])
def test_unknown_keys_rejected_naming_valid_ones(overrides, needle):
    with pytest.raises(ScienceT2IError) as exc:
        load_config(Cfg, None, overrides)
    assert needle in str(exc.value)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1\n  wd: 2\n")
    with pytest.raises(ScienceT2IError) as exc:
        load_config(Cfg, f, [])
    msg = str(exc.value)
    assert "'optim.wd'" in msg
    for valid in ("betas", "lr", "use_8bit"):
        assert valid in msg


@pytest.mark.parametrize("overrides", [["steps=abc"], ["steps=1.5"], ["optim.use_8bit=maybe"],
                                       ["sampler=mode"], ["optim.betas=[1]"], ["steps=true"]])
def test_badly_typed_values_rejected(overrides):
    with pytest.raises(ScienceT2IError):
        load_config(Cfg, None, overrides)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ScienceT2IError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml", [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ScienceT2IError, match="mapping"):
        load_config(Cfg, bad, [])


def test_resume_digest_ignores_only_the_keys_a_resume_may_change(tmp_path):
    import hashlib
    a = load_config(Cfg, None, [])
    b = load_config(Cfg, None, ["optim.lr=3e-5"])
    assert resume_digest(a, ()) != resume_digest(b, ())
    assert resume_digest(a, ("optim.lr",)) == resume_digest(b, ("optim.lr",))
    assert resume_digest(a, ("optim",)) == resume_digest(b, ("optim",))
    assert resume_digest(a, ("steps",)) != resume_digest(b, ("steps",))
    # independently: sha256 of the config as canonical JSON without the excluded keys
    d = config_to_dict(b)
    del d["steps"]
    del d["optim"]["use_8bit"]
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    assert resume_digest(b, ("steps", "optim.use_8bit")) == \
        hashlib.sha256(text.encode()).hexdigest()[:16]
    assert config_to_dict(b)["optim"]["use_8bit"] is False   # the config itself is untouched
    assert d["optim"]["lr"] == 3e-5 and config_to_dict(b)["output_dir"] == "out"
    save_config(b, tmp_path / "cfg.yaml")
    assert resume_digest(load_config(Cfg, tmp_path / "cfg.yaml", []), ()) == \
        resume_digest(b, ())


def test_renamed_keys_point_at_their_new_names(tmp_path):
    from science_t2i.training.sciscore.config import SciScoreTrainConfig
    with pytest.raises(ScienceT2IError, match="'save_every' is now 'checkpoint.every'"):
        load_config(SciScoreTrainConfig, None, ["save_every=5"])
    f = tmp_path / "old.yaml"
    f.write_text("optim:\n  max_steps: 10\n")
    with pytest.raises(ScienceT2IError, match="'optim.max_steps' is now 'train.max_steps'"):
        load_config(SciScoreTrainConfig, f, [])
    assert load_config(SciScoreTrainConfig, None, ["train.max_steps=10"]).train.max_steps == 10


@pytest.mark.parametrize("name", ["constant_with_warmup", "linear", "cosine"])
def test_lr_schedules_are_the_library_formulas(name):
    """The schedule against the formulas written out: warm-up s / W from 0, then constant,
    linear decay (T - s) / (T - W) or cosine 0.5 (1 + cos(pi (s - W) / (T - W)))."""
    import math

    from science_t2i.training.core.optim import make_scheduler
    from science_t2i.training.core.sections import OptimSection
    W, T, lr = 4, 20, 0.5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt, OptimSection(lr=lr, schedule=name, warmup_steps=W), T)
    for s in range(T + 1):
        if s < W:
            want = s / W
        elif name == "constant_with_warmup":
            want = 1.0
        elif name == "linear":
            want = (T - s) / (T - W)
        else:
            want = 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W)))
        assert sched.get_last_lr()[0] == pytest.approx(lr * want, abs=1e-12), (name, s)
        opt.step()
        sched.step()


# ----------------------------------------------------------------------------- checkpoints

def _optimizer_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
    for _ in range(3):
        model(torch.randn(2, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def test_save_load_roundtrip_restores_training_exactly(tmp_path):
    model, opt, sched = _optimizer_state()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    path = mgr.save(3, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "data": {"epoch": 1, "order": [3, 1]},
                        "rng": capture_rng_state()})
    assert path.name == "checkpoint-00000003" and mgr.latest() == path
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    # continue the original and a restored copy: they must agree bit for bit
    state = mgr.load(path)
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: min(1.0, (s + 1) / 5))
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert state["data"] == {"epoch": 1, "order": [3, 1]}
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    x = torch.randn(2, 4)
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        m(x).pow(2).sum().backward()
        o.step()
        s.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_rng_roundtrip_through_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    mgr = CheckpointManager(tmp_path, keep_last=1)
    mgr.save(1, {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)   # scramble
    restore_rng_state(mgr.load()["rng"])
    got = (random.random(), np.random.rand(3), torch.rand(3))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_keep_last_k(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 15, 20):
        mgr.save(step, {"w": torch.full((2,), float(step))})
    names = [p.name for p in mgr.checkpoints()]
    assert names == ["checkpoint-00000015", "checkpoint-00000020"]
    assert torch.equal(mgr.load()["w"], torch.full((2,), 20.0))
    # re-saving the same step replaces it
    mgr.save(20, {"w": torch.zeros(2)})
    assert torch.equal(mgr.load()["w"], torch.zeros(2))
    keep_all = CheckpointManager(tmp_path / "all", keep_last=0)
    for step in range(4):
        keep_all.save(step, {"s": step})
    assert len(keep_all.checkpoints()) == 4
    with pytest.raises(ScienceT2IError):
        CheckpointManager(tmp_path, keep_last=-1)


def test_load_for_resume_checks_the_settings_digest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    with pytest.raises(ScienceT2IError, match="no checkpoint"):
        mgr.load_for_resume("abc", "x")
    mgr.save(1, {"resume_digest": "abc", "w": torch.ones(2)})
    mgr.save(2, {"resume_digest": "abc", "w": torch.full((2,), 2.0)})
    path, state = mgr.load_for_resume("abc", "train.max_steps")
    assert path.name == "checkpoint-00000002" and torch.equal(state["w"], torch.full((2,), 2.0))
    with pytest.raises(ScienceT2IError, match=r"different settings.*only train\.max_steps"):
        mgr.load_for_resume("changed", "train.max_steps")


def test_per_process_parts_and_the_process_count(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    parts = [{"rng": {"x": torch.full((2,), float(r))}, "rank": r} for r in range(3)]
    path = mgr.save(4, {"resume_digest": "d", "w": torch.ones(1)}, parts=parts)
    assert mgr.processes(path) == 3
    for r in range(3):
        got = mgr.load_part(path, r)
        assert got["rank"] == r and torch.equal(got["rng"]["x"], torch.full((2,), float(r)))
    assert sorted(p.name for p in path.iterdir()) == [
        "process-0.json", "process-0.safetensors", "process-1.json", "process-1.safetensors",
        "process-2.json", "process-2.safetensors", "state.json", "state.safetensors"]
    got_path, state = mgr.load_for_resume("d", "x", processes=3)
    assert got_path == path and torch.equal(state["w"], torch.ones(1))
    with pytest.raises(ScienceT2IError, match=r"3 process\(es\) and this run has 2.*"
                                              r"--num_processes 3"):
        mgr.load_for_resume("d", "x", processes=2)
    # a checkpoint of an earlier format is refused with what to do
    meta = json.loads((path / "state.json").read_text())
    meta["format_version"] = 1
    (path / "state.json").write_text(json.dumps(meta))
    with pytest.raises(ScienceT2IError, match="format version 1.*start a new run"):
        mgr.load(path)


def test_load_errors(tmp_path):
    mgr = CheckpointManager(tmp_path / "empty", keep_last=1)
    with pytest.raises(ScienceT2IError, match="no checkpoint"):
        mgr.load()
    (tmp_path / "checkpoint-00000001").mkdir()
    with pytest.raises(ScienceT2IError, match="not a complete checkpoint"):
        mgr.load(tmp_path / "checkpoint-00000001")
    with pytest.raises(ScienceT2IError, match="cannot store"):
        mgr.save(1, {"x": object()})


_KILL_CHILD = textwrap.dedent("""
    import sys, time, torch, safetensors.torch as st
    from science_t2i.training.core.checkpoints import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], keep_last=1)
    mgr.save(1, {"w": torch.arange(6.0), "step": 1})
    real_save = st.save_file
    def slow_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = open(filename, "rb").read()
        open(filename, "wb").write(data[: len(data) // 2])   # half written ...
        print("WRITING", flush=True)
        time.sleep(60)                                        # ... when the kill arrives
    st.save_file = slow_save
    mgr.save(2, {"w": torch.zeros(100000), "step": 2})
""")


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # the half-written step-2 folder exists only under a temporary name
    assert any(p.name.startswith(".tmp-checkpoint-") for p in out.iterdir())
    mgr = CheckpointManager(out, keep_last=1)
    assert mgr.latest() == out / "checkpoint-00000001"
    state = mgr.load()
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(6.0))
    # resuming and saving again cleans the debris and keeps working
    mgr.save(2, {"w": torch.ones(1), "step": 2})
    assert [p.name for p in out.iterdir()] == ["checkpoint-00000002"]


# ----------------------------------------------------------------------------- run log

def test_run_log_jsonl_truncate_and_plot(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 6):
        log.log(step, loss=torch.tensor(1.0 / step), lr=1e-4, note="x")
    with open(log.path, "a") as f:
        f.write('{"step": 6, "loss": 0.')   # a line cut by a kill
    recs = log.records()
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[1]["loss"] == pytest.approx(0.5)
    log.truncate_after(3)
    assert [r["step"] for r in log.records()] == [1, 2, 3]
    png = log.plot(["loss", "lr"], tmp_path / "curve.png")
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert json.loads(log.path.read_text().splitlines()[0])["note"] == "x"

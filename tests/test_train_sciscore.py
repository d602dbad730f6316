"""SciScore trainer: sampling, learning on a drawn dataset, the saved model, resume, bad input."""
from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.checkpoints import CheckpointManager
from science_t2i.training.core.config import load_config
from science_t2i.training.core.datasets import ImageRef, ScienceRecord, load_records
from science_t2i.training.core.run_log import RunLog
from science_t2i.training.sciscore import trainer as ts
from science_t2i.training.sciscore.data import (ImageSpec, SampleStream, check_records,
                                                draw_sample, image_tensor, split_held_out)
from tiny_clip import build_tiny_clip
from tiny_science_scenes import write_science_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", image_size=32, seed=0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return {"train": write_science_dataset(root / "train", 10, seed=1, images_per_side=3),
            "test": write_science_dataset(root / "test", 6, seed=2, images_per_side=1)}


def _config(clip_dir: Path, train: Path, test: Path, out: Path, **over) -> ts.SciScoreTrainConfig:
    overrides = [f"data.path={train}", "data.split=", f"data.eval_path={test}",
                 "data.eval_split=", f"model.init={clip_dir}", f"output_dir={out}",
                 "data.num_workers=2", "log.progress=false"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return load_config(ts.SciScoreTrainConfig, None, overrides)


def _ref(name: str) -> ImageRef:
    return ImageRef(path=Path(name), label=name)


def _record(index=0, **lists) -> ScienceRecord:
    base = dict(implicit_prompts=["ip0", "ip1"], explicit_prompts=["ep0", "ep1", "ep2"],
                superficial_prompts=["sp0"], explicit_images=[_ref("e0"), _ref("e1")],
                superficial_images=[_ref("s0"), _ref("s1"), _ref("s2")])
    base.update(lists)
    return ScienceRecord(**base, category="biology", task="RI", index=index)


# ----------------------------------------------------------------------------- sampling

def test_each_sample_draws_its_five_items_independently_and_uniformly():
    rec = _record()
    rng = random.Random(0)
    draws = [draw_sample(rec, rng) for _ in range(6000)]
    keys = [(d.implicit_prompt, d.explicit_prompt, d.superficial_prompt,
             d.explicit_image.label, d.superficial_image.label) for d in draws]
    joint = Counter(keys)
    # every one of the 2*3*1*2*3 = 36 combinations occurs, each near 1/36 (independence)
    combos = list(itertools.product(["ip0", "ip1"], ["ep0", "ep1", "ep2"], ["sp0"],
                                    ["e0", "e1"], ["s0", "s1", "s2"]))
    assert set(joint) == set(combos)
    for c in combos:
        assert abs(joint[c] / len(draws) - 1 / 36) < 0.012
    # the explicit prompt and explicit image are not tied to one index
    pairs = Counter((k[1], k[3]) for k in keys)
    assert len(pairs) == 6


def test_sample_stream_is_a_function_of_the_sample_number(tiny_clip_dir, scenes):
    from science_t2i.nodes.sciscore import preprocess_images
    from science_t2i.nodes.sciscore.loading import load_clip_directory
    _, tok, image_cfg = load_clip_directory(tiny_clip_dir)
    records = load_records(scenes["train"])
    spec = ImageSpec.from_image_config(image_cfg)
    a = SampleStream(records, tok, spec, seed=3, num_workers=1)
    b = SampleStream(records, tok, spec, seed=3, num_workers=3)
    try:
        x, y = a.batch([7, 8, 9]), b.batch([9, 8, 7])
        assert torch.equal(x.pixel_values[0], y.pixel_values[2])
        assert torch.equal(x.input_ids[0], y.input_ids[2][: x.input_ids.shape[1]])
        # one epoch visits every record exactly once
        n = len(records)
        seen = [a.draw(k)[0].record_index for k in range(n)]
        assert sorted(seen) == sorted(r.index for r in records)
        # the images go through the scorer's own preprocessing (augmentation is off)
        s, _ = a.draw(7)
        want = preprocess_images(image_tensor(s.explicit_image).unsqueeze(0), spec.size,
                                 spec.mean, spec.std, crop_size=spec.crop_size)[0]
        assert torch.equal(x.pixel_values[0], want)
        assert x.pixel_values.shape == (6, 3, 32, 32)
        # prompts come out in the order implicit, explicit, superficial
        texts = tok.batch_decode(x.input_ids, skip_special_tokens=True)
        assert texts[0].strip() == s.implicit_prompt.lower()
        assert texts[3].strip() == s.explicit_prompt.lower()
        assert texts[6].strip() == s.superficial_prompt.lower()
        # augmentation (off by default) is reproducible too, and does change the pixels
        c = SampleStream(records, tok, spec, seed=3, augment=True, num_workers=2)
        try:
            p1, p2 = c.batch(list(range(8))).pixel_values, c.batch(list(range(8))).pixel_values
            assert torch.equal(p1, p2)
            assert not torch.equal(p1, a.batch(list(range(8))).pixel_values)
        finally:
            c.close()
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- learning

def test_tiny_clip_learns_the_phenomena_and_the_best_model_loads_in_the_node(
        tiny_clip_dir, scenes, tmp_path, models_dir):
    from science_t2i.nodes.sciscore.node_classes import SciScoreLoaderNode
    held = load_records(scenes["test"])
    held_images = [[image_tensor(r.explicit_images[0]), image_tensor(r.superficial_images[0])]
                   for r in held]
    cfg = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path / "run",
                  **{"optim.lr": 3e-3, "optim.warmup_steps": 5, "train.max_steps": 60,
                     "train.batch_size": 16, "train.micro_batch_size": 16, "eval.every": 20,
                     "checkpoint.every": 60})
    result = ts.train_sciscore(cfg)

    evals = {r["step"]: r["eval_accuracy"] for r in result.history if "eval_accuracy" in r}
    assert sorted(evals) == [0, 20, 40, 60]
    # a balanced set: ignoring the text scores exactly 50%, the random start is near that
    assert abs(evals[0] - 0.5) <= 0.2
    assert result.best_accuracy >= 0.9
    assert result.best_accuracy == max(evals.values()) and evals[result.best_step] == \
        result.best_accuracy
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 60 and sum(losses[-10:]) < 0.3 * sum(losses[:10])

    out = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json",
                 "tokenizer_config.json", ts.EVAL_FILE):
        assert (out / "best" / name).is_file(), name
    assert (out / "best" / "tokenizer.json").is_file() or (out / "best" / "vocab.json").is_file()
    chosen = json.loads((out / "best" / ts.EVAL_FILE).read_text())
    assert chosen["step"] == result.best_step
    assert chosen["overall"]["accuracy"] == result.best_accuracy
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "log.jsonl").is_file() and (out / "config.yaml").is_file()

    # the SciScore Loader node opens the best folder and scores exactly as the trainer did
    model = SciScoreLoaderNode().load(str(out / "best"), dtype="fp32")[0]
    loaded = torch.stack([model.score(imgs, r.implicit_prompts[0])
                          for imgs, r in zip(held_images, held)])
    # the scores the trainer's in-memory model gave when it chose this checkpoint
    by_index = {row["index"]: row for row in chosen["records"]}
    trained = torch.tensor([[by_index[r.index]["explicit_score"],
                             by_index[r.index]["superficial_score"]] for r in held])
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)
    correct = (loaded[:, 0] > loaded[:, 1]).float().mean().item()
    assert correct == pytest.approx(result.best_accuracy)


# ----------------------------------------------------------------------------- resume

def test_resume_gives_the_same_tensors_as_an_uninterrupted_run(tiny_clip_dir, scenes, tmp_path):
    over = {"optim.lr": 1e-3, "optim.warmup_steps": 2, "train.max_steps": 6,
            "train.batch_size": 8, "train.micro_batch_size": 4, "eval.every": 3,
            "checkpoint.every": 3, "checkpoint.keep_last": 0, "data.eval_limit": 4,
            "log.plot": False}
    straight = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path / "a", **over)
    ts.train_sciscore(straight)
    split = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path / "b", **over)
    first = ts.train_sciscore(split, stop_after=3)
    assert first.steps_done == 3
    assert [p.name for p in CheckpointManager(tmp_path / "b" / "checkpoints").checkpoints()] \
        == ["checkpoint-00000003"]
    second = ts.train_sciscore(split, resume=True)
    assert second.steps_done == 6

    a = CheckpointManager(tmp_path / "a" / "checkpoints").load()
    b = CheckpointManager(tmp_path / "b" / "checkpoints").load()
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"],
                                                                          pb["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"]
    # the weights did move, and the resumed log reads like the uninterrupted one
    start = CheckpointManager(tmp_path / "b" / "checkpoints").load(
        tmp_path / "b" / "checkpoints" / "checkpoint-00000003")["model"]
    assert not torch.equal(start["text_projection.weight"], b["model"]["text_projection.weight"])
    log_b = [(r["step"], r.get("loss"), r.get("eval_accuracy")) for r in second.history]
    log_a = [(r["step"], r.get("loss"), r.get("eval_accuracy"))
             for r in RunLog(tmp_path / "a").records()]
    assert log_a == log_b and len(log_a) == 6 + 3  # six steps, evaluations at 0, 3 and 6

    # a changed training setting cannot resume silently
    changed = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path / "b",
                      **{**over, "optim.lr": 5e-4})
    with pytest.raises(ScienceT2IError, match="different"):
        ts.train_sciscore(changed, resume=True)
    with pytest.raises(ScienceT2IError, match="no checkpoint"):
        ts.train_sciscore(_config(tiny_clip_dir, scenes["train"], scenes["test"],
                                  tmp_path / "c", **over), resume=True)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("field", ["implicit_prompt", "explicit_prompt", "superficial_prompt",
                                   "explicit_image", "superficial_image"])
def test_records_with_an_empty_list_are_refused(field, tiny_clip_dir, scenes, tmp_path):
    from science_t2i.training.core.datasets import write_jsonl_dataset
    from tiny_science_scenes import science_records
    rows = science_records(1, seed=5, images_per_side=1)
    rows[2][field] = []
    bad = tmp_path / "bad"
    write_jsonl_dataset(rows, bad)
    cfg = _config(tiny_clip_dir, bad, scenes["test"], tmp_path / "run")
    with pytest.raises(ScienceT2IError, match=f"record 2.*{field}"):
        ts.train_sciscore(cfg)

    attr = {"implicit_prompt": "implicit_prompts", "explicit_prompt": "explicit_prompts",
            "superficial_prompt": "superficial_prompts", "explicit_image": "explicit_images",
            "superficial_image": "superficial_images"}[field]
    with pytest.raises(ScienceT2IError, match=f"record 4 has an empty '{field}'"):
        check_records([_record(0), _record(4, **{attr: []})], "training")


def test_an_empty_held_out_split_is_refused(tiny_clip_dir, scenes, tmp_path):
    with pytest.raises(ScienceT2IError, match="held-out split is empty"):
        split_held_out(load_records(scenes["test"]), 0.01, seed=0)
    with pytest.raises(ScienceT2IError, match="held-out split is empty"):
        check_records([], "held-out")
    cfg = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path / "r",
                  **{"data.eval_path": "", "data.eval_fraction": 0.001})
    with pytest.raises(ScienceT2IError, match="held-out split is empty"):
        ts.train_sciscore(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.jsonl").write_text("")
    cfg = _config(tiny_clip_dir, scenes["train"], empty, tmp_path / "r")
    with pytest.raises(ScienceT2IError, match="no records"):
        ts.train_sciscore(cfg)


def test_unknown_config_keys_are_rejected_naming_the_valid_ones(tmp_path, capsys):
    from science_t2i.training.cli import main
    with pytest.raises(ScienceT2IError, match="Valid keys here: betas, eps, lr"):
        load_config(ts.SciScoreTrainConfig, None, ["optim.learning_rate=1e-5"])
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  lambda: 0.5\n")
    assert main(["train-sciscore", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "'loss.lambda'" in err and "lambda_" in err
    assert main(["train-sciscore", "--print-config", "loss.lambda_=0.5",
                 "train.max_steps=7"]) == 0
    printed = capsys.readouterr().out
    assert "lambda_: 0.5" in printed and "max_steps: 7" in printed and "lr: 2.0e-06" in printed


def test_defaults_are_the_papers():
    cfg = ts.SciScoreTrainConfig()
    assert cfg.loss.lambda_ == 0.25
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps, cfg.train.max_steps,
            cfg.optim.max_grad_norm, cfg.train.batch_size) == (2e-6, 0.3, 150, 600, 1.0, 1024)
    assert cfg.eval.every == 10 and cfg.data.augment is False
    assert (cfg.preset, cfg.train.process_loss, cfg.data.preprocess) == ("reference", "sum",
                                                                         "exact")
    from science_t2i.training.core.optim import make_scheduler

    def factors(c):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.optim.lr)
        sched = make_scheduler(opt, c.optim, c.train.max_steps)
        f = []
        for _ in range(601):
            f.append(sched.get_last_lr()[0] / c.optim.lr)
            opt.step()
            sched.step()
        return f
    # reference (lr_schedulers/constant_with_warmup.py): warm-up to the peak, then constant
    f = factors(cfg)
    assert f[0] < f[75] < f[149] <= 1.0 and f[150] == f[375] == f[600] == 1.0
    # pack: warm-up, then linear decay to zero at the last step
    pack = load_config(ts.SciScoreTrainConfig, None, ["preset=pack"])
    assert (pack.optim.schedule, pack.train.process_loss) == ("linear", "mean")
    f = factors(pack)
    assert f[0] < f[75] < f[149] <= 1.0 and f[150] == 1.0 and f[375] == pytest.approx(0.5)
    assert f[600] == 0.0


def test_settings_that_cannot_work_are_refused(tiny_clip_dir, scenes, tmp_path):
    with pytest.raises(ScienceT2IError, match="data.path is not set"):
        ts.check_config(ts.SciScoreTrainConfig())
    cfg = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path,
                  **{"train.batch_size": 10, "train.micro_batch_size": 4})
    with pytest.raises(ScienceT2IError, match="not a multiple"):
        ts.check_config(cfg)
    cfg = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path,
                  **{"model.freeze_text_tower": True, "model.freeze_vision_tower": True,
                     "model.freeze_logit_scale": True})
    with pytest.raises(ScienceT2IError, match="frozen"):
        ts.check_config(cfg)


# ----------------------------------------------------------------------------- parts

def test_freezing_towers_keeps_only_the_rest_trainable(tiny_clip_dir):
    from science_t2i.nodes.sciscore.loading import load_clip_directory
    clip, _, _ = load_clip_directory(tiny_clip_dir)
    params = ts.set_trainable(clip, ts.ModelConfig(freeze_vision_tower=True))
    names = {n for n, p in clip.named_parameters() if p.requires_grad}
    assert "logit_scale" in names and any(n.startswith("text_model.") for n in names)
    assert not any(n.startswith(("vision_model.", "visual_projection")) for n in names)
    assert len(params) == len(names)
    ts.set_trainable(clip, ts.ModelConfig())
    assert all(p.requires_grad for p in clip.parameters())  # everything, logit_scale included


def test_best_folder_write_is_atomic(tiny_clip_dir, tmp_path, monkeypatch):
    from science_t2i.nodes.sciscore.loading import load_clip_directory
    clip, tok, image_cfg = load_clip_directory(tiny_clip_dir)
    target = tmp_path / "best"
    ts.save_sciscore_folder(clip, tok, image_cfg, target, extra={"step": 1})
    before = (target / "model.safetensors").read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(tok, "save_pretrained", broken)
    with torch.no_grad():
        clip.logit_scale.add_(1.0)
    with pytest.raises(OSError):
        ts.save_sciscore_folder(clip, tok, image_cfg, target, extra={"step": 2})
    assert (target / "model.safetensors").read_bytes() == before  # the old best is intact
    assert json.loads((target / ts.EVAL_FILE).read_text())["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no partial folder left


def test_command_line_trains_and_resumes(tiny_clip_dir, scenes, tmp_path, capsys):
    from science_t2i.training.cli import main
    cfg = tmp_path / "sciscore.yaml"
    cfg.write_text(f"data:\n  path: {scenes['train']}\n  split: ''\n  eval_path: {scenes['test']}\n"
                   f"  eval_split: ''\n  eval_limit: 4\n  num_workers: 1\n"
                   f"model:\n  init: {tiny_clip_dir}\n  freeze_vision_tower: true\n"
                   f"train:\n  batch_size: 4\n  micro_batch_size: 2\noptim:\n  warmup_steps: 1\n"
                   f"output_dir: {tmp_path / 'out'}\nlog:\n  progress: false\n  plot: false\n"
                   "checkpoint:\n  every: 2\n")
    assert main(["train-sciscore", "--config", str(cfg), "train.max_steps=2",
                 "eval.every=2"]) == 0
    assert "best held-out accuracy" in capsys.readouterr().out
    assert (tmp_path / "out" / "best" / "model.safetensors").is_file()
    # extend the finished run by two steps (max_steps may change on resume)
    assert main(["train-sciscore", "--config", str(cfg), "--resume", "train.max_steps=4",
                 "eval.every=2"]) == 0
    steps = [r["step"] for r in RunLog(tmp_path / "out").records() if "loss" in r]
    assert steps == [1, 2, 3, 4]
    # the frozen vision tower did not move
    from safetensors.torch import load_file
    first = load_file(str(tiny_clip_dir / "model.safetensors"))
    last = CheckpointManager(tmp_path / "out" / "checkpoints").load()["model"]
    assert torch.equal(first["visual_projection.weight"], last["visual_projection.weight"])
    assert not torch.equal(first["text_projection.weight"], last["text_projection.weight"])


def test_gradient_accumulation_matches_one_big_micro_batch(tiny_clip_dir, scenes, tmp_path):
    # the same 8 samples as one micro-batch or as 2 x 4 accumulated. Adam's first step is
    # lr * g / (|g| + eps): invariant to the overall gradient scale, so the updated weights
    # agree up to round-off, except where the true gradient is zero or nearly so and Adam
    # scales noise up (e.g. the attention key bias: softmax ignores a shift shared by all keys).
    lr = 1e-3
    weights = []
    for micro in (8, 4):
        cfg = _config(tiny_clip_dir, scenes["train"], scenes["test"], tmp_path / f"m{micro}",
                      **{"optim.lr": lr, "optim.warmup_steps": 0, "train.max_steps": 1,
                         "train.batch_size": 8, "train.micro_batch_size": micro,
                         "optim.max_grad_norm": 0, "eval.at_start": False, "data.eval_limit": 2,
                         "log.plot": False})
        ts.train_sciscore(cfg)
        weights.append(CheckpointManager(tmp_path / f"m{micro}" / "checkpoints").load()["model"])
    from safetensors.torch import load_file
    init = load_file(str(tiny_clip_dir / "model.safetensors"))
    total = off = 0
    for k, w in weights[0].items():
        if k.endswith("k_proj.bias") or k not in init:
            continue
        total += w.numel()
        off += int(((w - weights[1][k]).abs() > 0.02 * lr).sum())
        if w.numel() > 1:  # every weight took a full Adam step
            assert (w - init[k]).abs().max() > 0.5 * lr, k
    # a handful of elements have gradients at round-off level, where Adam's sign is noise
    assert total > 10000 and off / total < 1e-3, (off, total)

"""Faults from outside the pack's own logic, met through the real ``science-t2i`` command: a
GPU the machine lacks, an unusable output folder, a full disk, missing optional packages,
JSON nested too deeply, a closed output pipe, overrides after --resume, broken dataset
lines, rollout prompts without a subject, and progress bars that log.progress=false must
silence. Each gives one clear error line (exit 2), never a traceback."""
from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.cli import EXIT_PIPE_CLOSED, build_parser, main, parse_args
from science_t2i.training.core.datasets import load_records, write_jsonl_dataset
from science_t2i.training.stage2.rollouts import load_rollout_prompts
from tiny_clip import build_tiny_clip
from tiny_dpo import write_prompts
from tiny_science_scenes import write_science_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEEP = 100_000


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny", image_size=32, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rows = [{"implicit_prompt": f"prompt {i}", "explicit_image": [_image(i)],
             "superficial_image": [_image(10 + i)], "law": "RI"} for i in range(2)]
    return write_jsonl_dataset(rows, tmp_path_factory.mktemp("ds")).parent


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    for kind in ("ip", "ep", "sp"):
        (run / kind).mkdir()
        for i in range(2):
            _image(i).save(run / kind / f"{i}_0.png")
    return run


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    _image(0).save(path)
    return path


def _command(name, clip_dir, dataset, t2i_run, image, out):
    """A complete command line of ``name`` that would run (and write ``out``) as it is."""
    return {"score": ["score", str(image), "--prompt", "an apple", "--model", str(clip_dir)],
            "eval-reward": ["eval-reward", "--dataset", str(dataset), "--model", str(clip_dir),
                            "--out", str(out)],
            "eval-t2i": ["eval-t2i", str(t2i_run), "--dataset", str(dataset), "--model",
                         str(clip_dir), "--out", str(out)]}[name]


def _deep_json(path: pathlib.Path) -> pathlib.Path:
    path.write_text("[" * DEEP + "]" * DEEP)
    return path


def _without(monkeypatch, package: str) -> None:
    """Make ``package`` (and every submodule already imported) fail to import."""
    for name in [n for n in sys.modules if n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def _trainer_args(command: str, tmp_path, out) -> list[str]:
    """Settings that pass every check made before the trainer loads data or models."""
    common = [f"output_dir={out}", "data.path=/nonexistent/data"]
    if command in ("dpo", "stage2"):
        common = [f"output_dir={out}",
                  f"rollout.prompts={write_prompts(tmp_path / 'prompts.json')}"]
    model = "model.init" if command == "train-sciscore" else "model.path"
    return [command, *common, f"{model}=/nonexistent/model"]


# ----------------------------------------------------------------------------- 1. devices

@pytest.mark.parametrize("command", ["score", "eval-reward", "eval-t2i"])
def test_cuda_on_a_machine_without_a_gpu_is_refused_up_front(
        command, clip_dir, dataset, t2i_run, image, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    argv = _command(command, clip_dir, dataset, t2i_run, image, out)
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA GPU is usable on this machine" in err
    assert "use --device cpu, or --device auto" in err and "Traceback" not in err
    assert not out.exists()


def test_unknown_device_name(clip_dir, image, capsys):
    assert main(["score", str(image), "--prompt", "x", "--model", str(clip_dir),
                 "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a device; use auto, cpu, cuda" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2. output folders

@pytest.mark.parametrize("command", ["eval-reward", "eval-t2i"])
def test_eval_out_that_is_a_file_fails_before_any_work(
        command, clip_dir, dataset, t2i_run, image, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    # the model does not exist: a run that got past the check would fail on it instead
    argv = _command(command, "missing-model", dataset, t2i_run, image, blocker)
    assert main(argv) == 2
    assert f"--out {blocker} is an existing file, not a folder" in capsys.readouterr().err
    assert main(_command(command, "missing-model", dataset, t2i_run, image,
                         blocker / "sub")) == 2
    assert f"{blocker} is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_eval_out_in_a_folder_without_write_permission(clip_dir, dataset, capsys):
    # /proc/self is read-only even for root, so this holds whoever runs the tests
    out = "/proc/self/science_t2i_eval"
    assert main(["eval-reward", "--dataset", str(dataset), "--model", "missing-model",
                 "--out", out]) == 2
    assert f"--out {out} is not writable: no permission to write in /proc/self" in \
        capsys.readouterr().err


UNCREATABLE = "/proc/science_t2i_no_such/run"   # no one can create entries in /proc


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("command", ["sft", "stage2", "train-sciscore", "eval-reward",
                                     "eval-t2i"])
def test_output_folder_that_cannot_be_created_is_one_line(
        command, clip_dir, dataset, t2i_run, image, tmp_path, capsys):
    """Root may write anywhere by its permission bits, yet /proc takes no new folder: the
    check makes (and removes) the first missing folder instead of trusting os.access."""
    argv = _command(command, clip_dir, dataset, t2i_run, image, UNCREATABLE) \
        if command.startswith("eval") else _trainer_args(command, tmp_path, UNCREATABLE)
    assert main(argv) == 2
    err = capsys.readouterr().err
    setting = "--out" if command.startswith("eval") else "output_dir"
    assert err.startswith(f"error: {setting} {UNCREATABLE} ")
    assert "cannot be written" in err or "not writable" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_output_folder_check_leaves_nothing_behind(tmp_path):
    from science_t2i.training.core.preflight import check_output_dir
    target = tmp_path / "a" / "b" / "c"
    assert check_output_dir(target, "output_dir") == target
    assert list(tmp_path.iterdir()) == []
    assert check_output_dir(tmp_path, "output_dir") == tmp_path and list(tmp_path.iterdir()) == []


def test_flux_folder_with_pickled_transformer_is_refused_up_front(tmp_path, capsys):
    """Pickle files can run code when loaded: a FLUX folder whose transformer weights are
    only a .bin is a one-line error before any loading, not a library traceback."""
    from safetensors.torch import load_file
    from tiny_flux import build_tiny_flux_pipeline
    flux = tmp_path / "flux"
    build_tiny_flux_pipeline(flux)
    (weights,) = (flux / "transformer").glob("*.safetensors")
    torch.save(load_file(weights), flux / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    argv = ["sft", f"model.path={flux}", f"output_dir={tmp_path / 'run'}",
            f"data.path={tmp_path / 'data'}", "train.mixed_precision=fp32"]
    capsys.readouterr()   # the builder's progress bars
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "transformer holds its weights only as pickle files (diffusion_pytorch_model.bin)" \
        in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["sft", "dpo", "train-sciscore"])
def test_trainer_output_dir_that_is_a_file_fails_before_any_work(command, tmp_path, capsys):
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    assert main(_trainer_args(command, tmp_path, blocker)) == 2
    err = capsys.readouterr().err
    assert f"output_dir {blocker} is an existing file, not a folder" in err
    assert blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------- 3. full disk

def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_writing_eval_results(clip_dir, dataset, tmp_path, monkeypatch,
                                              capsys):
    monkeypatch.setattr(pathlib.Path, "write_bytes", _disk_full)
    out = tmp_path / "out"
    assert main(["eval-reward", "--dataset", str(dataset), "--model", str(clip_dir),
                 "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full (no space left on device) while writing "
                          f"{out / 'reward_accuracy.json'}")
    assert f"free on the disk holding {out}" in err and "point --out at another disk" in err
    assert list(out.iterdir()) == []   # no half-written or temporary file left


def test_full_disk_while_training(tmp_path, monkeypatch, capsys):
    from science_t2i.nodes.core import files
    clip = build_tiny_clip(tmp_path / "clip", image_size=32, seed=0)
    data = write_science_dataset(tmp_path / "data", 4, seed=1, images_per_side=1)
    monkeypatch.setattr(files, "write_bytes_atomic", _disk_full)
    out = tmp_path / "run"
    assert main(["train-sciscore", f"data.path={data}", "data.split=", "data.eval_fraction=0.5",
                 f"model.init={clip}", f"output_dir={out}", "train.max_steps=1",
                 "train.batch_size=2", "train.micro_batch_size=2", "log.progress=false",
                 "data.num_workers=1"]) == 2
    err = capsys.readouterr().err
    assert f"the disk is full (no space left on device) while writing {out}" in err
    assert "point output_dir at another disk" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- 4. optional packages

def test_eval_without_matplotlib_writes_the_results_and_skips_only_the_chart(
        clip_dir, dataset, tmp_path, monkeypatch, capsys, caplog):
    _without(monkeypatch, "matplotlib")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert main(["eval-reward", "--dataset", str(dataset), "--model", str(clip_dir),
                     "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["reward_accuracy.json", "reward_accuracy.md"]
    assert json.loads((out / "reward_accuracy.json").read_text())["records"] == 2
    assert "pip install matplotlib" in caplog.text and "without the per-task chart" in caplog.text
    assert "reward_accuracy_per_task.png" not in capsys.readouterr().out


@pytest.mark.parametrize("package,command", [("accelerate", "train-sciscore"),
                                             ("peft", "sft")])
def test_trainer_without_its_packages_names_the_pip_command(package, command, tmp_path,
                                                            monkeypatch, capsys):
    _without(monkeypatch, package)
    assert main(_trainer_args(command, tmp_path, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"needs {package}, which cannot be imported" in err
    assert 'pip install "comfyui-science-t2i[training]"' in err


def test_trainer_plots_without_matplotlib_are_refused_up_front(tmp_path, monkeypatch, capsys):
    _without(monkeypatch, "matplotlib")
    assert main(_trainer_args("train-sciscore", tmp_path, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "log.plot=true (the training curves) needs matplotlib" in err
    assert "or set log.plot=false" in err


# ----------------------------------------------------------------------------- 5. deep JSON

@pytest.mark.parametrize("suffix", [".json", ".yaml", ".toml"])
def test_config_nested_too_deeply(suffix, tmp_path, capsys):
    path = tmp_path / f"c{suffix}"
    path.write_text(("a = " if suffix == ".toml" else "") + "[" * DEEP + "]" * DEEP)
    assert main(["sft", "--config", str(path)]) == 2
    assert f"config file {path} is nested too deeply to read" in capsys.readouterr().err


def test_datasets_nested_too_deeply(tmp_path, capsys):
    deep = _deep_json(tmp_path / "deep.json")
    assert main(["eval-reward", "--dataset", str(deep), "--out", str(tmp_path / "o")]) == 2
    assert f"{deep} is nested too deeply to read" in capsys.readouterr().err
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"implicit_prompt": "p"}\n' + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(ScienceT2IError, match=f"{lines} line 2 is nested too deeply"):
        load_records(lines)


def test_rollout_prompts_and_run_metadata_nested_too_deeply(t2i_run, tmp_path, capsys):
    deep = _deep_json(tmp_path / "prompts.json")
    assert main(["dpo", f"rollout.prompts={deep}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert f"rollout prompt file {deep} is nested too deeply" in capsys.readouterr().err
    run = tmp_path / "run"
    for kind in ("ip", "ep", "sp"):
        (run / kind).mkdir(parents=True)
    (run / "metadata.jsonl").write_text("[" * DEEP + "]" * DEEP + "\n")
    assert main(["eval-t2i", str(run), "--out", str(tmp_path / "o")]) == 2
    assert f"{run / 'metadata.jsonl'} line 1 is nested too deeply" in capsys.readouterr().err


def test_workflow_nested_too_deeply(tmp_path, capsys):
    deep = _deep_json(tmp_path / "graph.json")
    assert main(["validate-workflow", str(deep)]) == 1
    assert f"workflow file {deep} is nested too deeply" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 6. closed pipe

def test_output_piped_into_a_reader_that_closes_early(clip_dir, image):
    proc = subprocess.Popen(
        [sys.executable, "-m", "science_t2i.training.cli", "score", str(image), str(image),
         "--prompt", "an apple", "--model", str(clip_dir), "--device", "cpu", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    proc.stdout.close()   # the reader is gone before the first line is written (`| head -0`)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == EXIT_PIPE_CLOSED, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert "Exception ignored" not in err


# ----------------------------------------------------------------------------- 7. overrides

def test_overrides_on_both_sides_of_resume_are_all_applied(capsys):
    argv = ["sft", "--print-config", "train.max_steps=7", "--resume", "train.batch_size=3",
            "optim.lr=1e-4", "--config", "c.yaml", "train.max_steps=9"]
    args = parse_args(build_parser(), argv)
    assert args.resume and args.config == "c.yaml"
    assert args.overrides == ["train.max_steps=7", "train.batch_size=3", "optim.lr=1e-4",
                              "train.max_steps=9"]
    assert main(["sft", "--print-config", "train.max_steps=7", "--resume",
                 "train.batch_size=3", "train.max_steps=9"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps: 9" in printed and "batch_size: 3" in printed   # the later one wins
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--resume", "train.batch_size=3", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 8. dataset errors

def test_broken_jsonl_line_is_reported_by_its_own_line_number(tmp_path, capsys):
    path = tmp_path / "data.jsonl"
    path.write_text('{"implicit_prompt": "a"}\n\n{"implicit_prompt": "b"}\n'
                    '{"implicit_prompt": "c",, }\n')
    assert main(["eval-reward", "--dataset", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{path} line 4 is not valid JSON (Expecting property name enclosed in double " \
           "quotes at column 25)" in err
    path.write_text('{"implicit_prompt": "a"}\n[1, 2]\n')
    with pytest.raises(ScienceT2IError, match="line 2 holds a list, not a record object"):
        load_records(path)


@pytest.mark.parametrize("value", [[], "", [""]])
def test_empty_required_field_is_reported_as_empty_not_missing(value, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"implicit_prompt": "p", "explicit_image": value}) + "\n")
    with pytest.raises(ScienceT2IError) as exc:
        load_records(path)
    assert f"record 0: required field 'explicit_image' is empty ({value!r})" in str(exc.value)
    assert "missing" not in str(exc.value)
    path.write_text(json.dumps({"implicit_prompt": "p"}) + "\n")
    with pytest.raises(ScienceT2IError, match="record 0 is missing the required field "
                                              "'explicit_image' \\(has: \\['implicit_prompt'\\]"):
        load_records(path)


# ----------------------------------------------------------------------------- 9. rollout prompts

def test_rollout_prompts_without_object(tmp_path, capsys, caplog):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "ice in the sun", "object": "ice"},
                                {"prompt": "a glass of water"}, {"prompt": "a candle"}]))
    # masks on (the default): refused before any model is loaded
    assert main(["dpo", f"rollout.prompts={path}", f"output_dir={tmp_path / 'o'}",
                 "model.path=/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert f'{path}: 2 of 3 entries have no "object" (entries 1, 2)' in err
    assert "or set mask.enabled=false" in err
    # masks off: the subject is not used, so the prompts load, saying so
    with caplog.at_level(logging.INFO, logger="science_t2i"):
        prompts = load_rollout_prompts(path, masks=False)
    assert [p.subject for p in prompts] == ["ice", "", ""]
    assert '2 of 3 entries have no "object"; not needed with mask.enabled=false' in caplog.text


# ----------------------------------------------------------------------------- 10. progress bars

def test_progress_false_silences_every_bar_of_a_run(tmp_path, monkeypatch, capfd, request):
    import transformers.utils.logging as hf_logging
    monkeypatch.delenv("SCIENCE_T2I_NO_PROGRESS", raising=False)
    # start from bars on, whatever an earlier test left, so "restored" below means something
    if not hf_logging.is_progress_bar_enabled():
        hf_logging.enable_progress_bar()
        request.addfinalizer(hf_logging.disable_progress_bar)   # put back as found
    clip = build_tiny_clip(tmp_path / "clip", image_size=32, seed=0)
    data = write_science_dataset(tmp_path / "data", 4, seed=1, images_per_side=1)
    capfd.readouterr()
    assert main(["train-sciscore", f"data.path={data}", "data.split=",
                 "data.eval_fraction=0.5", f"model.init={clip}",
                 f"output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.batch_size=2",
                 "train.micro_batch_size=2", "data.num_workers=1", "log.progress=false",
                 "log.plot=false", "eval.every=1"]) == 0
    err = capfd.readouterr().err
    # this run loads (transformers) and saves (the best model) weights, and evaluates
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled()   # restored after the run


def test_no_progress_environment_silences_library_bars(clip_dir, image, monkeypatch, capfd):
    monkeypatch.setenv("SCIENCE_T2I_NO_PROGRESS", "1")
    capfd.readouterr()
    assert main(["score", str(image), "--prompt", "an apple", "--model", str(clip_dir),
                 "--device", "cpu"]) == 0
    captured = capfd.readouterr()
    assert "an apple" in captured.out
    assert "%|" not in captured.err, captured.err


@pytest.mark.parametrize("command", ["sft", "dpo", "train-sciscore"])
def test_a_nan_learning_rate_is_a_one_line_error(command, capsys):
    from science_t2i.training.cli import main
    assert main([command, "--print-config", "optim.lr=nan"]) != 0
    err = capsys.readouterr().err
    assert "optim.lr must be > 0; got nan." in err and "Traceback" not in err


def test_optional_kernel_fetch_warning_is_not_shown(caplog):
    """bitsandbytes (when installed) warns at import, on CPUs with AVX512-BF16, that it could
    not fetch an optional kernel from the Hub: the commands drop that one message."""
    assert main(["sft", "--print-config"]) == 0
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        noisy.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "offline")
        noisy.warning("an unrelated warning")
    assert [r.getMessage() for r in caplog.records] == ["an unrelated warning"]


"""Train (or extend) SciScore: the paper's three-term preference loss on Science-T2I records.

One optimizer step = ``train.batch_size`` samples over all processes, split into
micro-batches of ``train.micro_batch_size`` per process and accumulated; the loop, the
checkpoints and the schedule are the trainer core's (``core/trainer.py``). The sample stream is a
function of the sample number, so a run resumed from a checkpoint continues exactly as if it
had never stopped, and N processes train on what one process would. Every ``eval.every``
steps the model is scored on the held-out split with the paper's accuracy protocol (the same
code as ``science-t2i eval-reward``); the best model so far is written as a SciScore folder
in the release layout, which the SciScore Loader node opens directly.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ...nodes.core import atomic_directory, recover_directory, write_json_atomic
from ...nodes.errors import ScienceT2IError
from ..core.config import config_to_dict
from ..core.trainer import Trainer, run_scope
from .config import ModelConfig, SciScoreTrainConfig, check_config
from .data import (TRAIN_FIELDS, ImageSpec, SampleStream, SciScoreBatch, check_records,
                   split_held_out)
from .loss import sciscore_loss

BEST_DIR = "best"
FINAL_DIR = "final"             # save_final=true
EVAL_FILE = "sciscore_eval.json"  # written inside the best folder: the scores behind its pick
PLOT_KEYS = ("loss", "train_accuracy", "eval_accuracy", "lr")


# ----------------------------------------------------------------------------- model

class DualEncoder(torch.nn.Module):
    """CLIP's two towers behind one forward, so DDP sees every trainable parameter used."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text = _projected(self.clip.get_text_features(input_ids=input_ids,
                                                      attention_mask=attention_mask))
        image = _projected(self.clip.get_image_features(pixel_values=pixel_values))
        return text, image, self.clip.logit_scale


def _projected(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projection; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def batch_loss(model: torch.nn.Module, batch: SciScoreBatch, lambda_: float):
    text, image, logit_scale = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    ip, ep, sp = text.chunk(3)
    i_exp, i_sup = image.chunk(2)
    return sciscore_loss(ip, ep, sp, i_exp, i_sup, logit_scale, lambda_=lambda_)


def set_trainable(clip: torch.nn.Module, cfg: ModelConfig) -> list[torch.nn.Parameter]:
    clip.requires_grad_(True)
    if cfg.freeze_text_tower:
        clip.text_model.requires_grad_(False)
        clip.text_projection.requires_grad_(False)
    if cfg.freeze_vision_tower:
        clip.vision_model.requires_grad_(False)
        clip.visual_projection.requires_grad_(False)
    if cfg.freeze_logit_scale:
        clip.logit_scale.requires_grad_(False)
    return [p for p in clip.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- saving

def save_sciscore_folder(clip: torch.nn.Module, tokenizer: Any, image_cfg: dict[str, Any],
                         target: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a SciScore folder in the release layout (config.json, model.safetensors,
    tokenizer files, preprocessor_config.json), atomically: into a temporary folder beside
    ``target``, then swapped with it in one step (Linux, macOS), so a kill never leaves a
    half-written best model nor a moment without one (elsewhere a kill between the two
    renames is undone when the trainer starts again; ``nodes.files.commit_directory``)."""
    with atomic_directory(target) as tmp:
        clip.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / "preprocessor_config.json", _preprocessor_json(image_cfg))
        if extra is not None:
            write_json_atomic(tmp / EVAL_FILE, extra)
    return target


def _preprocessor_json(image_cfg: dict[str, Any]) -> dict[str, Any]:
    raw = dict(image_cfg.get("raw") or {})
    if raw:
        return raw
    return {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
            "do_resize": True, "size": {"shortest_edge": int(image_cfg["size"])},
            "resample": 3, "do_center_crop": True,
            "crop_size": {"height": int(image_cfg["crop_size"]),
                          "width": int(image_cfg["crop_size"])},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(image_cfg["image_mean"]),
            "image_std": list(image_cfg["image_std"]), "do_convert_rgb": True}


# ----------------------------------------------------------------------------- data

def _split(name: str) -> str | None:
    return name or None


def load_splits(cfg: SciScoreTrainConfig) -> tuple[list, list]:
    """(training records, held-out records), both checked."""
    from ..core.datasets import load_records
    d = cfg.data
    train = load_records(d.path, _split(d.split), require=TRAIN_FIELDS)
    if d.eval_fraction > 0:
        if d.eval_path:
            raise ScienceT2IError("set either data.eval_path (a separate held-out split) or "
                                  "data.eval_fraction (hold out part of the training split), "
                                  "not both.")
        train, held = split_held_out(train, d.eval_fraction, cfg.train.seed)
    else:
        held = load_records(d.eval_path or d.path, _split(d.eval_split),
                            require=("implicit_prompt", "explicit_image", "superficial_image"))
    if d.eval_limit > 0:
        held = held[:d.eval_limit]
    check_records(train, "training")
    check_records(held, "held-out", need_all=False)
    return train, held


# ----------------------------------------------------------------------------- evaluation

def evaluate_held_out(clip: torch.nn.Module, tokenizer: Any, image_cfg: dict[str, Any],
                      records: list, device: torch.device, batch_size: int) -> dict[str, Any]:
    """The paper's reward accuracy of the current weights on the held-out records."""
    from ..eval.science_t2i import reward_accuracy
    scorer = training_scorer(clip, tokenizer, image_cfg, device, batch_size)
    return reward_accuracy(records, scorer, batch_records=max(1, batch_size // 2))


def training_scorer(clip: torch.nn.Module, tokenizer: Any, image_cfg: dict[str, Any],
                    device: torch.device, batch_size: int) -> Any:
    """The SciScore scorer (the Loader node's scoring code) around the weights being trained.

    Built fresh for every evaluation, so no text embedding cached before the last update is
    reused.
    """
    from ...nodes.sciscore import SciScoreModel
    return SciScoreModel.from_clip(clip, tokenizer, image_cfg, name="training", device=device,
                                   batch_size=batch_size)


# ----------------------------------------------------------------------------- the run

@dataclass
class TrainResult:
    output_dir: Path
    steps_done: int
    best_dir: Path | None
    best_step: int
    best_accuracy: float
    history: list[dict[str, Any]]


class SciScoreTrainer(Trainer):
    """Builds everything from a :class:`SciScoreTrainConfig`; ``run()`` trains to
    ``train.max_steps``, evaluating every ``eval.every`` steps and keeping the best model.

    Optimizer step t takes the samples t * batch_size ... (t + 1) * batch_size - 1 of the
    stream; micro-batch k of process r holds ``micro_batch_size`` of them at
    (k * processes + r) * micro_batch_size, so the step's samples do not depend on the number
    of processes and the gradients (summed per micro-batch, averaged over accumulation and
    processes) are those of one process accumulating them all.
    """

    name = "sciscore"
    may_change_on_resume = ("output_dir", "save_final", "train.max_steps", "eval",
                            "checkpoint", "log", "data.num_workers", "data.eval_path",
                            "data.eval_split", "data.eval_limit")
    plot_keys = PLOT_KEYS
    plot_file = "curves.png"

    def setup(self) -> "SciScoreTrainer":
        from ...nodes.sciscore import load_clip_directory, resolve_source
        cfg = self.cfg
        check_config(cfg)
        self.start()  # a resume that cannot work fails before the data and model are loaded
        if self.is_main:  # a kill while best/ was replaced: restore it, drop the spare copy
            for name in (BEST_DIR, FINAL_DIR):
                recover_directory(self.output_dir / name)
        self.accum = check_config(cfg, self.num_processes)
        self.train_records, self.held_records = load_splits(cfg)
        self.seed_everything()
        clip, self.tokenizer, self.image_cfg = load_clip_directory(
            resolve_source(cfg.model.init), dtype=torch.float32)
        clip.train()
        params = set_trainable(clip, cfg.model)
        if cfg.train.gradient_checkpointing:
            clip.gradient_checkpointing_enable()
        self.prepare(DualEncoder(clip), params, cfg.train.max_steps)
        self.clip = self.unwrapped.clip
        self.best_step, self.best_accuracy = -1, -1.0
        self.restore()
        self.stream = SampleStream(self.train_records, self.tokenizer,
                                   ImageSpec.from_image_config(self.image_cfg,
                                                               cfg.data.preprocess),
                                   seed=cfg.train.seed, augment=cfg.data.augment,
                                   num_workers=cfg.data.num_workers)
        return self

    # ---------------------------------------------------------------- checkpoints
    def trainer_state(self) -> dict[str, Any]:
        return {"model": self.clip.state_dict(), "best_step": self.best_step,
                "best_accuracy": self.best_accuracy}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.clip.load_state_dict(state["model"])
        self.best_step = int(state["best_step"])
        self.best_accuracy = float(state["best_accuracy"])

    # ---------------------------------------------------------------- data
    def sample_numbers(self, step: int, micro: int) -> list[int]:
        m = self.cfg.train.micro_batch_size
        base = step * self.cfg.train.batch_size + (micro * self.num_processes + self.rank) * m
        return list(range(base, base + m))

    def _micro_batches(self, pool: ThreadPoolExecutor) -> Iterator[SciScoreBatch]:
        """This process's micro-batches from the current step to the last, each loading in
        ``pool`` while the one before it trains."""
        keys = [(t, i) for t in range(self.step, self.cfg.train.max_steps)
                for i in range(self.accum)]
        pending = None
        for key in keys:
            upcoming = pool.submit(self.stream.batch, self.sample_numbers(*key))
            if pending is not None:
                yield pending.result().to(self.device)
            pending = upcoming
        if pending is not None:
            yield pending.result().to(self.device)

    # ---------------------------------------------------------------- loop
    def train_step(self) -> dict[str, Any]:
        sums: dict[str, float] = {}
        for micro in range(self.accum):
            batch = next(self._batches)
            with self.accumulating(last=micro == self.accum - 1):
                parts = batch_loss(self.model, batch, self.cfg.loss.lambda_)
                # summed over the micro-batch (as the reference); averaged over accumulation;
                # times W for process_loss=sum, undoing DDP's average over processes
                scale = self.num_processes if self.cfg.train.process_loss == "sum" else 1
                self.accelerator.backward(parts.loss * scale / self.accum)
            for k, v in parts.metrics().items():
                sums[k] = sums.get(k, 0.0) + v / self.accum
        out = self.optimizer_step()
        metrics = self.mean_across(sums)
        metrics["logit_scale"] = float(self.clip.logit_scale.detach().exp())
        return self.step_metrics(out, **metrics)

    def after_step(self) -> None:
        if self.step % self.cfg.eval.every == 0 or self.step == self.cfg.train.max_steps:
            self.evaluate()

    def evaluate(self) -> None:
        """Held-out accuracy (main process; the others wait); a better model replaces
        ``best/``. Only the main process's best step and accuracy are kept (checkpoints)."""
        if self.is_main:
            cfg, out = self.cfg, self.output_dir
            was_training = self.clip.training
            self.clip.eval()
            with torch.no_grad():
                result = evaluate_held_out(self.clip, self.tokenizer, self.image_cfg,
                                           self.held_records, self.device,
                                           cfg.eval.batch_size)
            self.clip.train(was_training)
            acc = float(result["overall"]["accuracy"])
            self.log(self.step, eval_accuracy=acc, eval_records=len(self.held_records),
                     eval_by_task={k: v["accuracy"] for k, v in result["by_task"].items()})
            if acc > self.best_accuracy:
                self.best_accuracy, self.best_step = acc, self.step
                save_sciscore_folder(self.clip, self.tokenizer, self.image_cfg, out / BEST_DIR,
                                     extra={"step": self.step, **_plain_eval(result)})
        self.accelerator.wait_for_everyone()

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``train.max_steps``; ``stop_after`` ends this call after that many
        optimizer steps, as an interruption would (a checkpoint is saved first)."""
        cfg, out = self.cfg, self.output_dir
        self.begin_run()
        if self.step == 0 and cfg.eval.at_start:
            self.evaluate()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sciscore-prefetch")
        self._batches = self._micro_batches(pool)
        try:
            self.run_steps(cfg.train.max_steps, stop_after)
        finally:
            self._batches.close()
            pool.shutdown(wait=True, cancel_futures=True)
            self.stream.close()
        if self.is_main:
            if self.step == cfg.train.max_steps and cfg.save_final:
                save_sciscore_folder(self.clip, self.tokenizer, self.image_cfg, out / FINAL_DIR)
            self.plot()
        self.end_run()
        return TrainResult(output_dir=out, steps_done=self.step,
                           best_dir=(out / BEST_DIR) if (out / BEST_DIR).is_dir() else None,
                           best_step=self.best_step, best_accuracy=self.best_accuracy,
                           history=self.run_log.records())


def train_sciscore(cfg: SciScoreTrainConfig, resume: bool = False, *,
                   stop_after: int | None = None) -> TrainResult:
    """Train as configured; with ``resume``, continue from the latest checkpoint in
    ``output_dir``. ``stop_after`` ends this call after that many optimizer steps, as an
    interruption would (a checkpoint is saved first)."""
    with run_scope(cfg):
        return SciScoreTrainer(cfg, resume=resume).setup().run(stop_after)


def _plain_eval(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluation result as JSON (tensors and numbers as plain floats)."""
    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "__dataclass_fields__"):
            return plain(config_to_dict(v))
        return v
    return plain(result)

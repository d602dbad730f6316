"""The trainer core: what the SFT, stage-2 and SciScore trainers share, in one place.

- processes and precision: one accelerate ``Accelerator`` (device, mixed precision, the
  process group of ``accelerate launch``); gradients of a step are accumulated locally under
  ``no_sync`` and all-reduced once by DDP on its last micro-batch;
- seeding through ``accelerate.utils.set_seed``; every random draw of the data comes from a
  generator seeded by (seed, sample index), so N processes draw what one would;
- checkpoints: atomic, pickle-free, keep-last, with the RNG state of *every* process and a
  settings digest that a resume must match (and the same process count);
- the optimizer (AdamW, or 8-bit AdamW on CUDA) and the learning-rate schedule from
  ``diffusers.optimization.get_scheduler``;
- logging: ``log.jsonl`` always, accelerate's trackers (``log.trackers``) when asked, a curve
  PNG, and a progress bar with rate and ETA on the main process.

A trainer subclasses :class:`Trainer`, says what is trained (``prepare``), what one step
does, and what its checkpoints hold beyond the core's (``trainer_state`` /
``load_trainer_state``, ``process_state`` / ``load_process_state``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ...nodes.errors import ScienceT2IError
from .accelerator import WEIGHT_DTYPES, make_accelerator
from .checkpoints import CheckpointManager, capture_rng_state, restore_rng_state
from .config import config_to_dict, describe_keys, flat_config, resume_digest, save_config
from .optim import make_optimizer, make_scheduler
from .preflight import check_output_dir, require_modules, writing
from .run_log import RunLog

log = logging.getLogger(__name__)


@contextlib.contextmanager
def run_scope(cfg: Any) -> Iterator[None]:
    """What a whole run (setup included) happens in: no progress bar at all, the libraries'
    (model loading and saving) included, when ``log.progress`` is false or
    SCIENCE_T2I_NO_PROGRESS=1; and a full disk reported naming ``output_dir``."""
    from ...nodes import _comfy
    quiet = not (cfg.log.progress and _comfy.progress_enabled())
    with _comfy.quiet_progress(quiet, ("huggingface_hub", "transformers", "diffusers")), \
            writing(Path(cfg.output_dir).expanduser(), "output_dir"):
        yield


# ----------------------------------------------------------------------------- the core

class Trainer:
    """Base of every trainer. ``cfg`` has ``output_dir`` and the shared sections ``train``
    (seed, mixed_precision), ``optim``, ``checkpoint`` and ``log``."""

    name = "train"                                   # progress label, tracker project
    # what a run imports beyond the node install (the training extra)
    needs: tuple[str, ...] = ("accelerate", "diffusers")
    may_change_on_resume: tuple[str, ...] = ("output_dir", "checkpoint", "log")
    # keys later versions added, with their defaults: left out of the settings digest while
    # at the default, so checkpoints written before them still resume
    added_keys: dict[str, Any] = {}
    plot_keys: tuple[str, ...] = ("loss", "lr")
    plot_file = "loss.png"

    def __init__(self, cfg: Any, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.output_dir = Path(cfg.output_dir).expanduser()
        self.step = 0
        self._resume: tuple[Path, dict, dict] | None = None
        self._allreduce_bytes = 0

    # ---------------------------------------------------------------- start
    def start(self) -> None:
        """Processes, precision and trackers; the resume checkpoint, checked before anything
        heavy is loaded."""
        cfg = self.cfg
        self.preflight()
        self.accelerator, self.precision = make_accelerator(
            cfg.train.mixed_precision, cfg.log.trackers, self.output_dir)
        self.device = self.accelerator.device
        self.weight_dtype = WEIGHT_DTYPES.get(self.precision, torch.float32)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints",
                                             cfg.checkpoint.keep_last)
        self.run_log = RunLog(self.output_dir)
        if self.resume:
            path, state = self.checkpoints.load_for_resume(
                self.resume_digest(), describe_keys(self.cfg, self.may_change_on_resume),
                self.num_processes)
            self._resume = (path, state, self.checkpoints.load_part(path, self.rank))

    def preflight(self) -> None:
        """Refuse, before any work, a run that would fail later for want of a package or of
        a writable ``output_dir``."""
        require_modules(self.needs, f"the {self.name} trainer")
        if self.cfg.log.plot:
            require_modules(["matplotlib"], "log.plot=true (the training curves)",
                            ", or set log.plot=false")
        check_output_dir(self.output_dir, "output_dir")

    def seed_everything(self) -> None:
        """Seed Python, numpy and torch (CPU and CUDA) with ``train.seed``, the same on every
        process: call it right before drawing the trained weights' initial values."""
        from accelerate.utils import set_seed
        set_seed(self.cfg.train.seed)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def resume_digest(self) -> str:
        return resume_digest(self.cfg, self.may_change_on_resume, self.added_keys)

    # ---------------------------------------------------------------- model
    def prepare(self, model: torch.nn.Module, params: list[torch.nn.Parameter],
                total_steps: int) -> torch.nn.Module:
        """Optimizer and schedule for ``params``; the model wrapped for the processes (DDP
        when there are several). Returns the wrapped model, also kept as ``self.model``."""
        self.params = params
        optimizer = make_optimizer(params, self.cfg.optim, self.device)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # found once: unwrap_model walks every module (over 1 ms a call for FLUX)
        self._unwrapped = self.accelerator.unwrap_model(self.model)
        self.scheduler = make_scheduler(self.optimizer, self.cfg.optim, total_steps)
        self._count_allreduce(self.model)
        return self.model

    def _count_allreduce(self, model: torch.nn.Module) -> None:
        """Count the gradient bytes DDP all-reduces (logged per optimizer step)."""
        from torch.nn.parallel import DistributedDataParallel
        if not isinstance(model, DistributedDataParallel):
            return
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_allreduce(state, bucket):  # no annotations: DDP checks them literally
            buf = bucket.buffer()
            self._allreduce_bytes += buf.numel() * buf.element_size()
            return allreduce_hook(state, bucket)
        model.register_comm_hook(None, counting_allreduce)

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The trained model itself (without the processes' wrapper)."""
        return self._unwrapped

    # ---------------------------------------------------------------- one step
    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Context for the forward and backward of one micro-batch: gradients stay local
        (``no_sync``) except on the step's last, where DDP all-reduces them once."""
        if last:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.model)

    def optimizer_step(self) -> dict[str, Any]:
        """Clip, step the optimizer and the schedule, zero the gradients; the step's gradient
        norm (a tensor: reading it is a device sync), lr and all-reduced bytes."""
        out: dict[str, Any] = {"lr": float(self.scheduler.get_last_lr()[0])}
        if self.cfg.optim.max_grad_norm > 0:
            out["grad_norm"] = self.accelerator.clip_grad_norm_(self.params,
                                                                self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.num_processes > 1:
            out["allreduce_bytes"] = self._allreduce_bytes
            self._allreduce_bytes = 0
        return out

    def sum_across(self, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Sum each number over the processes: one all-reduce, one device-to-host copy."""
        names = list(values)
        stacked = torch.stack([torch.as_tensor(values[k]).detach().float().reshape(())
                               .to(self.device) for k in names])
        if self.num_processes > 1:
            stacked = self.accelerator.reduce(stacked, reduction="sum")
        return dict(zip(names, stacked.tolist()))

    def mean_across(self, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Average each number over the processes (each process's value weighs the same)."""
        n = self.num_processes
        return self.sum_across({k: torch.as_tensor(v).detach().float() / n
                                for k, v in values.items()})

    def step_metrics(self, step_out: dict[str, Any], **metrics: float) -> dict[str, Any]:
        """A step's log line: its metrics, the lr, the gradient norm (the same on every
        process after the all-reduce) and the all-reduced bytes."""
        out = dict(metrics)
        out["lr"] = step_out["lr"]
        if "grad_norm" in step_out:
            out["grad_norm"] = float(step_out["grad_norm"])
        if "allreduce_bytes" in step_out:
            out["allreduce_bytes"] = step_out["allreduce_bytes"]
        return out

    def check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise ScienceT2IError(f"loss became {loss} at step {self.step}; lower optim.lr or "
                                  "keep optim.max_grad_norm > 0.")

    # ---------------------------------------------------------------- the step loop
    def train_step(self) -> dict[str, Any]:
        """One optimizer step; its log line (with "loss")."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Work between a step and its checkpoint (evaluations, samples)."""

    def run_steps(self, max_steps: int, stop_after: int | None = None) -> None:
        """Train to ``max_steps`` (or ``stop_after`` more steps, as an interruption would):
        log every ``log.every`` steps, plot every ``log.plot_every``, checkpoint every
        ``checkpoint.every`` and at the end."""
        from ...nodes import _comfy
        cfg = self.cfg
        stop = max_steps if stop_after is None else min(max_steps, self.step + stop_after)
        bar = self.progress(max_steps, self.name, initial=self.step)
        t_last, since = time.perf_counter(), 0
        try:
            while self.step < stop:
                _comfy.check_interrupt()
                metrics = self.train_step()
                self.check_finite(metrics["loss"])
                since += 1
                bar.update(1)
                if self.step % cfg.log.every == 0:
                    now = time.perf_counter()
                    metrics["it_s"] = since / max(now - t_last, 1e-9)
                    t_last, since = now, 0
                    self.log(self.step, **metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                    refresh=False)
                self.after_step()
                if cfg.log.plot and cfg.log.plot_every and self.step % cfg.log.plot_every == 0:
                    self.plot()
                if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0
                        and self.step < stop):
                    self.save_checkpoint()
        finally:
            bar.close()
        self.save_checkpoint()

    # ---------------------------------------------------------------- checkpoints
    def trainer_state(self) -> dict[str, Any]:
        """What a subclass adds to the shared checkpoint state (written by the main process)."""
        return {}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        """Restore what ``trainer_state`` saved (every process reads the shared state)."""

    def process_state(self) -> dict[str, Any]:
        """What this process alone holds; the core adds its RNG states."""
        return {}

    def load_process_state(self, state: dict[str, Any]) -> None:
        """Restore what ``process_state`` saved for this process."""

    def save_checkpoint(self) -> Path | None:
        """Every process writes its part into the staging folder, then the main process adds
        the shared state and renames the folder into place. Returns its path (main process)."""
        acc, ckpts = self.accelerator, self.checkpoints
        staging = ckpts.staging_path(self.step)
        if self.is_main:  # every earlier save ended at a barrier: no process is writing
            ckpts.begin(self.step)
        acc.wait_for_everyone()
        ckpts.write_part(staging, self.rank, {**self.process_state(), "rng": capture_rng_state()})
        acc.wait_for_everyone()
        path = None
        if self.is_main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "resume_digest": self.resume_digest(), "config": config_to_dict(self.cfg),
                     **self.trainer_state()}
            path = ckpts.commit(staging, self.step, state, self.num_processes)
        acc.wait_for_everyone()
        return path

    def restore(self) -> None:
        """Continue from the checkpoint opened by ``start`` (after ``prepare``)."""
        if self._resume is None:
            return
        path, state, part = self._resume
        self._resume = None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.load_trainer_state(state)
        self.load_process_state(part)
        restore_rng_state(part["rng"])
        if self.is_main:
            self.run_log.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- logging
    def begin_run(self) -> None:
        """The resolved config beside the run, a fresh log unless resuming, the trackers."""
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.output_dir / "config.yaml")
            if not self.resume and self.run_log.path.exists():
                self.run_log.path.unlink()  # a new run in an old folder starts a new log
        if self.cfg.log.trackers:
            self.accelerator.init_trackers(self.cfg.log.project or f"science-t2i-{self.name}",
                                           config=flat_config(self.cfg))

    def log(self, step: int, **metrics: Any) -> None:
        """One line of ``log.jsonl`` and the numbers to the trackers (main process)."""
        if not self.is_main:
            return
        entry = self.run_log.log(step, **metrics)
        if self.cfg.log.trackers:
            numbers = {k: v for k, v in entry.items() if k not in ("step", "time")
                       and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(numbers, step=step)

    def progress(self, total: int, desc: str, initial: int = 0, unit: str = "step",
                 leave: bool = True) -> Any:
        """A tqdm bar (rate and ETA) on the main process; a silent one elsewhere."""
        from tqdm.auto import tqdm

        from ...nodes import _comfy
        enabled = self.is_main and self.cfg.log.progress and _comfy.progress_enabled()
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                    disable=not enabled, dynamic_ncols=True)

    def plot(self) -> Path | None:
        if not self.is_main or not self.cfg.log.plot:
            return None
        return self.run_log.plot(self.plot_keys, self.output_dir / self.plot_file)

    def end_run(self) -> None:
        if self.cfg.log.trackers:
            self.accelerator.end_training()
        self.accelerator.wait_for_everyone()

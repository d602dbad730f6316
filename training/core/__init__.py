"""The training core: what every trainer and command shares.

``Trainer`` owns the loop's machinery (processes and precision through accelerate, the
optimizer and schedule, checkpoints, the run log and trackers); a trainer subclass owns its
loss. Configs are dataclass trees (``config``) built from the shared ``sections`` and a
``preset``; ``datasets`` reads Science-T2I records; ``preflight`` refuses, before any work, a
run that would fail for want of a device, a package or a writable folder.
"""
from .checkpoints import CheckpointManager, capture_rng_state, restore_rng_state
from .config import config_to_dict, flat_config, load_config, resume_digest, save_config
from .datasets import ImageRef, ScienceRecord, load_records, read_rows, write_jsonl_dataset
from .presets import PRESETS, Preset, resolve_preset
from .progress import EtaLog
from .run_log import RunLog
from .sections import CheckpointSection, LogSection, OptimSection, RunSection, require_at_least
from .seeds import generator_for, seed_for
from .trainer import Trainer, run_scope

__all__ = ["PRESETS", "CheckpointManager", "CheckpointSection", "EtaLog", "ImageRef",
           "LogSection", "OptimSection", "Preset", "RunLog", "RunSection", "ScienceRecord",
           "Trainer", "capture_rng_state", "config_to_dict", "flat_config", "generator_for",
           "load_config", "load_records", "read_rows", "require_at_least", "resolve_preset",
           "restore_rng_state", "resume_digest", "run_scope", "save_config", "seed_for",
           "write_jsonl_dataset"]

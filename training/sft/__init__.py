"""Stage 1: rectified-flow LoRA fine-tuning (SFT) of FLUX on Science-T2I records
(``science-t2i sft``)."""
from .config import SFTConfig
from .trainer import SFTTrainer, train_sft

__all__ = ["SFTConfig", "SFTTrainer", "train_sft"]

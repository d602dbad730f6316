"""Training SciScore itself: CLIP fine-tuned on (implicit, explicit, superficial) triples with
the paper's two-way loss (``science-t2i train-sciscore``)."""
from .config import SciScoreTrainConfig
from .trainer import SciScoreTrainer, train_sciscore

__all__ = ["SciScoreTrainConfig", "SciScoreTrainer", "train_sciscore"]

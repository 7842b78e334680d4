"""Training loop, LR schedule, checkpoints and metric logs (the coreset schedule is the loader's)."""

from advcoreset.training.checkpoint import load_checkpoint, save_atomic
from advcoreset.training.schedule import lr_at
from advcoreset.training.trainer import Trainer, TrainingError, train

__all__ = ["Trainer", "TrainingError", "load_checkpoint", "lr_at", "save_atomic", "train"]

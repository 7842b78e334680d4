"""Training loop, LR schedule, checkpoints and metric logs (the coreset schedule is the loader's)."""

from advcoreset.checkpoint import load_checkpoint, save_atomic
from advcoreset.training.epoch import TrainingError
from advcoreset.training.schedule import lr_at
from advcoreset.training.trainer import Trainer, train

__all__ = ["Trainer", "TrainingError", "load_checkpoint", "lr_at", "save_atomic", "train"]

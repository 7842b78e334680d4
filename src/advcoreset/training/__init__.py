"""Training loop, LR and coreset schedules, checkpoints and metric logs."""

from advcoreset.training.checkpoint import load_checkpoint, save_atomic
from advcoreset.training.schedule import is_selection_epoch, is_warm, lr_at
from advcoreset.training.trainer import Trainer, TrainingError, train

__all__ = ["Trainer", "TrainingError", "is_selection_epoch", "is_warm", "load_checkpoint", "lr_at",
           "save_atomic", "train"]

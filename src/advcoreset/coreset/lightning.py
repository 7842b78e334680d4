"""PyTorch Lightning: a ``CoresetLoader`` as a module's ``train_dataloader`` and one callback.

    loader = CoresetLoader(train_set, model, "pgd", method="gradmatch", fraction=0.3)
    trainer = lightning.Trainer(max_epochs=10, reload_dataloaders_every_n_epochs=1,
                                callbacks=[CoresetCallback(loader)])

The callback tells the loader which epoch Lightning is in (``set_epoch``, so the warm start and the
re-selection follow Lightning's epoch counter whatever its iterations did) and stores the loader's state
(epoch, coreset, generator) in Lightning's checkpoints, so ``fit(ckpt_path=...)`` resumes the coreset too.
``reload_dataloaders_every_n_epochs=1`` makes Lightning ask ``len(loader)`` again each epoch: a coreset
epoch has fewer batches than a warm one. Needs the ``lightning`` package (``pip install lightning``).
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - exercised only without lightning
    raise ImportError("advcoreset.coreset.lightning needs PyTorch Lightning: pip install lightning "
                      "(torch already installed stays as it is)") from e

from advcoreset.coreset.loader import CoresetLoader


class CoresetCallback(Callback):
    """Keeps a ``CoresetLoader`` on Lightning's epoch counter and in Lightning's checkpoints."""

    def __init__(self, loader: CoresetLoader) -> None:
        if not isinstance(loader, CoresetLoader):
            raise TypeError(f"CoresetCallback needs a CoresetLoader, got {type(loader).__name__}")
        self.loader = loader

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.loader.set_epoch(int(trainer.current_epoch))

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loader.load_state_dict(state_dict)

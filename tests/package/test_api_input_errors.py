"""The Python API's bad inputs: each one an advcoreset error (a ValueError or TypeError subclass) naming the
argument and what to do, raised before any training; before, each was a raw IndexError / RuntimeError from
deep inside or a silent wrong result."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import advcoreset
from advcoreset.config import ConfigError, ConfigTypeError
from advcoreset.coreset import CoresetLoader, select_coreset
from advcoreset.data.datasets import DataError

K = 4


def toy(n: int, seed: int = 0, k: int = K) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 6, 6, generator=g), torch.arange(n) % k)


def mlp(outputs: int = K) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, outputs))


class Items(Dataset):
    """A dataset of explicit (image, label) items and no ``targets``."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


CFG = {"selection": {"method": "full"}, "optim": {"epochs": 1, "batch_size": 8}, "eval": {"pgd_steps": 1},
       "progress": "none", "threads": 1, "device": "cpu"}


def _train(tmp_path, **kw):
    return advcoreset.train({**CFG, "out_dir": str(tmp_path / "run")}, **kw)


def test_a_config_of_the_wrong_kind_is_a_type_error():
    with pytest.raises(ConfigTypeError, match="config must be a Config, a YAML path, a dict.*got int") as e:
        advcoreset.train(123)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("call", ["loader", "select"])
def test_a_model_that_is_not_a_module_is_named(call):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        if call == "loader":
            CoresetLoader(toy(16), None)
        else:
            select_coreset(None, toy(16))


def test_a_model_with_too_few_outputs_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"output.*\(2, 3\).*labels 0\.\.3.*at least\) 4 outputs"):
        _train(tmp_path, model=mlp(3), train_set=toy(32), test_set=toy(8, 1))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_optimiser_over_another_module_is_refused(tmp_path):
    other = mlp()
    with pytest.raises(ConfigError, match="optimizer holds 4 parameter.*not the model's"):
        _train(tmp_path, model=mlp(), train_set=toy(32), test_set=toy(8, 1),
               optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize(("label", "match"), [(-1, "label -1 is negative"), (1.7, "must be n=.*integers")])
def test_labels_that_are_not_class_indices_are_refused(tmp_path, label, match):
    items = [(torch.rand(1, 6, 6), i % K) for i in range(16)]
    items[5] = (items[5][0], label)
    with pytest.raises(DataError, match=match):
        _train(tmp_path, model=mlp(), train_set=Items(items), test_set=toy(8, 1))


def test_an_empty_test_set_is_refused(tmp_path):
    with pytest.raises(DataError, match="the test set is empty"):
        _train(tmp_path, model=mlp(), train_set=toy(32), test_set=Items([]))


def test_pixels_out_of_range_after_the_first_item_are_refused(tmp_path):
    items = [(torch.rand(1, 6, 6), i % K) for i in range(16)]
    items[9] = (items[9][0] * 255, 1)  # the first item is fine; this one is 0-255
    with pytest.raises(DataError, match=r"images must lie in \[0, 1\].*divide by 255"):
        _train(tmp_path, model=mlp(), train_set=Items(items), test_set=toy(8, 1))


def test_images_of_mixed_sizes_are_named(tmp_path):
    items = [(torch.rand(1, 6, 6), i % K) for i in range(16)]
    items[3] = (torch.rand(1, 7, 7), 3)
    with pytest.raises(DataError, match="not all of one size"):
        _train(tmp_path, model=nn.Sequential(nn.AdaptiveAvgPool2d(6), mlp()), train_set=Items(items),
               test_set=toy(8, 1))


def test_a_foreign_loader_state_is_refused_before_anything_changes():
    loader = CoresetLoader(toy(16), mlp(), "pgd", method="random", warm_epochs=0)
    for bad, match in (({}, "needs an 'epoch'"), ({"epoch": -1}, "needs an 'epoch'"),
                       ({"epoch": 1, "coreset": {"indices": torch.tensor([3, 99]), "weights": torch.ones(2)}},
                        "does not fit this loader's 16 examples"),
                       ({"epoch": 1, "generator": torch.zeros(3, dtype=torch.uint8)}, "generator state")):
        with pytest.raises(ValueError, match=match):
            loader.load_state_dict(bad)
        assert loader.epoch == 0


def test_selector_options_with_a_selector_object_are_refused_not_dropped():
    from advcoreset.selection import RandomSelector

    with pytest.raises(ValueError, match=r"\['lam'\] apply to a selector given by name"):
        CoresetLoader(toy(16), mlp(), "standard", method=RandomSelector(0.5), lam=0.1)
    with pytest.raises(ValueError, match=r"\['tol'\] apply to a selector given by name"):
        select_coreset(mlp(), toy(16), "standard", method=RandomSelector(0.5), tol=0.1)

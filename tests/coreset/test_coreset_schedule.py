"""The coreset schedule of ``CoresetLoader``: warm epochs, then a selection every ``interval`` epochs."""

from __future__ import annotations

import torch
from tests_helpers import factory

from advcoreset.coreset import CoresetLoader


def test_coreset_schedule():
    data = [(torch.rand(1, 8, 8), i % 10) for i in range(40)]
    ld = CoresetLoader(data, factory(), method="craig", warm_epochs=2, interval=3)
    assert [ld.is_warm(e) for e in range(6)] == [True, True, False, False, False, False]
    assert [e for e in range(12) if ld.selects_at(e)] == [2, 5, 8, 11]
    full = CoresetLoader(data, factory(), method="full", warm_epochs=2, interval=3)
    assert all(full.is_warm(e) and not full.selects_at(e) for e in range(5))

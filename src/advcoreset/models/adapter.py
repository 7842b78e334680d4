"""Find any classifier's penultimate features and final linear layer, for closed-form selection gradients.

Three conventions, tried in order:

1. advcoreset's :class:`ImageClassifier`: ``features(x)`` and ``head``.
2. timm's: ``forward_features(x)``, ``forward_head(h, pre_logits=True)`` and ``get_classifier()`` (an
   ``nn.Linear``).
3. Any other module: a forward hook on its last ``nn.Linear`` (registration order) records that layer's
   input during one ordinary forward. Construction runs one dry forward on a sample batch and refuses the
   model unless the hooked layer's output *is* the model's output (the logits): a linear followed by
   anything (a softmax, a scaling, a second head) would make the closed-form gradients wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advcoreset.models.base import ImageClassifier


class LastLayerError(ValueError):
    """The model's final linear layer and its input features could not be found; the message says what to
    provide."""


_HOW = ("give the model a final nn.Linear whose output is returned unchanged as the logits, or expose "
        "features(x) -> (B, F) and head (nn.Linear), or timm's forward_head(h, pre_logits=True) and "
        "get_classifier()")


class LastLayer:
    """Penultimate features and the final linear layer of ``model``.

    ``features(x)``: x (B, C, H, W) in [0, 1] -> (B, F); ``linear``: the nn.Linear mapping F -> num_classes
    whose output is the model's logits. ``kind`` names the convention found (classifier, timm, hook).
    """

    def __init__(self, model: nn.Module, linear: nn.Linear, features: Callable[[Tensor], Tensor],
                 kind: str) -> None:
        self.model, self.linear, self._features, self.kind = model, linear, features, kind

    def features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, F) penultimate features, as the model computes them in its current mode."""
        return self._features(x)


def _hooked_features(model: nn.Module, linear: nn.Linear) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        seen: list[Tensor] = []
        handle = linear.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
        try:
            model(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise LastLayerError(f"the final nn.Linear ran {len(seen)} times in one forward; {_HOW}")
        return seen[0].flatten(1)

    return run


def _timm_features(model: nn.Module) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)  # type: ignore[operator]

    return run


def _verify(model: nn.Module, layer: LastLayer, sample: Tensor) -> None:
    """One dry forward in eval mode: the linear applied to the found features must give the logits."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(sample)
            h = layer.features(sample)
            z = layer.linear(h)
    except LastLayerError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the dry run is reported with what to do
        raise LastLayerError(f"a dry forward of {type(model).__name__} on a sample batch of shape "
                             f"{tuple(sample.shape)} failed ({type(e).__name__}: {e}); {_HOW}") from e
    finally:
        model.train(was)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape != z.shape:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise LastLayerError(f"{type(model).__name__} must return (B, num_classes) logits, got {shape}; {_HOW}")
    if not torch.allclose(z.float(), logits.float(), rtol=1e-4, atol=1e-5):
        raise LastLayerError(f"the output of {type(model).__name__}'s last nn.Linear is not its output (something "
                             f"runs after it); {_HOW}")


def last_layer(model: nn.Module, sample: Tensor | None = None) -> LastLayer:
    """The (features, final linear) pair of ``model``.

    Args:
        model: an ImageClassifier, a timm-style model or any module ending in an nn.Linear.
        sample: (B, C, H, W) inputs for the dry-run check (needed for the timm and hook conventions).

    Raises:
        LastLayerError: no convention applies, or the dry run shows the linear's output is not the logits.

    A ``torch.compile``d model is looked through (its ``_orig_mod``): the selection pass runs the module
    itself, eagerly, while training may go on through the compiled wrapper.
    """
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, ImageClassifier):
        return LastLayer(model, model.head, model.features, "classifier")
    layer: LastLayer | None = None
    get_cls = getattr(model, "get_classifier", None)
    if callable(get_cls) and callable(getattr(model, "forward_head", None)) \
            and callable(getattr(model, "forward_features", None)) and isinstance(get_cls(), nn.Linear):
        layer = LastLayer(model, get_cls(), _timm_features(model), "timm")
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise LastLayerError(f"{type(model).__name__} has no nn.Linear layer; {_HOW}")
        layer = LastLayer(model, linears[-1], _hooked_features(model, linears[-1]), "hook")
    if sample is None:
        raise LastLayerError(f"checking {type(model).__name__}'s last layer needs a sample batch (B, C, H, W)")
    _verify(model, layer, sample)
    return layer

"""Neural collapse of any ``nn.Module``, layer by layer: forward hooks on named modules, two streaming passes.

``ncutils.measure(model, loader, layers=[...], num_classes=K)`` returns ``{layer: {metric: value}}`` with every
key of :func:`ncutils.metrics.nc_metrics` plus NCC accuracy and CDNV (:class:`ncutils.stream.StreamingNC`,
definitions in ``docs/notation.md``); :func:`to_frame` turns it into a long table (layer, metric, value).
The module itself is callable: ``ncutils.measure(...)`` is ``ncutils.measure.measure(...)``.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._extras import need
from ._validate import bad_type, bad_value, check_bool, check_int
from .stream import StreamingNC

__all__ = ["FeatureHooks", "measure", "to_frame"]


def _module_names(model: nn.Module, names: Sequence[str], parameter: str) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if not isinstance(name, str):
            raise bad_type(parameter, "module names (strings) from model.named_modules()", name)
        if name not in modules or name == "":
            near = difflib.get_close_matches(name, [m for m in modules if m], n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else \
                f"; its modules are {[m for m in modules if m][:12]}{' …' if len(modules) > 13 else ''}"
            raise ValueError(f"parameter {parameter} must name modules of the model (as in "
                             f"model.named_modules()), got {name!r}{hint}")
        out[name] = modules[name]
    return out


class FeatureHooks:
    """Forward hooks that keep, for every named module, its output as float32 features ``(B, d)`` in ``out``.

    An output of shape ``(B, d)`` is kept as it is, under the module's name; a feature map ``(B, C, …)`` is kept
    globally average-pooled over the dimensions after C as ``name`` (``pooled``, ``(B, C)``) and/or flattened
    as ``name + "_flat"`` (``flatten``, ``(B, C·H·W)``). The copy is taken in float32 with autocast disabled,
    whatever the precision of the forward pass. ``inputs``: modules whose *input* is kept instead (as
    ``name + ".input"``, flattened), e.g. the classifier. ``remove()`` detaches the hooks.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, pooled: bool = True, flatten: bool = False,
                 inputs: Sequence[str] = ()) -> None:
        check_bool("pooled", pooled)
        check_bool("flatten", flatten)
        if not (pooled or flatten):
            raise ValueError("parameters pooled and flatten must not both be False (no feature would be kept)")
        self.pooled, self.flatten = pooled, flatten
        self.out: dict[str, Tensor] = {}
        self.handles = []
        for name, module in _module_names(model, layers, "layers").items():
            self.handles.append(module.register_forward_hook(self._output_hook(name)))
        for name, module in _module_names(model, inputs, "classifier").items():
            self.handles.append(module.register_forward_pre_hook(self._input_hook(name + ".input")))

    def _keep(self, name: str, x: Any, pool: bool, flat: bool) -> None:
        if isinstance(x, tuple | list) and x:
            x = x[0]
        if not isinstance(x, Tensor) or x.ndim < 2:
            got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"parameter layers: module {name!r} must output a tensor (B, d) or (B, C, …) to be "
                             f"measured, got {got}")
        with torch.autocast(x.device.type, enabled=False):
            x = x.detach().float()
            if x.ndim == 2:
                self.out[name] = x
                return
            if pool:
                self.out[name] = x.mean(tuple(range(2, x.ndim)))
            if flat:
                self.out[name + "_flat"] = x.flatten(1)

    def _output_hook(self, name: str):
        def hook(_m: nn.Module, _inp: Any, x: Any) -> None:
            self._keep(name, x, self.pooled, self.flatten)
        return hook

    def _input_hook(self, name: str):
        def hook(_m: nn.Module, inp: Any) -> None:
            x = inp[0] if isinstance(inp, tuple) else inp
            self._keep(name, x.flatten(1) if isinstance(x, Tensor) and x.ndim > 2 else x, False, True)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _batches(loader: Iterable, parameter: str, device: torch.device) -> Iterable[tuple[Tensor, Tensor]]:
    for i, batch in enumerate(loader):
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise bad_type(parameter, f"an iterable of (inputs, labels) batches (batch {i})", batch)
        x, y = batch[0], batch[1]
        if isinstance(x, Tensor):
            x = x.to(device, non_blocking=True)
        if isinstance(y, Tensor):
            y = y.to(device, non_blocking=True)
        yield x, y


@torch.no_grad()
def measure(model: nn.Module, loader: Iterable, layers: Sequence[str], *, num_classes: int,
            classifier: str | None = None, classifier_reads: str | None = None,
            device: torch.device | str | None = None, test_loader: Iterable | None = None, pooled: bool = True,
            flatten: bool = False, autocast: torch.dtype | None = None, distributed: bool = False,
            on_output: Callable[[Any, Tensor, str], None] | None = None) -> dict[str, dict[str, float]]:
    """Neural collapse (NC1–NC4, NCC accuracy, CDNV; Papyan, Han & Donoho 2020; Galanti et al. 2022) of the
    outputs of ``layers`` of ``model`` over the data of ``loader``: ``{level: {metric: value}}``.

    Parameters
    ----------
    model : any ``nn.Module``; measured in eval mode (its mode is restored afterwards), without gradients.
    loader : an iterable of ``(inputs, labels)`` batches (a ``DataLoader``), iterated twice (pass 1: class
        means; pass 2: within-class statistics); both passes must yield the same samples, in any order.
    layers : module names as in ``model.named_modules()`` (``"layer4"``, ``"features.3"``); outputs ``(B, d)``
        are measured as they are, feature maps ``(B, C, …)`` as ``name`` (global average pool, ``pooled``)
        and/or ``name + "_flat"`` (flattened, ``flatten``).
    num_classes : K; labels are integers in ``[0, K)``.
    classifier : name of the final linear module (``weight (K, d)``, optional ``bias (K,)``): adds NC3, NC4 and
        ``nc3_gram`` for the level it reads — its input, measured as ``"<classifier>.input"``, or the level
        named by ``classifier_reads`` (one of the measured levels, e.g. ``"layer4"`` whose pooled output
        the classifier reads).
    device : where the forward passes and the statistics run; default: the device of the model's parameters.
    test_loader : optional ``(inputs, labels)`` batches: adds ``ncc_accuracy_test`` (and ``nc4_test``) with
        the *training* class means.
    autocast : a dtype (``torch.bfloat16``) to run the forward passes under ``torch.autocast``; the features
        are still copied in float32 with autocast disabled. Default: the model's own precision.
    distributed : sum the statistics over ``torch.distributed`` after each pass (every rank calls ``measure``
        on its shard of the data, e.g. with a ``DistributedSampler``); every rank gets the result of all.
    on_output : called as ``on_output(model_output, labels, split)`` with split ``"train"`` (pass 1) and
        ``"test"``, e.g. to accumulate the loss and accuracy without another pass.
    """
    if not isinstance(model, nn.Module):
        raise bad_type("model", "a torch.nn.Module", model)
    K = check_int("num_classes", num_classes, 2)
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise bad_type("layers", "a list of module names from model.named_modules()", layers)
    if not layers and classifier is None:
        raise bad_value("layers", "a non-empty list of module names (or give a classifier)", layers)
    check_bool("distributed", distributed)
    if autocast is not None and not isinstance(autocast, torch.dtype):
        raise bad_type("autocast", "a torch dtype such as torch.bfloat16, or None", autocast)
    if classifier is not None and not isinstance(classifier, str):
        raise bad_type("classifier", "the name of a module from model.named_modules(), or None", classifier)
    if classifier_reads is not None and classifier is None:
        raise ValueError("parameter classifier_reads needs a classifier, got classifier None")
    W = b = None
    if classifier is not None:
        head = _module_names(model, [classifier], "classifier")[classifier]
        W, b = getattr(head, "weight", None), getattr(head, "bias", None)
        if not isinstance(W, Tensor) or W.ndim != 2 or W.shape[0] != K:
            raise ValueError(f"parameter classifier must name a linear module with weight (K, d) = ({K}, d), got "
                             f"{classifier!r} with weight {None if not isinstance(W, Tensor) else tuple(W.shape)}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    dev = torch.device(device)
    read = classifier_reads if classifier_reads is not None else (
        None if classifier is None else classifier + ".input")
    hooks = FeatureHooks(model, list(layers), pooled=pooled, flatten=flatten,
                         inputs=[classifier] if classifier is not None and classifier_reads is None else [])
    acc = StreamingNC(K, dev)
    ctx = (lambda: torch.autocast(dev.type, dtype=autocast)) if autocast is not None else contextlib.nullcontext
    was_training = model.training
    model.eval()

    def forward(x: Any) -> Any:
        hooks.out.clear()
        with ctx():
            return model(x)

    def classifiers() -> dict | None:
        if read is None:
            return None
        if read not in hooks.out:
            raise ValueError(f"parameter classifier_reads must be one of the measured levels {list(hooks.out)}, "
                             f"got {read!r}")
        return {read: (W, b)}

    try:
        for x, y in _batches(loader, "loader", dev):
            out = forward(x)
            acc.update_means(hooks.out, y)
            if on_output is not None:
                on_output(out, y, "train")
        if distributed:
            acc.all_reduce()
        for x, y in _batches(loader, "loader", dev):
            forward(x)
            acc.update_within(hooks.out, y, classifiers())
        if test_loader is not None:
            for x, y in _batches(test_loader, "test_loader", dev):
                out = forward(x)
                acc.update_test(hooks.out, y, classifiers())
                if on_output is not None:
                    on_output(out, y, "test")
        if distributed:
            acc.all_reduce()
        return acc.result()
    finally:
        hooks.remove()
        model.train(was_training)


def to_frame(result: dict[str, dict[str, float]]):
    """The result of :func:`measure` (or :meth:`StreamingNC.result`) as a long pandas table with columns
    layer, metric, value (needs pandas: the ``[data]`` extra)."""
    pd = need("pandas")
    if not isinstance(result, dict):
        raise bad_type("result", "a {layer: {metric: value}} dict from ncutils.measure", result)
    return pd.DataFrame([{"layer": layer, "metric": k, "value": v} for layer, vals in result.items()
                         for k, v in vals.items()], columns=["layer", "metric", "value"])


class _CallableModule(types.ModuleType):
    """``ncutils.measure`` is this module and, called, :func:`measure` (so that ``ncutils.measure(...)`` and
    ``ncutils.measure.to_frame(...)`` both work, whichever was imported first)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, dict[str, float]]:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

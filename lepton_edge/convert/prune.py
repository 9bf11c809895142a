"""Pruning Keras models: zero the smallest weights, or remove the weakest channels; optional fine-tuning.

``prune_weights`` (unstructured) zeroes the smallest-magnitude fraction of every convolution and
dense kernel. TFLite stores weights densely, so the file does not shrink; it compresses (docs/DESIGN.md,
"Facts the code relies on").

``prune_channels`` (structured) removes the weakest output channels of a convolution or dense layer
and the matching input slices of what reads them, and rebuilds a smaller model: flash, RAM and time
shrink. A layer is pruned only when every path from it reaches, through per-channel layers (batch
norm, activations, pooling, padding, dropout, depthwise convolution, flatten), convolutions or dense
layers that can drop the matching inputs. Layers feeding ``Add``, ``Concatenate``, reshapes, the
model's outputs, or anything unknown are left whole, and the report says why.

Both work on Keras 3 and ``tf_keras`` models alike (graph from ``get_config()``, rebuild with
``clone_model``, weights copied by layer name).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_edge.convert.calibration import Dataset
from lepton_edge.convert.tfenv import keras_module, quiet, short_error
from lepton_edge.errors import BadInput

#: Layers whose first weight is the kernel that magnitude pruning zeroes.
KERNEL_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense", "Conv2DTranspose",
                 "Conv1DTranspose")
#: Layers whose output channels channel pruning removes (kernel: [..., in, out]).
PRODUCERS = ("Conv1D", "Conv2D", "Dense")
#: Layers that act on each channel alone: pruning flows through them (their weights, if any, are (C,)).
PER_CHANNEL = ("BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
               "GaussianNoise", "GaussianDropout", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
               "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
               "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D",
               "UpSampling2D", "ActivityRegularization", "Identity", "Activation", "DepthwiseConv2D", "Flatten")
_NOT_ELEMENTWISE = ("softmax", "log_softmax")


@dataclass
class PruneReport:
    kind: str  # "weights" | "channels"
    amount: float
    layers: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    fine_tuned_epochs: int = 0

    @property
    def one_shot(self) -> bool:
        return self.fine_tuned_epochs == 0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "amount": self.amount, "layers": self.layers, "skipped": self.skipped,
                "fine_tuned_epochs": self.fine_tuned_epochs, "one_shot": self.one_shot}


# --- unstructured ------------------------------------------------------------------------------

def prune_weights(model: Any, sparsity: float) -> tuple[dict[str, np.ndarray], PruneReport]:
    """Zero the smallest ``sparsity`` of each kernel in place; return the masks (1 keeps a weight)."""
    masks: dict[str, np.ndarray] = {}
    report = PruneReport("weights", sparsity)
    for layer in model.layers:
        if type(layer).__name__ not in KERNEL_LAYERS:
            continue
        weights = layer.get_weights()
        if not weights:
            continue
        kernel = weights[0]
        n_zero = int(round(sparsity * kernel.size))  # noqa: RUF046 - a numpy float rounds to a float
        mask = np.ones(kernel.size, dtype=kernel.dtype)
        mask[np.argsort(np.abs(kernel), axis=None, kind="stable")[:n_zero]] = 0
        mask = mask.reshape(kernel.shape)
        weights[0] = kernel * mask
        layer.set_weights(weights)
        masks[layer.name] = mask
        report.layers.append({"layer": layer.name, "weights": int(kernel.size), "zeroed": n_zero})
    if not masks:
        raise BadInput("--prune: the model has no convolution or dense kernels to prune")
    return masks, report


def apply_masks(model: Any, masks: dict[str, np.ndarray]) -> None:
    for name, mask in masks.items():
        var = model.get_layer(name).weights[0]
        var.assign(np.asarray(var) * mask)


# --- structured --------------------------------------------------------------------------------

@dataclass
class _Graph:
    classes: dict[str, str]
    consumers: dict[str, list[str]]
    producers: dict[str, list[str]]
    shared: set[str]
    outputs: set[str]
    order: list[str]


@dataclass
class _Edit:
    """What happens to one layer's weights: kept output channels and/or kept input rows."""

    out_keep: np.ndarray | None = None
    in_keep: np.ndarray | None = None
    per_channel: np.ndarray | None = None  # a per-channel layer's kept channels


def prune_channels(model: Any, flavor: str, fraction: float) -> tuple[Any, PruneReport]:
    """A new, smaller model without the weakest ``fraction`` of each prunable layer's output channels."""
    graph = _graph(model)
    report = PruneReport("channels", fraction)
    edits: dict[str, _Edit] = {}
    new_width: dict[str, int] = {}
    for name in graph.order:
        cls = graph.classes[name]
        if cls not in PRODUCERS:
            continue
        layer = model.get_layer(name)
        why = _producer_blocker(layer, name, graph)
        path = None if why else _walk(model, graph, name)
        if why or path is None or isinstance(path, str):
            report.skipped.append({"layer": name, "reason": why or path})
            continue
        kernel = layer.get_weights()[0]
        channels = kernel.shape[-1]
        keep_n = max(1, int(round(channels * (1.0 - fraction))))  # noqa: RUF046 - a numpy float rounds to a float
        if keep_n >= channels:
            report.skipped.append({"layer": name, "reason": f"{channels} channels: nothing to remove"})
            continue
        keep = _strongest(model, graph, name, kernel, keep_n)
        edits.setdefault(name, _Edit()).out_keep = keep
        new_width[name] = keep_n
        for target, role, spatial in path:
            idx = keep if spatial == 1 else (np.arange(spatial)[:, None] * channels + keep[None, :]).reshape(-1)
            if role == "input":
                edits.setdefault(target, _Edit()).in_keep = idx
            else:
                edits.setdefault(target, _Edit()).per_channel = idx
        report.layers.append({"layer": name, "channels": int(channels), "kept": int(keep_n)})
    if not new_width:
        reasons = "; ".join(f"{s['layer']}: {s['reason']}" for s in report.skipped[:3])
        raise BadInput(f"--prune-channels: no layer of this model can lose channels ({reasons or 'none found'})")
    return _rebuild(model, flavor, new_width, edits), report


def _graph(model: Any) -> _Graph:
    config = model.get_config()
    layers = config.get("layers") or []
    classes = {layer.get("config", {}).get("name") or layer.get("name"): layer["class_name"]
               for layer in layers}
    consumers: dict[str, list[str]] = {n: [] for n in classes}
    producers: dict[str, list[str]] = {n: [] for n in classes}
    shared: set[str] = set()
    names = list(classes)
    if "input_layers" in config or any("inbound_nodes" in layer for layer in layers):  # functional
        for layer in layers:
            name = layer.get("config", {}).get("name") or layer.get("name")
            nodes = layer.get("inbound_nodes") or []
            if len(nodes) > 1:
                shared.add(name)
            for src in _history_names(nodes):
                producers[name].append(src)
                consumers.setdefault(src, []).append(name)
        outputs = {o[0] for o in _as_list_of_histories(config.get("output_layers"))}
    else:  # Sequential: a chain
        for a, b in itertools.pairwise(names):
            consumers[a].append(b)
            producers[b].append(a)
        outputs = {names[-1]} if names else set()
    return _Graph(classes, consumers, producers, shared, outputs, names)


def _history_names(obj: Any) -> list[str]:
    """Layer names an inbound-node structure refers to, in Keras 3 ({keras_history: [..]}) or Keras 2 form."""
    found: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if "keras_history" in o:
                found.append(o["keras_history"][0])
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            if len(o) >= 3 and isinstance(o[0], str) and isinstance(o[1], int) and isinstance(o[2], int):
                found.append(o[0])
                return
            for v in o:
                walk(v)

    walk(obj)
    return found


def _as_list_of_histories(obj: Any) -> list[list[Any] | tuple[Any, ...]]:
    if not obj:
        return []
    if isinstance(obj[0], str):
        return [obj]
    return [o for o in obj if isinstance(o, (list, tuple)) and o and isinstance(o[0], str)]


def _producer_blocker(layer: Any, name: str, graph: _Graph) -> str | None:
    cfg = layer.get_config()
    if name in graph.outputs:
        return "a model output"
    if name in graph.shared:
        return "called more than once (shared layer)"
    if cfg.get("data_format", "channels_last") != "channels_last":
        return "channels_first data format"
    if cfg.get("groups", 1) != 1:
        return "grouped convolution"
    if str(cfg.get("activation", "linear")) in _NOT_ELEMENTWISE:
        return f"its {cfg['activation']} activation mixes channels"
    return None


def _walk(model: Any, graph: _Graph, start: str) -> list[tuple[str, str, int]] | str:
    """Layers that must change with ``start``'s channels: (name, "input"|"channel", spatial); or why not."""
    affected: list[tuple[str, str, int]] = []
    stack: list[tuple[str, int]] = [(start, 1)]
    while stack:
        name, spatial = stack.pop()
        for nxt in graph.consumers.get(name, []):
            cls = graph.classes.get(nxt, "?")
            if nxt in graph.shared:
                return f"feeds {nxt}, a shared layer"
            if len(graph.producers.get(nxt, [])) != 1:
                return f"feeds {cls} {nxt}, which merges several inputs"
            if cls in PRODUCERS:
                if spatial > 1 and cls != "Dense":
                    return f"feeds {cls} {nxt} through Flatten"
                affected.append((nxt, "input", spatial))
                continue
            if nxt in graph.outputs:
                return f"reaches the model output through {nxt}"
            if cls not in PER_CHANNEL:
                return f"feeds {cls} {nxt}"
            layer = model.get_layer(nxt)
            cfg = layer.get_config()
            if cls == "Activation" and str(cfg.get("activation")) in _NOT_ELEMENTWISE:
                return f"feeds {nxt}, a {cfg['activation']} across channels"
            if cls == "DepthwiseConv2D" and cfg.get("depth_multiplier", 1) != 1:
                return f"feeds {nxt}, a depthwise convolution with depth multiplier {cfg.get('depth_multiplier')}"
            if cls == "BatchNormalization" and not _last_axis(cfg.get("axis", -1), len(_output_shape(layer))):
                return f"feeds {nxt}, a batch norm over axis {cfg.get('axis')}"
            if cls == "Flatten":
                in_shape = _input_shape(layer)
                if spatial > 1 or any(d is None for d in in_shape[1:-1]):
                    return f"feeds {nxt}, a Flatten of unknown shape"
                affected.append((nxt, "channel", spatial))
                stack.append((nxt, spatial * int(np.prod(in_shape[1:-1]))))
                continue
            affected.append((nxt, "channel", spatial))
            stack.append((nxt, spatial))
    return affected


def _last_axis(axis: Any, rank: int) -> bool:
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return [int(a) % rank for a in axes] == [rank - 1]


def _input_shape(layer: Any) -> tuple:
    shape = getattr(layer, "input_shape", None)
    if shape is None:
        shape = layer.input.shape
    return tuple(shape)


def _output_shape(layer: Any) -> tuple:
    shape = getattr(layer, "output_shape", None)
    if shape is None:
        shape = layer.output.shape
    return tuple(shape)


def _strongest(model: Any, graph: _Graph, name: str, kernel: np.ndarray, keep_n: int) -> np.ndarray:
    """The ``keep_n`` channels of largest L1 norm, scaled by a directly following batch norm's gain."""
    score = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    nxt = graph.consumers.get(name, [])
    if len(nxt) == 1 and graph.classes.get(nxt[0]) == "BatchNormalization":
        bn = model.get_layer(nxt[0])
        cfg = bn.get_config()
        w = bn.get_weights()
        if cfg.get("scale", True):
            gamma, var = w[0], w[-1]
            score = score * np.abs(gamma) / np.sqrt(var + cfg.get("epsilon", 1e-3))
    return np.sort(np.argsort(-score, kind="stable")[:keep_n])


def _rebuild(model: Any, flavor: str, new_width: dict[str, int], edits: dict[str, _Edit]) -> Any:
    k = keras_module(flavor)

    def clone(layer: Any) -> Any:
        cfg = layer.get_config()
        if layer.name in new_width:
            cfg["units" if "units" in cfg else "filters"] = new_width[layer.name]
        return layer.__class__.from_config(cfg)

    try:
        with quiet():
            new = k.models.clone_model(model, clone_function=clone)
            for layer in new.layers:
                weights = model.get_layer(layer.name).get_weights()
                edit = edits.get(layer.name)
                if edit is not None and weights:
                    weights = _edit_weights(type(layer).__name__, weights, edit)
                if weights:
                    layer.set_weights(weights)
    except Exception as exc:
        raise BadInput(f"--prune-channels: cannot rebuild the model ({short_error(exc)})") from None
    return new


def _edit_weights(cls: str, weights: list[np.ndarray], edit: _Edit) -> list[np.ndarray]:
    out = list(weights)
    if edit.per_channel is not None:
        if cls == "DepthwiseConv2D":
            out[0] = out[0][:, :, edit.per_channel, :]
            out[1:] = [w[edit.per_channel] for w in out[1:]]
        else:
            out = [w[..., edit.per_channel] if w.ndim >= 1 else w for w in out]
    if edit.in_keep is not None:
        out[0] = np.take(out[0], edit.in_keep, axis=-2)
    if edit.out_keep is not None:
        out[0] = out[0][..., edit.out_keep]
        if len(out) > 1:
            out[1] = out[1][edit.out_keep]
    return out


# --- fine-tuning -------------------------------------------------------------------------------

def fine_tune(model: Any, flavor: str, train: Dataset, *, epochs: int, learning_rate: float,
              masks: dict[str, np.ndarray] | None = None, seed: int = 0) -> dict:
    """Train ``model`` on ``train`` for ``epochs``, keeping masked weights at zero after every step."""
    if train.y is None:
        raise BadInput("--train data needs labels: an .npz with keys 'x' and 'y'")
    k = keras_module(flavor)
    with quiet():
        k.utils.set_random_seed(seed)
        probe = model(train.sample(0) if len(train.xs) > 1 else train.xs[0][:8], training=False)
    out = np.asarray(probe[0] if isinstance(probe, (list, tuple)) else probe)
    loss, y = _loss_for(k, train.y, out)
    kept = masks or {}

    class KeepMasks(k.callbacks.Callback):  # type: ignore[name-defined]  # Keras's, picked at run time
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            apply_masks(self.model, kept)

    x = train.xs if len(train.xs) > 1 else train.xs[0]
    try:
        with quiet():
            model.compile(optimizer=k.optimizers.Adam(learning_rate=learning_rate), loss=loss)
            history = model.fit(x, y, epochs=epochs, batch_size=32, shuffle=True, verbose=0,
                                callbacks=[KeepMasks()] if kept else [])
    except Exception as exc:
        raise BadInput(f"--train: fine-tuning failed ({short_error(exc)})") from None
    apply_masks(model, kept)
    losses = history.history.get("loss", [])
    return {"epochs": epochs, "learning_rate": learning_rate, "final_loss": float(losses[-1]) if losses else None}


def _loss_for(k: Any, y: np.ndarray, out: np.ndarray) -> tuple[Any, np.ndarray]:
    from lepton_edge.convert.fidelity import looks_like_probabilities

    probs = looks_like_probabilities(out)
    classes = out.reshape(len(out), -1).shape[1]
    if y.ndim == 1 and classes > 1 and (y.dtype.kind in "iub" or np.all(y == np.round(y))):
        return k.losses.SparseCategoricalCrossentropy(from_logits=not probs), y.astype(np.int64)
    if y.ndim == 2 and y.shape[1] == classes and classes > 1 and np.all((y == 0) | (y == 1)):
        return k.losses.CategoricalCrossentropy(from_logits=not probs), y.astype(np.float32)
    if y.shape[1:] == out.shape[1:]:
        return k.losses.MeanSquaredError(), y.astype(np.float32)
    raise BadInput(f"--train labels of shape {list(y.shape)} suit neither classes nor the output {list(out.shape)}")


def kernel_sparsity(model_bytes: bytes, min_elements: int = 1024) -> float | None:
    """Fraction of zeros among the weights of the large convolution and dense kernels of a .tflite."""
    from lepton_edge.tflite.reader import parse_model
    from lepton_edge.tflite.writer import unpack

    model = parse_model(model_bytes)
    obj = unpack(model_bytes)
    sg = model.main
    zeros = total = 0
    for op in sg.operators:
        if op.opcode not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
            continue
        t = sg.tensors[op.inputs[1]]
        if not t.has_data or t.num_elements < min_elements:
            continue
        assert obj.buffers is not None  # parse_model checked the buffers
        data = obj.buffers[t.buffer].data
        view = np.dtype(t.dtype) if t.dtype in ("int8", "float32") else np.uint8
        values = np.asarray(data, dtype=np.uint8).view(view)
        zeros += int(np.count_nonzero(values == 0))
        total += values.size
    return None if total == 0 else zeros / total

"""Reading a saved Keras model as a servable chain: per-timestep input layers, LSTM layers
(stacked, possibly with per-timestep layers between them), per-timestep output layers.

A model is served only when every result at a timestep depends on that timestep's input and the
LSTM states alone: then running a sequence in pieces, with the states carried between them,
gives what one call gives. Everything else (layers that mix timesteps, run backwards, branch or
take several inputs) is refused here, at start-up, naming the layer and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from lstm_server.core.errors import ModelLoadError
from lstm_server.runtime.archive import check_archive, check_h5, refuse

# Token ids travel through the core as float32, exact up to 2**24.
MAX_VOCABULARY = 1 << 24

# Layers that act on each timestep alone (identity ones included: they are identity at inference).
PER_TIMESTEP = (
    "Activation",
    "ActivityRegularization",
    "AlphaDropout",
    "BatchNormalization",
    "Dense",
    "Dropout",
    "ELU",
    "Embedding",
    "GaussianDropout",
    "GaussianNoise",
    "Identity",
    "LayerNormalization",
    "LeakyReLU",
    "Masking",
    "PReLU",
    "ReLU",
    "Rescaling",
    "Softmax",
    "SpatialDropout1D",
    "TimeDistributed",
    "UnitNormalization",
)
OTHER_RECURRENT = ("GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
MIXES_TIMESTEPS = (
    "Attention",
    "AdditiveAttention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "Flatten",
    "Reshape",
    "Permute",
    "RepeatVector",
    "Cropping1D",
    "ZeroPadding1D",
    "UpSampling1D",
)


@dataclass
class Chain:
    """A servable model: its layers in order (LSTMs as the user saved them) and its input."""

    name: str
    layers: list[keras.layers.Layer]
    features: int  # values per timestep; 1 for token models
    vocabulary_size: int = 0  # > 0: the model takes token ids (it starts with an Embedding)

    @property
    def lstms(self) -> list[keras.layers.LSTM]:
        return [layer for layer in self.layers if isinstance(layer, keras.layers.LSTM)]

    @property
    def has_output_layers(self) -> bool:
        """Whether layers follow the top LSTM."""
        return not isinstance(self.layers[-1], keras.layers.LSTM)

    @property
    def masks_content(self) -> bool:
        """Whether timesteps can be masked by their values (Masking, Embedding(mask_zero))."""
        return any(
            isinstance(layer, keras.layers.Masking)
            or (isinstance(layer, keras.layers.Embedding) and layer.mask_zero)
            for layer in self.layers
        )


def load_chain(path: Path) -> Chain:
    """Load a saved ``.keras`` model and check that it is one servable chain."""
    if path.is_dir():
        if any((path / marker).exists() for marker in ("saved_model.pb", "saved_model.pbtxt")):
            raise ModelLoadError(
                f"{path} is a TensorFlow SavedModel (model.export()), which keeps the traced "
                "graph but not the Keras layers lstm-serving rebuilds its LSTM from; save the "
                "model with model.save('model.keras') and serve that file"
            )
        raise ModelLoadError(f"{path} is a directory, not a .keras or .h5 model file")
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    config = check_archive(path)
    if config is not None:
        _refuse_code_layers(path, config)
    elif path.suffix == ".h5":
        check_h5(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files.
        raise ModelLoadError(f"cannot load model file {path}: {exc}") from exc
    if isinstance(model, keras.Sequential):
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        input_shape, input_dtype = model.inputs[0].shape, model.inputs[0].dtype
    elif isinstance(model, keras.Model) and hasattr(model, "get_config"):
        layers, data_input = _functional_chain(model, path)
        input_shape, input_dtype = data_input.shape, data_input.dtype
    else:
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a Keras model")
    return _checked(Chain(path.stem, layers, 0), input_shape, str(input_dtype), path)


def _checked(
    chain: Chain,
    input_shape: tuple[int | None, ...],
    input_dtype: str,
    path: Path,
) -> Chain:
    seen_lstm = False
    for position, layer in enumerate(chain.layers):
        _check_layer(layer, path)
        if isinstance(layer, keras.layers.Embedding) and position != 0:
            refuse(path, f"{_named(layer)} must be the model's first layer, fed token ids")
        if isinstance(layer, keras.layers.Masking) and seen_lstm:
            refuse(path, f"{_named(layer)} must come before the first LSTM layer")
        seen_lstm = seen_lstm or isinstance(layer, keras.layers.LSTM)
    if not seen_lstm:
        refuse(path, "it has no keras.layers.LSTM layer; lstm-serving serves LSTM models")
    first = chain.layers[0]
    if isinstance(first, keras.layers.Embedding):
        if len(input_shape) != 2:
            refuse(path, f"{_named(first)} takes (batch, timesteps) token ids, got {input_shape}")
        if first.input_dim > MAX_VOCABULARY:
            refuse(path, f"{_named(first)} has {first.input_dim} ids, more than {MAX_VOCABULARY}")
        chain.vocabulary_size, chain.features = int(first.input_dim), 1
    else:
        if len(input_shape) != 3 or input_shape[-1] is None:
            refuse(
                path,
                f"its input has shape {input_shape}; a served model takes "
                "(batch, timesteps, features) with a fixed number of features",
            )
        if "int" in input_dtype:
            refuse(path, f"its input is {input_dtype} but it does not start with an Embedding")
        chain.features = int(input_shape[-1] or 0)
    return chain


def _refuse_code_layers(path: Path, config: dict[str, Any]) -> None:
    """Refuse ``Lambda`` layers by name before Keras reads the file (which would run or refuse
    their code without saying which layer it is)."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "Lambda":
                name = item.get("config", {}).get("name", "?")
                refuse(
                    path,
                    f"Lambda layer '{name}' runs arbitrary code, which cannot be checked to act "
                    "per timestep",
                )
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _named(layer: keras.layers.Layer) -> str:
    return f"{type(layer).__name__} layer '{layer.name}'"


def _check_layer(layer: keras.layers.Layer, path: Path) -> None:
    kind = type(layer).__name__
    if isinstance(layer, keras.layers.LSTM):
        if type(layer) is not keras.layers.LSTM:
            refuse(path, f"{_named(layer)} is a subclass of LSTM, whose code cannot be checked")
        if layer.go_backwards:
            refuse(
                path,
                f"{_named(layer)} has go_backwards=True: it reads the whole sequence from the "
                "end, which cannot be served as a chain of steps",
            )
        return
    if kind == "Bidirectional":
        refuse(
            path,
            f"{_named(layer)} runs an RNN backwards over the whole sequence, which cannot be "
            "served as a chain of steps",
        )
    if kind in OTHER_RECURRENT:
        refuse(path, f"{_named(layer)} is a {kind}; lstm-serving serves keras.layers.LSTM layers")
    if kind == "Lambda":
        refuse(
            path,
            f"{_named(layer)} runs arbitrary code, which cannot be checked to act per timestep",
        )
    if kind in MIXES_TIMESTEPS or "Conv" in kind or "Pooling" in kind:
        refuse(
            path,
            f"{_named(layer)} mixes timesteps; only per-timestep layers can surround the LSTMs",
        )
    if kind not in PER_TIMESTEP:
        refuse(
            path,
            f"{_named(layer)} is not a layer lstm-serving can serve per timestep (it serves "
            f"LSTM and {', '.join(PER_TIMESTEP)})",
        )
    if kind == "TimeDistributed":
        _check_layer(layer.layer, path)
        if isinstance(layer.layer, (keras.layers.LSTM, keras.layers.Embedding)):
            refuse(path, f"{_named(layer)} wraps a {type(layer.layer).__name__}")
    if kind in ("LayerNormalization", "BatchNormalization", "Softmax", "UnitNormalization"):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [a % 3 if a < 0 else a for a in axes] != [2]:
            refuse(
                path,
                f"{_named(layer)} normalizes over axis {layer.axis}, which mixes "
                "timesteps; only the last axis can be served",
            )


# Functional models: read the graph from the saved configuration.

Ref = tuple[str, int, int]  # (layer name, node index, output index), as Keras records it


def _tensor_refs(value: Any) -> Iterator[Ref]:
    """The Keras tensors in a node's arguments (nested lists and dicts included)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            name, node, index = value["config"]["keras_history"]
            yield name, int(node), int(index)
            return
        for item in value.values():
            yield from _tensor_refs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensor_refs(item)


def _functional_chain(model: keras.Model, path: Path) -> tuple[list[keras.layers.Layer], Any]:
    """The layers from the one data input to the output, in order. Inputs that feed an LSTM's
    ``initial_state`` are the request's state for that layer, like every LSTM's."""
    config = model.get_config()
    inputs = {entry[0] for entry in _refs(config["input_layers"])}
    outputs = [tuple(entry) for entry in _refs(config["output_layers"])]
    fed: dict[str, Ref] = {}  # layer -> the tensor it takes
    initial: dict[str, tuple[Ref, Ref]] = {}
    for entry in config["layers"]:
        name, nodes = entry["name"], entry.get("inbound_nodes", [])
        if name in inputs:
            continue
        if len(nodes) != 1:
            refuse(path, f"layer '{name}' is called {len(nodes)} times; a chain calls each once")
        (node,) = nodes
        args = list(_tensor_refs(node.get("args", [])))
        kwargs = dict(node.get("kwargs", {}))
        states = list(_tensor_refs(kwargs.pop("initial_state", [])))
        if len(args) != 1 or any(_tensor_refs(kwargs)):
            refuse(path, f"layer '{name}' takes several tensors; a chain takes one at a time")
        if states:
            if entry["class_name"] != "LSTM" or len(states) != 2:
                refuse(path, f"layer '{name}' takes an initial state other than an LSTM's [h, c]")
            if any(ref[0] not in inputs for ref in states):
                refuse(path, f"the initial state of layer '{name}' must come from model inputs")
            initial[name] = (states[0], states[1])
        fed[name] = args[0]
    state_names = {ref[0] for pair in initial.values() for ref in pair}
    data = sorted(inputs - state_names)
    if len(data) != 1:
        refuse(
            path,
            f"it has {len(data)} inputs that are not LSTM initial states ({', '.join(data)}); a "
            "served model takes one input sequence",
        )
    consumers: dict[Ref, list[str]] = {}
    for name, ref in fed.items():
        consumers.setdefault(ref, []).append(name)
    order: list[str] = []
    current: Ref = (data[0], 0, 0)
    while current in consumers:
        takers = consumers.pop(current)
        if len(takers) != 1:
            refuse(
                path,
                f"'{current[0]}' feeds {len(takers)} layers ({', '.join(takers)}); "
                "branches cannot be served",
            )
        order.append(takers[0])
        current = (takers[0], 0, 0)
    if consumers:
        stray = sorted({n for names in consumers.values() for n in names})
        refuse(
            path,
            f"layers {', '.join(stray)} are not on the one chain from the input; "
            "branches cannot be served",
        )
    if not order:
        refuse(path, "it has no layers")
    lstm_names = [n for n in order if model.get_layer(n).__class__.__name__ == "LSTM"]
    for ref in outputs:
        is_state = ref[0] in lstm_names and ref[2] in (1, 2)
        if ref != current and not is_state:
            refuse(path, f"its output '{ref[0]}' is not the end of the chain nor an LSTM state")
    if not any(ref[0] == current[0] for ref in outputs):  # the encoder form outputs [h, c]
        refuse(path, f"the end of the chain, layer '{current[0]}', is not a model output")
    data_input = next(t for t in model.inputs if t.name == data[0] or _input_name(t) == data[0])
    return [model.get_layer(n) for n in order], data_input


def _refs(entries: list[Any]) -> list[list[Any]]:
    """A model's input or output references: one ``[name, node, index]`` or a list of them."""
    return [entries] if entries and isinstance(entries[0], str) else entries


def _input_name(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history[0].name if history is not None else ""

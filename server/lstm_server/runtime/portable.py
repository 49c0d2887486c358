"""Compiled functions that any process can compile for another: named by what they compute.

XLA's persistent cache keys a program by its function's name and the HLO it lowers to. A traced
``tf.function`` is named with a counter of the process that traced it, and its HLO carries that
process's Python stack traces, so two processes (a server and its compile worker, a server and
its next start, two replicas) never share an entry. A ``PortableFunction`` is the traced
function's definitions renamed by a digest of their content, registered without stack traces,
and called by that name: every process that registers the same definitions compiles and looks
up the same programs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, function_pb2
from tensorflow.core.framework.function_pb2 import FunctionDefLibrary as Library
from tensorflow.python.eager import context


def _referenced(attr: attr_value_pb2.AttrValue) -> list[str]:
    """The functions an attribute names (``body``, ``cond``, ``f``, branches, ...)."""
    if attr.HasField("func"):
        nested = attr.func.attr
        return [attr.func.name, *(n for key in sorted(nested) for n in _referenced(nested[key]))]
    if attr.HasField("list"):
        return [f.name for f in attr.list.func]
    return []


def _rename(attr: attr_value_pb2.AttrValue, names: dict[str, str]) -> None:
    if attr.HasField("func"):
        attr.func.name = names.get(attr.func.name, attr.func.name)
        for value in attr.func.attr.values():
            _rename(value, names)
    elif attr.HasField("list"):
        for f in attr.list.func:
            f.name = names.get(f.name, f.name)


def _rename_calls(definition: function_pb2.FunctionDef, names: dict[str, str]) -> None:
    """Rename the functions ``definition`` calls, by op type or through attributes."""
    for node in definition.node_def:
        node.op = names.get(node.op, node.op)
        for attr in node.attr.values():
            _rename(attr, names)


def _number_inputs(definition: function_pb2.FunctionDef) -> None:
    """Names a function's inputs by position: some are named after the counter of the trace
    (``while_cond_429___redundant_placeholder0``)."""
    nodes = {node.name for node in definition.node_def}
    names: dict[str, str] = {}
    for i, arg in enumerate(definition.signature.input_arg):
        name = f"input_{i}"
        while name in nodes:
            name += "_"
        names[arg.name] = name
        arg.name = name
    for node in definition.node_def:
        for j, source in enumerate(node.input):
            if source in names:  # an input, not a node's output (``node:output:index``)
                node.input[j] = names[source]
    for key, source in list(definition.ret.items()):
        if source in names:
            definition.ret[key] = names[source]


def canonical_library(function: tf.types.experimental.ConcreteFunction, kind: str) -> Library:
    """The definitions ``function`` runs, renamed ``lstm_<kind>_<digest>_<i>`` in the order the
    top one reaches them (``i = 0`` is the top one) and stripped of what is process-specific."""
    top = function.function_def
    by_name = {f.signature.name: f for f in function.graph.as_graph_def().library.function}
    by_name[top.signature.name] = top
    order: list[str] = []
    pending = [top.signature.name]
    while pending:
        name = pending.pop(0)
        if name in order or name not in by_name:
            continue
        order.append(name)
        for node in by_name[name].node_def:
            pending.append(node.op)  # a function called as an op type, if it is one
            for key in sorted(node.attr):
                pending.extend(_referenced(node.attr[key]))
    copies = [function_pb2.FunctionDef.FromString(by_name[n].SerializeToString()) for n in order]
    numbered = {name: f"__{i}__" for i, name in enumerate(order)}
    for copy in copies:  # the digest must not depend on the names the trace gave
        copy.signature.name = ""
        _number_inputs(copy)
        _rename_calls(copy, numbered)
    digest = hashlib.sha256()
    for copy in copies:
        content = function_pb2.FunctionDef.FromString(copy.SerializeToString())
        content.attr.pop("_construction_context", None)
        digest.update(content.SerializeToString(deterministic=True))
    prefix = f"lstm_{kind}_{digest.hexdigest()[:16]}"
    final = {f"__{i}__": f"{prefix}_{i}" for i in range(len(order))}
    for i, copy in enumerate(copies):
        copy.signature.name = f"{prefix}_{i}"
        _rename_calls(copy, final)
    return Library(function=copies)


class PortableFunction:
    """A canonical library registered in this process, called by its top function's name."""

    def __init__(self, library: Library) -> None:
        self.library = library
        self.name = library.function[0].signature.name
        self._outputs = len(library.function[0].signature.output_arg)
        self._context = context.context()
        self._context.ensure_initialized()
        for definition in reversed(library.function):  # callees first
            if not self._context.has_function(definition.signature.name):
                self._context.add_function_def(definition)
        self._encoded = self.name.encode()

    def __call__(self, *tensors: tf.Tensor) -> Sequence[tf.Tensor]:
        return self._context.call_function(self._encoded, list(tensors), self._outputs)

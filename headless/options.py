"""Command-line options generated from a node's own schema (one definition of every input: its name, default,
range, choices and tooltip), and the job node's values from a workflow, the command line winning."""
from __future__ import annotations

import argparse

SOCKET_TYPES = {"INT": int, "FLOAT": float, "STRING": str, "COMBO": str, "BOOLEAN": None}


def widget_inputs(node_class) -> list:
    """The inputs of a node that are values (widgets), not sockets such as MODEL or CLIP."""
    return [i for i in node_class.define_schema().inputs if i.get_io_type() in SOCKET_TYPES]


def socket_inputs(node_class, required_only: bool = False) -> list[str]:
    """The inputs of a node that are sockets (MODEL, CLIP, SAE...), all or only those it cannot run without."""
    return [i.id for i in node_class.define_schema().inputs
            if i.get_io_type() not in SOCKET_TYPES and not (required_only and getattr(i, "optional", False))]


def _help(widget) -> str:
    parts = [(widget.tooltip or "").replace("%", "%%")]
    low, high = getattr(widget, "min", None), getattr(widget, "max", None)
    if low is not None or high is not None:
        parts.append(f"range {low}..{high}.")
    if getattr(widget, "options", None):
        parts.append(f"one of: {', '.join(map(str, widget.options))}.")
    default = getattr(widget, "default", None)
    if default not in (None, ""):
        parts.append(f"Default: {default!r}."[:200].replace("%", "%%"))
    return " ".join(p for p in parts if p)


def add_node_options(parser: argparse.ArgumentParser, node_class) -> None:
    """``--<input>`` for every widget input of ``node_class`` (unset unless given: the workflow or the node's
    default fills it). The node checks every value as it does in the graph."""
    group = parser.add_argument_group(f"inputs of the {node_class.define_schema().display_name} node")
    for widget in widget_inputs(node_class):
        kind = SOCKET_TYPES[widget.get_io_type()]
        flag = f"--{widget.id.replace('_', '-')}"
        if kind is None:
            group.add_argument(flag, dest=widget.id, default=None, choices=("true", "false"), help=_help(widget))
        else:
            group.add_argument(flag, dest=widget.id, default=None, type=kind, help=_help(widget),
                               choices=list(widget.options) if getattr(widget, "options", None) else None)


def node_values(node_class, from_workflow: dict, args: argparse.Namespace) -> dict:
    """The node's widget values: the node's defaults, then the workflow's, then the command line's."""
    values = {}
    for widget in widget_inputs(node_class):
        value = from_workflow.get(widget.id, getattr(widget, "default", None))
        given = getattr(args, widget.id, None)
        if given is not None:
            value = given == "true" if SOCKET_TYPES[widget.get_io_type()] is None else given
        if value is not None:
            values[widget.id] = value
    return values

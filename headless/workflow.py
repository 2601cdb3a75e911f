"""An API-format workflow (ComfyUI's "Export (API)") as the input of a headless job: the job's node is found by
its class, its widget values are taken as they are, and the nodes upstream of its model / CLIP / VAE / SAE inputs
are run by calling their classes, as ComfyUI's executor would: the built-in nodes (CheckpointLoaderSimple,
UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader, LoraLoader...), the pack's nodes and any ``--custom-node``
pack's. Only the job node's own upstream graph runs; samplers or savers elsewhere in the file are ignored."""
from __future__ import annotations

import json
from pathlib import Path

from sae_lab_pack.sae_core.errors import SAEInputError

MAX_WORKFLOW_BYTES = 16 << 20


def read_workflow(path: Path) -> dict:
    """The ``{node id: {"class_type", "inputs"}}`` graph of an API-format workflow file."""
    if not path.is_file() or path.stat().st_size > MAX_WORKFLOW_BYTES:
        raise SAEInputError(f"workflow {path.name!r} is not a file of at most {MAX_WORKFLOW_BYTES >> 20} MiB")
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEInputError(f"workflow {path.name!r} is not valid JSON ({exc})") from None
    graph = graph.get("prompt", graph) if isinstance(graph, dict) else graph
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise SAEInputError(f"workflow {path.name!r} is not in ComfyUI's API format (Export (API)): every node "
                            f"needs a class_type and inputs; a UI-format workflow (with 'nodes' and 'links') "
                            f"must be exported again with Export (API)")
    return graph


def find_node(graph: dict, class_type: str) -> str:
    """The id of the one node of ``class_type`` in the graph."""
    ids = [node_id for node_id, node in graph.items() if node["class_type"] == class_type]
    if len(ids) != 1:
        raise SAEInputError(f"the workflow must hold exactly one {class_type} node; it holds {len(ids)}")
    return ids[0]


def is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class GraphRunner:
    """Runs nodes of one workflow by calling their classes (each node at most once)."""

    def __init__(self, graph: dict, classes: dict[str, type]):
        self.graph, self.classes = graph, classes
        self.outputs: dict[str, tuple] = {}

    def inputs(self, node_id: str) -> dict:
        """A node's inputs, its links replaced by the outputs of the nodes they come from."""
        values = {}
        for name, value in (self.graph[node_id].get("inputs") or {}).items():
            if is_link(value):
                source, index = value
                outputs = self.run(source)
                if not 0 <= index < len(outputs):
                    raise SAEInputError(f"input {name!r} of node {node_id} links output {index} of node {source}, "
                                        f"which has {len(outputs)} outputs")
                value = outputs[index]
            values[name] = value
        return values

    def run(self, node_id: str) -> tuple:
        if node_id not in self.graph:
            raise SAEInputError(f"the workflow links node {node_id!r}, which it does not hold")
        if node_id in self.outputs:
            return self.outputs[node_id]
        class_type = self.graph[node_id]["class_type"]
        cls = self.classes.get(class_type)
        if cls is None:
            raise SAEInputError(f"node {node_id} is a {class_type!r}, which is not a built-in node, an SAE Lab node "
                                f"or one of a --custom-node pack")
        self.outputs[node_id] = ()  # a cycle finds an empty output instead of recursing forever
        inputs = self.inputs(node_id)
        if hasattr(cls, "define_schema"):  # a V3 node
            result = cls.execute(**inputs)
            result = tuple(getattr(result, "result", None) or getattr(result, "args", ()) or ())
        else:
            result = getattr(cls(), cls.FUNCTION)(**inputs)
            result = tuple(result["result"] if isinstance(result, dict) else result)
        self.outputs[node_id] = result
        return result


def node_classes(extra: dict[str, type]) -> dict[str, type]:
    """Built-in ComfyUI nodes, the pack's nodes (by node id) and ``extra`` (custom node packs)."""
    import nodes as comfy_nodes

    from sae_lab_pack.nodes import all_nodes

    classes = dict(comfy_nodes.NODE_CLASS_MAPPINGS)
    classes.update({node.define_schema().node_id: node for node in all_nodes()})
    classes.update(extra)
    return classes

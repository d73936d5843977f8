"""A mix's ONNX graphs, joined from its members' graphs (each exported as it would be alone: the recurrent members'
hand-built graphs and the others' torch.export graphs alike), so a mix takes members of every ONNX-able family.

Every member's graph is copied in under the prefix "m<i>_"; the mix's inputs (ids, a labelled mix's label, and the
states of all members in order, "state<n>") feed them, and its logits are the mixture of theirs:
log sum_i w_i softmax(logits_i), or log softmax(sum_i w_i log softmax(logits_i)) for a log-linear mix, as
Mix._combine (members of weight 0 are not mixed; their states still pass through).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def join_mix(
    parts: list[Path], path: Path, weights: list[float], which: str, state_counts: list[int], log_linear: bool = False
) -> None:
    """parts: the members' graphs (which: "step" or "score"), saved at `path` as one graph."""
    import onnx
    from onnx import compose, helper, numpy_helper

    members = [compose.add_prefix(onnx.load(str(p)), f"m{i}_") for i, p in enumerate(parts)]
    nodes, inits, functions, infos = [], [], [], []
    inputs: dict[str, onnx.ValueInfoProto] = {}
    outputs: list[onnx.ValueInfoProto] = []
    opsets: dict[str, int] = {}
    n = 0  # the mix's state index
    for i, (member, count) in enumerate(zip(members, state_counts)):
        graph, prefix = member.graph, f"m{i}_"
        for value in graph.input:  # ids, label: shared; the member's states: the mix's state<n> in turn
            name = value.name[len(prefix) :]
            if name.startswith("state"):
                name = f"state{n + int(name[len('state') :])}"
            if name not in inputs:
                inputs[name] = helper.make_value_info(name, value.type)
            nodes.append(helper.make_node("Identity", [name], [value.name]))
        for value in graph.output:
            name = value.name[len(prefix) :]
            if name.startswith("new_state"):
                name = f"new_state{n + int(name[len('new_state') :])}"
                outputs.append(helper.make_value_info(name, value.type))
                nodes.append(helper.make_node("Identity", [value.name], [name]))
        n += count
        nodes += graph.node
        inits += graph.initializer
        infos += graph.value_info
        functions += member.functions
        for opset in member.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    terms = []
    for i, weight in enumerate(weights):
        if weight > 0:
            logp, logits = f"mix_logp{i}", f"m{i}_logits"
            if log_linear:  # in float64, as Mix._combine: the weights scale float32 rounding
                nodes.append(helper.make_node("Cast", [logits], [f"mix_double{i}"], to=onnx.TensorProto.DOUBLE))
                logits = f"mix_double{i}"
            nodes.append(helper.make_node("LogSoftmax", [logits], [logp], axis=-1))
            op, value = ("Mul", weight) if log_linear else ("Add", math.log(weight))  # w_i log p_i, or log w_i p_i
            value = np.array(value, np.float64 if log_linear else np.float32)
            nodes.append(helper.make_node(op, [logp, const(f"mix_w{i}", value)], [f"mix_term{i}"]))
            nodes.append(helper.make_node("Unsqueeze", [f"mix_term{i}", const(f"mix_axis{i}", np.array([0]))],
                                          [f"mix_t{i}"]))  # fmt: skip
            terms.append(f"mix_t{i}")
    axis = const("mix_axis", np.array([0]))
    if log_linear:  # log softmax of the sum over the members
        nodes.append(helper.make_node("Concat", terms, ["mix_terms"], axis=0))
        nodes.append(helper.make_node("ReduceSum", ["mix_terms", axis], ["mix_total"], keepdims=0))
        nodes.append(helper.make_node("LogSoftmax", ["mix_total"], ["mix_log_p"], axis=-1))
        nodes.append(helper.make_node("Cast", ["mix_log_p"], ["logits"], to=onnx.TensorProto.FLOAT))
    steps = (
        ()
        if log_linear
        else (
            ("Concat", terms, "mix_terms"),
            ("ReduceMax", ["mix_terms", axis], "mix_top"),
            ("Sub", ["mix_terms", "mix_top"], "mix_shifted"),
            ("Exp", ["mix_shifted"], "mix_exp"),
            ("ReduceSum", ["mix_exp", axis], "mix_sum"),
            ("Log", ["mix_sum"], "mix_log"),
            ("Add", ["mix_top", "mix_log"], "mix_total"),
            ("Squeeze", ["mix_total", axis], "logits"),
        )
    )  # logsumexp over the members, from the largest term (no underflow)
    for op, args, out in steps:
        nodes.append(helper.make_node(op, args, [out], **({"axis": 0} if op == "Concat" else {})))
    logits = helper.make_value_info("logits", members[0].graph.output[0].type)
    graph = helper.make_graph(nodes, f"makemore_mix_{which}", list(inputs.values()), [logits, *outputs], inits)
    graph.value_info.extend(infos)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
        functions=functions,
        ir_version=max(member.ir_version for member in members),
    )
    onnx.save(model, str(path))


__all__ = ["join_mix"]

"""The recurrent families (rnn, gru, lstm) as hand-built ONNX graphs over ONNX's own RNN / GRU / LSTM operators, so
the sequence length and the batch stay dynamic (torch.export unrolls PyTorch's fused layers over a fixed length,
and the TorchScript exporter's translation did not match PyTorch here).

The known pitfall is the gate layout: PyTorch stores GRU gates as (r, z, n) and LSTM gates as (i, f, g, o); ONNX
expects (z, r, h) and (i, o, f, c), and PyTorch's GRU applies the reset gate after the hidden-state product
(linear_before_reset = 1).

A labelled model's graphs take the label (B,) after the ids: its vector is added to every input (add) or concatenated
to it (concat), or, in state mode, added to the start state (the scorer's; the step function is given its state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from makemore.models import LanguageModel

ORDER = {nn.GRU: [1, 0, 2], nn.LSTM: [0, 3, 1, 2], nn.RNN: [0]}  # ONNX gate k = PyTorch gate ORDER[k]
OPS = {nn.GRU: "GRU", nn.LSTM: "LSTM", nn.RNN: "RNN"}


def _gates(array: np.ndarray, cell: type, H: int) -> np.ndarray:
    return np.concatenate([array[k * H : (k + 1) * H] for k in ORDER[cell]], axis=0)


def recurrent_graph(model: LanguageModel, which: str, path: Path, opset: int) -> None:
    """which: "step" (ids (B,)[, label (B,)], state0 h (L, B, H)[, state1 c] -> logits (B, V), new states) or
    "score" (ids (B, T)[, label (B,)] -> logits (B, T, V), from the learned initial state)."""
    from onnx import TensorProto, helper, numpy_helper, save

    cell, c = model.cell, model.config
    L, H = c.n_layer, c.n_hidden
    lstm = cell is nn.LSTM
    mode = model.label_mode if model.n_labels else None
    w = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), "c_" + name))
        return "c_" + name

    def node(op: str, inputs: list[str], output: str | list[str], **attrs) -> str:
        outputs = output if isinstance(output, list) else [output]
        nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]

    const("wte", w["wte.weight"])
    const("zero", np.array([0]))
    const("axis1", np.array([1]))
    step = which == "step"
    ids = node("Unsqueeze", ["ids", "c_axis1"], "ids_bt") if step else "ids"
    x = node("Gather", ["c_wte", ids], "emb")  # (B, T, E)
    if mode in ("add", "concat"):  # the label's vector at every input
        vector = node("Unsqueeze", [node("Gather", [const("label", w["label_emb.table.weight"]), "label"], "lv")]
                      + ["c_axis1"], "lv_bt")  # fmt: skip
        if mode == "add":
            x = node("Add", [x, vector], "emb_label")
        else:
            shape = node("Concat", [node("Shape", [x], "emb_shape", end=2), const("E", np.array([c.n_embd]))],
                         "lv_shape", axis=0)  # fmt: skip
            x = node("Concat", [x, node("Expand", [vector, shape], "lv_all")], "emb_label", axis=-1)
    x = node("Transpose", [x], "x0", perm=[1, 0, 2])  # (T, B, E)
    states = ["state0", "state1"] if lstm else ["state0"]
    if not step:  # the learned initial state, repeated over the batch
        batch = node("Gather", [node("Shape", ["ids"], "ids_shape"), "c_zero"], "batch")
        shape = node("Concat", [const("L", np.array([L])), batch, const("H", np.array([H]))], "state_shape", axis=0)
        states = [node("Expand", [const(n, w[n]), shape], f"init_{n}") for n in (["h0", "c0"] if lstm else ["h0"])]
        if mode == "state":  # plus each row's label start, (B, L * H) -> (L, B, H)
            for s, n in enumerate(["h0", "c0"][: len(states)]):
                start = node("Gather", [const(f"label_{n}", w[f"label_{n}.table.weight"]), "label"], f"ls{s}")
                start = node("Reshape", [start, const(f"ls_shape{s}", np.array([-1, L, H]))], f"ls{s}_blh")
                start = node("Transpose", [start], f"ls{s}_lbh", perm=[1, 0, 2])
                states[s] = node("Add", [states[s], start], f"init_label_{n}")
    finals: list[list[str]] = [[], []]
    for i in range(L):
        layer, bounds = [], [const(f"s{i}", np.array([i])), const(f"e{i}", np.array([i + 1])), "c_zero"]
        for s, state in enumerate(states):
            layer.append(node("Slice", [state, *bounds], f"l{i}_s{s}"))
        W = const(f"W{i}", _gates(w[f"rnn.weight_ih_l{i}"], cell, H)[None])
        R = const(f"R{i}", _gates(w[f"rnn.weight_hh_l{i}"], cell, H)[None])
        B = const(
            f"B{i}",
            np.concatenate([_gates(w[f"rnn.bias_ih_l{i}"], cell, H), _gates(w[f"rnn.bias_hh_l{i}"], cell, H)])[None],
        )
        attrs = {"hidden_size": H}
        if cell is nn.GRU:
            attrs["linear_before_reset"] = 1
        if cell is nn.RNN:
            attrs["activations"] = ["Relu" if c.nonlinearity == "relu" else "Tanh"]
        outs = [f"y{i}", f"yh{i}"] + ([f"yc{i}"] if lstm else [])
        node(OPS[cell], [x, W, R, B, "", *layer], outs, **attrs)
        x = node("Squeeze", [f"y{i}", "c_axis1"], f"x{i + 1}")  # (T, 1, B, H) -> (T, B, H)
        finals[0].append(f"yh{i}")
        if lstm:
            finals[1].append(f"yc{i}")
    logits = node(
        "Add",
        [node("MatMul", [x, const("head_w", w["lm_head.weight"].T)], "head"), const("head_b", w["lm_head.bias"])],
        "tbv",
    )
    logits = node("Transpose", [logits], "btv", perm=[1, 0, 2])
    V = w["lm_head.weight"].shape[0]
    if step:
        node("Squeeze", [logits, "c_axis1"], "logits")
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", V])]
        for s, parts in enumerate(finals[: len(states)]):
            node("Concat", parts, f"new_state{s}", axis=0)
            outputs.append(helper.make_tensor_value_info(f"new_state{s}", TensorProto.FLOAT, [L, "batch", H]))
        inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])]
        states = [helper.make_tensor_value_info(s, TensorProto.FLOAT, [L, "batch", H]) for s in states]
    else:
        node("Identity", [logits], "logits")
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", V])]
        inputs, states = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"])], []
    if mode:
        inputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
    inputs += states
    graph = helper.make_graph(nodes, f"makemore_{which}", inputs, outputs, inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))

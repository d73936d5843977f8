"""`makemore info RUN`: what a run is (runs.info.describe_run), as aligned text or JSON."""

from __future__ import annotations

import json
from typing import Any

from makemore.cli.common import Parser
from makemore.data.labels import describe_counts


def cmd_info(argv: list[str]) -> int:
    from makemore.runs.info import describe_run

    parser = Parser(
        prog="makemore info",
        description="Describe a run: model and config, parameter count, steps trained, best val loss, the data it "
        "was trained on (source, sha256, sizes, mode) and, for n-grams, the order in use.",
    )
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="text or json (default: text)")
    args = parser.parse_args(argv)
    info = describe_run(args.run)
    print(json.dumps(info, indent=2, ensure_ascii=False) if args.format == "json" else format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    rows = [
        ("run", info["run"]),
        ("model", info["model"]),
        ("config", ", ".join(f"{key}={value}" for key, value in info["model_config"].items())),
        ("parameters", _size(info)),
        ("trained", _trained(info)),
        ("best val", _best(info)),
    ]
    if "order" in info:
        rows.append(("order", _order(info)))
    rows += _data_rows(info["data"])
    if "auto" in info:
        rows += _auto_rows(info["auto"])
    elif "mix" in info:
        rows += _mix_rows(info["mix"])
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _size(info: dict[str, Any]) -> str:
    if info["stored_values"] != info["parameters"]:  # counts, tables and buffers are not parameters
        return f"{info['parameters']:,} ({info['stored_values']:,} numbers stored in all)"
    return f"{info['parameters']:,}"


def _trained(info: dict[str, Any]) -> str:
    if "auto" in info:
        auto = info["auto"]  # a member mixed as its memory is in "replaced", its memory in "members"
        done, planned = len(auto["members"]) + len(auto.get("replaced", [])), len(auto["planned"])
        return f"--model auto: {done} of {planned} planned members trained, {_mixed(info)} on val"
    if "mix" in info:
        return f"{_mixed(info)} (each member trained on its own)"
    if info["closed_form"]:
        return "fitted in closed form (no training steps)"
    if info["steps"] is None:
        return "not yet (no checkpoint or log)"
    limit = info.get("schedule_steps") or info["max_steps"]
    return f"{info['steps']:,} of {limit:,} steps" if limit else f"{info['steps']:,} steps"


def _mixed(info: dict[str, Any]) -> str:
    if info["model_config"].get("combine") == "log-linear":
        return "log-linear mix (weights fitted by L-BFGS)"
    return "linear mix (weights fitted by EM)"


def _best(info: dict[str, Any]) -> str:
    if info["best_val_loss"] is None:
        return "none yet"
    where = f"step {info['best_step']:,}" if info["best_step"] is not None else "as fitted"
    return f"{info['best_val_loss']:.4f} nats/token ({where})"


def _order(info: dict[str, Any]) -> str:
    configured = info["model_config"]["order"]
    if configured == 0:
        return f"{info['order']} (chosen on held-out data by --order auto)"
    return str(info["order"])


def _data_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    source = data.get("source", "?") + (" (built-in)" if data.get("builtin") else "")
    rows = [("data", source), ("mode", data.get("mode", "line") + _reason(data))]
    if "sha256" in data:
        rows.append(("sha256", data["sha256"]))
    sizes = data.get("sizes")
    if isinstance(sizes, dict):
        unit = "chars" if data.get("mode") == "stream" else "items"
        rows.append(("sizes", ", ".join(f"{name} {count:,}" for name, count in sizes.items()) + f" {unit}"))
    if isinstance(data.get("labels"), list) and isinstance(data.get("label_counts"), dict):
        rows.append(("labels", f"{describe_counts(data['label_counts'], data['labels'])}, {data.get('label_mode')}"))
    return rows


def _reason(data: dict[str, Any]) -> str:
    return f": {data['mode_reason']}" if data.get("mode_reason") else ""


def _mix_rows(mix: dict[str, Any]) -> list[tuple[str, str]]:
    members = zip(mix.get("members", []), mix.get("weights", []))
    rows = [("mix of" if i == 0 else "", f"{weight:.4f}  {member}") for i, (member, weight) in enumerate(members)]
    return rows + [("fitted on", str(mix.get("fitted_on", "val")))]


def _auto_rows(auto: dict[str, Any]) -> list[tuple[str, str]]:
    """--model auto: each member (a run in RUN/parts) with its val NLL, mixture weight and training time."""
    rows = []
    for i, member in enumerate(auto.get("members", [])):
        weight = member.get("weight", 0.0)
        note = "  (adds nothing)" if weight < 0.005 else ""
        value = f"{member['name']:<14} val {member['val_nll']:.4f}  weight {weight:.3f}  {member['elapsed']:.0f} s"
        value += note
        rows.append(("members" if i == 0 else "", value))
    for member in auto.get("replaced", []):  # a recurrent member mixed as its memory (NAME-knn)
        mixed = f"mixed as {member['name']}-knn"
        value = f"{member['name']:<14} val {member['val_nll']:.4f}  {mixed}  {member['elapsed']:.0f} s"
        rows.append(("", value))
    return rows


__all__ = ["cmd_info", "format_info"]

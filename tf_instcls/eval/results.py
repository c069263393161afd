"""Collects the evaluation tools' JSON results into the paper's table layouts."""

from __future__ import annotations

import glob
import json
import os

from tf_instcls.eval.tables import markdown_table

# The paper's reference rows (ImageNet, ResNet-50), quoted from DESIGN.md.
PAPER_TABLE6 = [("Ours (paper, 1000 ep)", 71.4, 90.3), ("MoCo v2", 71.1, None),
                ("PIC", 70.8, 90.0), ("SimCLR", 69.3, 89.0), ("InstDisc (NPID)", 54.0, None)]
PAPER_TABLE7 = [("Ours (paper)", None, 81.8, None, 89.2)]
LAYOUTS = ("summary", "table6", "table7")


def load_results(patterns) -> list[dict]:
    """Every JSON result matching ``patterns`` (files or globs), with its path. A file
    named explicitly must be a result; other JSON files a glob matches are skipped."""
    records = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern)) or ([pattern] if os.path.exists(pattern) else [])
        if not paths:
            raise FileNotFoundError(f"no result file matches {pattern}")
        for path in paths:
            with open(path) as f:
                record = json.load(f)
            if record.get("tool") not in ("eval_knn", "eval_linear", "finetune"):
                if any(ch in pattern for ch in "*?["):
                    continue  # a glob also matches e.g. label_subset_*.json: skip those
                raise ValueError(f"{path} is not a result of eval_knn / eval_linear / "
                                 "finetune (no 'tool' field)")
            record["path"] = path
            records.append(record)
    return records


def collect(records, labels: dict | None = None) -> dict:
    """model name -> {metric: value}: knn_top1/5 (per representation), linear_top1/5,
    ft<fraction>_top1/5."""
    labels = labels or {}
    table: dict = {}
    for record in records:
        for entry in record["results"]:
            name = labels.get(entry.get("model"), entry.get("model", "?"))
            row = table.setdefault(name, {})
            rep = entry.get("representation")
            if record["tool"] == "eval_knn":
                suffix = "" if rep in ("features", "pixels") else f"_{rep}"
                row[f"knn_top1{suffix}"], row[f"knn_top5{suffix}"] = entry["top1"], entry["top5"]
            elif record["tool"] == "eval_linear":
                row["linear_top1"], row["linear_top5"] = entry["top1"], entry["top5"]
            else:
                key = f"ft{record['label_fraction']:g}"
                row[f"{key}_top1"], row[f"{key}_top5"] = entry["top1"], entry["top5"]
    return table


def render(table: dict, layout: str = "summary", *, with_paper: bool = False) -> str:
    def get(row, key):
        value = row.get(key)
        return "-" if value is None else value

    if layout == "table6":
        rows = [[name, get(m, "linear_top1"), get(m, "linear_top5")] for name, m in table.items()]
        if with_paper:
            rows += [[n, t1, "-" if t5 is None else t5] for n, t1, t5 in PAPER_TABLE6]
        return ("Linear evaluation (Table 6 layout)\n\n"
                + markdown_table(["method", "top-1", "top-5"], rows))
    if layout == "table7":
        rows = [[name, get(m, "ft0.01_top1"), get(m, "ft0.01_top5"), get(m, "ft0.1_top1"),
                 get(m, "ft0.1_top5")] for name, m in table.items()]
        if with_paper:
            rows += [[r[0], *("-" if v is None else v for v in r[1:])] for r in PAPER_TABLE7]
        return ("Semi-supervised fine-tuning (Table 7 layout)\n\n"
                + markdown_table(["method", "1% top-1", "1% top-5", "10% top-1", "10% top-5"],
                                 rows))
    if layout != "summary":
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    keys = sorted({k for m in table.values() for k in m}, key=_metric_order)
    rows = [[name] + [get(m, k) for k in keys] for name, m in table.items()]
    return "All protocols\n\n" + markdown_table(["model"] + keys, rows)


def _metric_order(key: str):
    order = ("knn", "linear", "ft")
    return (next((i for i, p in enumerate(order) if key.startswith(p)), 9), key)

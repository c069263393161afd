"""One runner for every evaluator: the model and its baselines (the same network at
random initialisation, raw pixels), the feature cache, one console line per result and
the JSON + Markdown report. The evaluation tools are thin binaries around it."""

from __future__ import annotations

from tf_instcls.eval import common
from tf_instcls.eval.tables import markdown_table


def load_models(path: str, mesh, *, checkpoint: str | None = None, baselines: bool = False,
                cache_dir: str | None = None, batch_size: int = 256) -> list:
    """The model at ``path`` (model_dir or export) on ``mesh``; with ``baselines`` also
    the same architecture at random initialisation and raw pixels. Features are cached
    in ``cache_dir`` (keyed by checkpoint, data and image size)."""
    model = common.load_eval_model(path, mesh, checkpoint=checkpoint)
    model.cache_dir, model.batch_size = cache_dir, batch_size
    models = [model]
    if baselines:
        fresh = common.load_eval_model(path, mesh, checkpoint=checkpoint, random_init=True)
        fresh.cache_dir, fresh.batch_size = cache_dir, batch_size
        models += [fresh, common.RawPixels(model.image_size)]
    return models


def evaluate(evaluator, models, splits, *, out_dir: str, report: str, tool: str,
             heading: str, record: dict | None = None) -> dict:
    """Runs ``evaluator`` on every model; writes ``out_dir/report.{json,md}``.

    The record is ``{"tool", "data", <evaluator.describe()>, **record, "results"}``, one
    result per (model, representation) with the model's description; the Markdown is
    ``heading``, the table and the evaluator's own sections.
    """
    out = {"tool": tool, "data": splits.description, **evaluator.describe(),
           **(record or {}), "results": []}
    headers = ["model", "representation", "top-1", "top-5"] + [h for h, _ in evaluator.columns]
    rows = []
    for model in models:
        for name, result in evaluator.run(model, splits).items():
            entry = {**model.describe(), "representation": name, **result}
            out["results"].append(entry)
            label = entry.get("model", model.name)
            rows.append([label, name, result.get("top1", "-"), result.get("top5", "-")]
                        + [result.get(key, "-") for _, key in evaluator.columns])
            line = f"{label} [{name}]: {evaluator.title}"
            if "top1" in result:
                line += f" top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%"
            if "train_top1" in result:
                line += f"  (train {result['train_top1']:.2f}%)"
            if "instance_acc" in result:
                line += f" {result['instance_acc']:.2f}%"
            print(line, flush=True)
    markdown = (heading + markdown_table(headers, rows)
                + (evaluator.markdown(out["results"]) if hasattr(evaluator, "markdown")
                   else ""))
    json_path, md_path = common.write_results(out_dir, report, out, markdown)
    print(f"wrote {json_path} and {md_path}")
    return out

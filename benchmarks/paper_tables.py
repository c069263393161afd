"""The results page of ``run_ablation.py --grid=paper``: one table per paper table (our
mean +- sample std beside the paper's number and the effect column), SimCLR's tuning,
every run's own numbers, and one figure of all rows with error bars.

``write(work_dir, results, tuning, chosen)`` writes <work_dir>/paper_tables.md, .json and
.png; ``results`` and ``tuning`` are ``run_ablation.run_rows`` rows, ``chosen`` the name of
the tuning run that ``run_ablation.simclr_choice`` picked.
"""

from __future__ import annotations

import json
import os

# (title, rows, what the paper's column holds, the paper's figure of each row)
TABLES = [
    ("Table 2: what each component buys (each row against the row above)",
     ["linear_head", "mlp", "mlp_prior", "recipe"],
     "ImageNet, ResNet-50, 200 epochs, linear top-1",
     {"linear_head": 58.6, "mlp": 67.3, "mlp_prior": 67.6, "recipe": 68.2}),
    ("Our departure from the paper: W's own step (against the recipe)",
     ["recipe", "paper_optimizer"], "-", {}),
    ("Table 3: full against sampled softmax (no prior, no smoothing)",
     ["mlp", "sampled_1024"], "ImageNet, ResNet-50, 200 epochs, linear top-1",
     {"mlp": 67.3, "sampled_1024": 64.8}),
    ("Table 4: Gaussian against prior W early in training (no smoothing)",
     ["gaussian_5ep", "prior_5ep", "gaussian_20ep", "prior_20ep"],
     "ImageNet, 10 / 25 epochs (the paper has no 5 / 20), linear top-1",
     {"gaussian_5ep": "12.4 (10 ep)", "prior_5ep": "27.4 (10 ep)",
      "gaussian_20ep": "40.8 (25 ep)", "prior_20ep": "46.3 (25 ep)"}),
    ("Baselines (against the recipe)",
     ["recipe", "npid_nce", "simclr"],
     "ImageNet, ResNet-50, 1000 epochs, linear top-1 (Table 6)",
     {"recipe": 71.4, "npid_nce": 54.0, "simclr": 69.3}),
]
METRICS = [("knn_top1", "kNN backbone"), ("knn_embedding_top1", "kNN embedding"),
           ("linear_top1", "linear")]


def _cell(row: dict, key: str) -> str:
    mean, std = row.get(key), row.get(key + "_std")
    if mean is None:
        return "-"
    return f"{mean:.2f}" + ("" if std is None else f" +- {std:.2f}")


def _table(rows: list[dict], paper: dict, paper_header: str) -> str:
    from tf_instcls.eval.tables import markdown_table

    keys = [(k, h) for k, h in METRICS if any(r.get(k) is not None for r in rows)]
    headers = (["row", "setting", "epochs"] + [h for _, h in keys]
               + [f"effect ({h})" for _, h in keys] + [f"paper ({paper_header})"])
    body = [[r["name"], r["description"], r["epochs"]] + [_cell(r, k) for k, _ in keys]
            + [r.get(f"vs_reference_{k}", "-") if r["reference"] in {x["name"] for x in rows}
               else "-" for k, _ in keys]
            + [paper.get(r["name"], "-")] for r in rows]
    return markdown_table(headers, body)


def _every_run(results: list[dict]) -> str:
    from tf_instcls.eval.tables import markdown_table

    def num(v, digits=2):
        return "-" if v is None else f"{v:.{digits}f}"

    body = [[s["name"], s["epochs"], num(s.get("knn_top1")), num(s.get("knn_embedding_top1")),
             num(s.get("linear_top1")), num(s.get("final_loss")), num(s.get("train_wall_s"), 0)]
            for r in results for s in r["per_seed"]]
    return markdown_table(["run / seed", "epochs", "kNN backbone", "kNN embedding", "linear",
                           "final loss", "train s"], body)


def figure(results: list[dict], path: str) -> None:
    """Every row's mean +- std (bars) and its seeds (dots), backbone and embedding kNN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.42 * len(results) + 1.2))
    for offset, (key, label, colour) in enumerate(
            [("knn_top1", "kNN, backbone features", "C0"),
             ("knn_embedding_top1", "kNN, head embedding", "C1")]):
        ys = [i + 0.18 * (offset * 2 - 1) for i in range(len(results))]
        means = [r.get(key) for r in results]
        shown = [(y, m, r.get(key + "_std") or 0.0) for y, m, r in zip(ys, means, results)
                 if m is not None]
        if not shown:
            continue
        ax.errorbar([m for _, m, _ in shown], [y for y, _, _ in shown],
                    xerr=[s for _, _, s in shown], fmt="o", color=colour, capsize=3,
                    label=label)
        for y, r in zip(ys, results):
            seeds = [s.get(key) for s in r["per_seed"] if s.get(key) is not None]
            ax.plot(seeds, [y] * len(seeds), ".", color=colour, alpha=0.35, markersize=4)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels([f"{r['name']} ({r['epochs']} ep)" for r in results])
    ax.invert_yaxis()
    ax.set_xlabel("weighted kNN top-1 on the 1,017 held-out images (%), mean +- std, seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(work_dir: str, results: list[dict], tuning: list[dict],
          chosen: str | None = None) -> str:
    """Writes the page, its JSON and its figure; returns the page's path."""
    by_name = {r["name"]: r for r in results}
    parts = ["# The paper's tables on the CIFAR-10 subset\n",
             "Every row: split 0 (4,068 training / 1,017 held-out images), 24 px training "
             "views, batch 128, seeds " + ", ".join(map(str, results[0]["seeds"]))
             + ", mean +- sample std; kNN k = 200, T = 0.07. An effect is called only when "
             "the difference of means exceeds the larger of the two rows' stds.\n"]
    for title, names, paper_header, paper in TABLES:
        rows = [by_name[n] for n in names if n in by_name]
        if rows:
            parts += [f"## {title}\n", _table(rows, paper, paper_header)]
    if tuning:
        from tf_instcls.eval.tables import markdown_table

        parts += [f"## SimCLR's tuning (split 1, seed 0, {tuning[0]['epochs']} epochs)\n",
                  markdown_table(["run", "setting", "kNN backbone", "kNN embedding", "chosen"],
                                 [[r["name"], r["description"], _cell(r, "knn_top1"),
                                   _cell(r, "knn_embedding_top1"),
                                   "yes" if r["name"] == chosen else ""] for r in tuning])]
    parts += ["## Every run\n", _every_run(tuning + results)]
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, "paper_tables.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    with open(os.path.join(work_dir, "paper_tables.json"), "w") as f:
        json.dump({"results": results, "simclr_tuning": tuning, "simclr_choice": chosen}, f,
                  indent=1)
    figure(results, os.path.join(work_dir, "paper_tables.png"))
    return path

r"""Collects evaluation JSON results (eval_knn / eval_linear / finetune) of one or more
runs into Markdown tables in the paper's layouts.

  python tools/results_table.py --inputs='runs/*/eval/*.json' --layout=summary
  python tools/results_table.py --inputs=runs/a/eval/linear.json,runs/b/eval/linear.json \
      --layout=table6 --with_paper --label="a=Ours (200 ep)" --out=runs/table6.md

Layouts: summary (every metric found), table6 (linear top-1/top-5), table7 (1% / 10%
fine-tuning top-1/top-5).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("inputs", None, "Result JSON files or globs (comma-separated).")
flags.DEFINE_enum("layout", "summary", ["summary", "table6", "table7"], "Table layout.")
flags.DEFINE_multi_string("label", [], "Display name: MODEL=NAME (repeatable).")
flags.DEFINE_bool("with_paper", False, "Add the paper's reference rows.")
flags.DEFINE_string("out", None, "Write the Markdown here (and .json beside); else print.")
flags.mark_flag_as_required("inputs")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tf_instcls.eval import results

    labels = {}
    for item in FLAGS.label:
        if "=" not in item:
            raise app.UsageError(f"--label must be MODEL=NAME; got {item!r}")
        key, value = item.split("=", 1)
        labels[key] = value
    try:
        table = results.collect(results.load_results(FLAGS.inputs), labels)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
        raise app.UsageError(str(err)) from err
    md = results.render(table, FLAGS.layout, with_paper=FLAGS.with_paper)
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write(md)
        with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
            json.dump(table, f, indent=1)
        print(f"wrote {FLAGS.out}")
    print(md)


def run():
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    app.run(main)

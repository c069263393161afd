"""Weighted kNN evaluation.

The binary is tf_instcls/cli/eval_knn.py; installed, it is also `tf-instcls-eval-knn`.
"""

from tf_instcls.cli.eval_knn import run

if __name__ == "__main__":
    run()

"""Linear-probe evaluation.

The binary is tf_instcls/cli/eval_linear.py; installed, it is also `tf-instcls-eval-linear`.
"""

from tf_instcls.cli.eval_linear import run

if __name__ == "__main__":
    run()

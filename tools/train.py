"""Pretraining.

The binary is tf_instcls/cli/train.py; installed, it is also `tf-instcls-train`.
"""

from tf_instcls.cli.train import run

if __name__ == "__main__":
    run()

"""Semi-supervised and transfer fine-tuning.

The binary is tf_instcls/cli/finetune.py; installed, it is also `tf-instcls-finetune`.
"""

from tf_instcls.cli.finetune import run

if __name__ == "__main__":
    run()

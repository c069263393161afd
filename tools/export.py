"""SavedModel export of a run's encoder.

The binary is tf_instcls/cli/export.py; installed, it is also `tf-instcls-export`.
"""

from tf_instcls.cli.export import run

if __name__ == "__main__":
    run()

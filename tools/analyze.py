"""Curves, Fig. 1b, retrieval grid and projector files of a run.

The binary is tf_instcls/cli/analyze.py; installed, it is also `tf-instcls-analyze`.
"""

from tf_instcls.cli.analyze import run

if __name__ == "__main__":
    run()

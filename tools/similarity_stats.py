"""The paper's Fig. 4 statistics per W initialisation.

The binary is tf_instcls/cli/similarity_stats.py; installed, also
`tf-instcls-similarity-stats`.
"""

from tf_instcls.cli.similarity_stats import run

if __name__ == "__main__":
    run()

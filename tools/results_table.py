"""Result JSONs as paper-layout Markdown tables.

The binary is tf_instcls/cli/results_table.py; installed, it is also `tf-instcls-results-table`.
"""

from tf_instcls.cli.results_table import run

if __name__ == "__main__":
    run()

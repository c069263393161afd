"""Embeddings and nearest-neighbour queries of an export.

The binary is tf_instcls/cli/embed.py; installed, it is also `tf-instcls-embed`.
"""

from tf_instcls.cli.embed import run

if __name__ == "__main__":
    run()

"""Runs one of tools/*.py with TFDS mocked (``tfds.testing.mock_data``): deterministic
fake examples shaped by the real datasets' metadata, no download, no internet.

  python tests/tfds_mock_tool.py NUM_EXAMPLES tools/eval_knn.py --flag=... ...
"""

import os
import runpy
import sys

if __name__ == "__main__":
    num_examples, tool = int(sys.argv[1]), sys.argv[2]
    import tensorflow_datasets as tfds

    sys.argv = [tool, *sys.argv[3:]]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(tool))))
    with tfds.testing.mock_data(num_examples=num_examples):
        runpy.run_path(tool, run_name="__main__")

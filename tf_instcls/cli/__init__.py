"""The user's binaries: absl mains over the library, with gin at the edge.

Each module is one binary (``python -m tf_instcls.cli.train``, the console script
``tf-instcls-train``, or ``python tools/train.py`` in a checkout). absl flags and gin live
here and nowhere below.
"""

import os

# TensorFlow's C++ INFO / WARNING start-up lines are not for users (errors still show);
# TF_CPP_MIN_LOG_LEVEL=0 brings them back. Set before any binary imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

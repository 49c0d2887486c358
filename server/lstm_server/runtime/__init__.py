"""The model runtime: the only package that imports TensorFlow and Keras.

``load_runtime`` loads (or builds) the LSTM, checks that it can be served, rebuilds it with
``return_sequences=True`` and ``return_state=True`` and wraps it in a compiled, stateless
function of ``(x, h0, c0)``. Import it lazily: importing TensorFlow takes seconds.
"""

import os
import sys

# Keep TensorFlow's C++ start-up chatter out of the server log; an operator's setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keras imports matplotlib.pyplot for its plotting utilities when matplotlib is installed (a
# development environment, a notebook image): 0.7 s of start-up and about 20 MB the server never
# uses. Until Keras is imported (tf_runtime.py), matplotlib cannot be; then it can again.
if "keras" not in sys.modules and "matplotlib" not in sys.modules:
    sys.modules["matplotlib"] = None  # type: ignore[assignment]

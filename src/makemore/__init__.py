"""makemore: character-level language models, from counting to attention. Train on a text file, make more of it.

import makemore
makemore.train(input="names.txt", model="gru", out="runs/names-gru")   # what `makemore train` does
run = makemore.load("runs/names-gru")                                  # a trained run
run.sample(n=5, prefix="ja")
"""

from makemore.api import Run, build_knn, describe_run, load, mix_runs, train

__version__ = "0.1.0"
__all__ = ["Run", "build_knn", "describe_run", "load", "mix_runs", "train", "__version__"]

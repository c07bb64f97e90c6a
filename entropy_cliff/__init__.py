"""entropy-cliff: where the training set's conditional entropy hits zero, and how to move it.

Analysis side of the toolkit (never imports torch):

- :mod:`entropy_cliff.theory`     t*, Proposition 1 bound, data thresholds (paper §2.1)
- :mod:`entropy_cliff.schedules`  codebook-size schedules K_t (paper §3, Eq. 3)
- :mod:`entropy_cliff.measure`    exact per-position conditional entropy of a token corpus
- :mod:`entropy_cliff.estimators` plug-in / Miller–Madow estimators, bootstrap
- :mod:`entropy_cliff.assign`     nested-prefix nearest-codebook assignment (FAISS)
- :mod:`entropy_cliff.io`         corpora, sidecars, atomic writes
- :mod:`entropy_cliff.plots`      figures
"""

from entropy_cliff.errors import EntropyCliffError

__version__ = "0.1.0"
__all__ = ["EntropyCliffError", "__version__"]

"""vcq: Variable Codebook Size Quantization tokenizers and AR models (PyTorch).

Trains 1D image tokenizers whose codebook size K_t follows a schedule from
:mod:`entropy_cliff.schedules`, class-conditional AR models over their tokens, and dumps token
corpora that :mod:`entropy_cliff.measure` reads directly.
"""

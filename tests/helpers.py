"""Helpers shared by several test modules (pytest puts this folder on sys.path)."""

import numpy as np
import pytest

from entropy_cliff.cli import main

#: Measurement fields compared to 1e-9 bits between engines and corpus layouts.
FIELDS = ("H_prefix", "H_cond", "H_cond_mm", "H_marginal", "utilization")


def run(capsys, *argv):
    """Run ``entropy-cliff ARGV``; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_same(a, b):
    """Two measurements of one corpus agree: every field to 1e-9 bits, ``groups`` and K_t exactly."""
    assert a.N == b.N and a.L == b.L and a.K_inferred == b.K_inferred
    np.testing.assert_array_equal(a.K, b.K)
    np.testing.assert_array_equal(a.groups, b.groups)
    for f in FIELDS:
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=0, atol=1e-9, equal_nan=True)

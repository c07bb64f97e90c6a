"""The project's exception type.

Library functions raise :class:`EntropyCliffError` with a message a user can act on; only the
command-line layers (``entropy_cliff.cli``, ``vcq.cli``) turn it into one stderr line and exit
status 2.
"""


class EntropyCliffError(ValueError):
    """Bad input or an impossible request, with a one-line explanation."""

"""The one exception type users see: the CLI prints its message on one line and exits with status 2."""


class MakemoreError(Exception):
    """Bad input, a bad flag value or a bad run directory: something the user can fix."""

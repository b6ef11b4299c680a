"""The error every stage raises when it cannot do its job."""


class StageError(RuntimeError):
    """A stage could not do its job. The message says what went wrong and what to do next;
    the CLI prints it without a traceback and exits 2."""

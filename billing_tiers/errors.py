"""The one exception type the CLI turns into a one-line message (no traceback)."""


class PipelineError(Exception):
    """A refusal or failure an operator can act on; the message says what and where."""

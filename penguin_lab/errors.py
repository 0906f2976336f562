"""The one error type the lab reports to users as a single line."""


class LabError(Exception):
    """A problem with the user's input or environment: shown as one line, exit code 2."""

    exit_code = 2

"""User-facing errors: each carries one line that says what is wrong and with which file or value.
Tools catch `UserError` subclasses, print `error: <message>` and exit 2."""


class UserError(Exception):
    """Bad input from the user (file, checkpoint, argument); the message is one line."""


class CheckpointError(UserError):
    """A checkpoint is missing, partial, corrupt, or does not match its config."""

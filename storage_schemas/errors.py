"""The one error the data contract raises, so CLIs can print it as a single line."""


class DatasetError(Exception):
    """A dataset or shard that is missing, corrupt or of another schema version.

    The message is one line and names the shard or path, because the user's next step
    (delete the shard, re-run collect, upgrade t3d) depends on which one it is.
    """


def first_line(err: BaseException) -> str:
    """The first line of an underlying error, for a one-line DatasetError message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__

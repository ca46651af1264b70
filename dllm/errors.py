"""Errors a user can fix: the CLIs print them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (a path, a checkpoint, a prompt, an option): the message names it."""

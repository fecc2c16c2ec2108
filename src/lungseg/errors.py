"""The base of every error caused by the user's input (data, params, files, servers), not by a bug."""


class UserError(Exception):
    """Bad input: the message names the file, key or address, and the problem. Shown without a traceback."""

"""The errors a user can fix: each message names the setting, file or key to change, and the
CLI prints it in one line (no traceback)."""


class UserError(Exception):
    """A setting, file or configuration that cannot work as given."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work; the message names the key."""


class RunDirectoryError(UserError, ValueError):
    """A run directory holds a run made with other settings, or a file that cannot be read."""

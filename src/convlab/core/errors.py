"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class ConvlabError(Exception):
    """A problem with the user's input (config value, data, device, checkpoint)."""


class ConfigError(ConvlabError):
    """A config value that is missing, of the wrong type or out of range."""


class Diverged(ConvlabError):
    """A loss or metric that is no longer finite: the run ends "diverged", a result rather than a crash."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run ends with its last checkpoint and an "interrupted" summary."""

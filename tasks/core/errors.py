"""Typed errors. A FabshipError is a user-facing problem: shown as one clear
line, never as a traceback (tasks/cli/base.py's task boundary), exiting with its
class's exit_code (the table: tasks/core/output.py, README "Exit codes")."""


class FabshipError(Exception):
    """Base for every error that is the user's or the environment's, not a bug."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(FabshipError):
    """Inventory or command-line input is invalid. Raised before any connection."""

    exit_code = 2

    def __init__(self, path, key: str, problem: str):
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class DiscoveryError(FabshipError):
    """Host discovery failed or returned an unacceptable host set."""


class HostKeyError(FabshipError):
    """A host key was unknown or changed (strict checking): the host is not reached."""

    exit_code = 4


class ConnectError(FabshipError):
    """A host could not be reached or authenticated."""

    exit_code = 4


class LockError(FabshipError):
    """The per-app deploy lock is held by someone else."""

    exit_code = 3


class StepFailed(FabshipError):
    """A step on a host failed; carries the details shown once in the summary."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details

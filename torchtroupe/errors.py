"""The exception hierarchy of torchtroupe.

Every error the library raises derives from :class:`TroupeError`. Errors raised
*by an actor's code* come back as their own type (see ``remote_errors.py``); the
classes here describe what went wrong *around* the user's code.

Like trio, we separate "you closed it" (:class:`GroupClosedError`,
:class:`ChannelClosedError`) from "something outside broke it"
(:class:`ActorDiedError`, :class:`ChannelBrokenError`).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence


class TroupeError(Exception):
    """The root of every error torchtroupe raises."""


class RemoteError(TroupeError):
    """An actor raised an exception that could not be rebuilt in the caller.

    Attributes:
        type_name: Qualified name of the remote exception's type.
        message: ``str()`` of the remote exception.
        remote_traceback: The remote traceback, formatted in the actor's process.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n\nRemote traceback:\n{self.remote_traceback}"


class ActorInitError(TroupeError):
    """A rank failed before it was ready: in ``__init__`` or while starting.

    The remote exception, with its real frames, is the ``__cause__``.

    Attributes:
        rank: The rank that failed.
        actor_name: The actor class's qualified name.
    """

    def __init__(self, message: str, *, rank: int, actor_name: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.actor_name = actor_name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_init_error, (str(self), self.rank, self.actor_name))


def _rebuild_init_error(message: str, rank: int, actor_name: str) -> ActorInitError:
    return ActorInitError(message, rank=rank, actor_name=actor_name)


def describe_exit(exitcode: int | None) -> str:
    """Says how a process ended, naming the signal for a negative exit code."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class ActorDiedError(TroupeError):
    """The rank's process ended while a call needed it.

    Attributes:
        rank: The rank that died.
        pid: Its process id.
        exitcode: The exit code, negative for a signal (as ``multiprocessing``),
            or None if not yet known.
        signal_name: The name of the killing signal (``"SIGKILL"``), or None.
        reason: What the rank recorded before it died (``tt.fatal(reason)``), if anything.
    """

    def __init__(
        self,
        *,
        rank: int,
        pid: int | None,
        exitcode: int | None,
        group: str = "",
        reason: str | None = None,
    ) -> None:
        self.rank = rank
        self.pid = pid
        self.exitcode = exitcode
        self.group = group
        self.reason = reason
        self.signal_name: str | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal_name = signal.Signals(-exitcode).name
            except ValueError:
                self.signal_name = f"signal {-exitcode}"
        where = f"group {group!r} " if group else ""
        text = f"{where}rank {rank} (pid {pid}) {describe_exit(exitcode)}"
        if reason:
            text += f": {reason}"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_died_error, (self.rank, self.pid, self.exitcode, self.group, self.reason))


def _rebuild_died_error(
    rank: int, pid: int | None, exitcode: int | None, group: str, reason: str | None
) -> ActorDiedError:
    return ActorDiedError(rank=rank, pid=pid, exitcode=exitcode, group=group, reason=reason)


class CallTimeoutError(TroupeError, TimeoutError):
    """A call's ``timeout=`` passed before its answer arrived."""


class GroupClosedError(TroupeError):
    """The group was shut down, or its supervisor gave up on it."""


class SupervisionError(TroupeError):
    """A supervisor exceeded its restart intensity and gave up.

    Attributes:
        failures: Every failure that counted, root cause first.
    """

    def __init__(self, message: str, failures: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.failures: tuple[BaseException, ...] = tuple(failures)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.failures))


class GroupError(TroupeError, ExceptionGroup[Exception]):
    """Some ranks of a broadcast or scatter failed: one exception per failed rank.

    It is an :class:`ExceptionGroup`, so ``except* ValueError`` picks out the ranks
    that raised ``ValueError``. Each entry carries a note naming its rank.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> GroupError:
        return super().__new__(cls, message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> GroupError:  # type: ignore[override]
        return GroupError(self.message, excs)


class ChannelClosedError(TroupeError):
    """A ring was closed in an orderly way by its other end (or by this one)."""


class ChannelBrokenError(TroupeError):
    """A ring's peer died or the ring was marked broken by a supervisor."""

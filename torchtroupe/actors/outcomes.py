"""What a call gets when something happens to its ranks: one rule, one home.

Runs in the caller's threads. Every error a pending or new call receives on death,
timeout, shutdown or give-up is made here, so the table below is the whole rule
(DESIGN.md, Errors)::

    event                                   call in flight          call made after
    --------------------------------------  ----------------------  ---------------------------
    rank dies, stays dead                   ActorDiedError          ActorDiedError at once
    rank dies, will be restarted            ActorDiedError          waits, new incarnation
    sibling stopped for a restart           ActorDiedError (cause)  waits, new incarnation
    the group (or its tree) gives up        SupervisionError        GroupClosedError from it
    shutdown()                              GroupClosedError        GroupClosedError
    the call's timeout passes               CallTimeoutError        -

"In flight" means sent to the rank and not yet answered, with one exception: a call
made on the direct path that a rank which died idle never read was made after the
death, and waits for the next incarnation (Note [Calls a dead rank never read] in
``deaths.py``). A broadcast or
scatter applies the rows per rank and raises ``GroupError``, except when the whole
group closed or gave up: then every call form raises that one error itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import (
    ActorDiedError,
    CallTimeoutError,
    GroupClosedError,
    GroupError,
    SupervisionError,
    describe_exit,
)
from .slots import CallSlot


def died_in_flight(death: ActorDiedError, endpoint: str) -> ActorDiedError:
    """The error of a call to ``endpoint`` that the rank had read when it died."""
    copy = ActorDiedError(
        rank=death.rank,
        pid=death.pid,
        exitcode=death.exitcode,
        group=death.group,
        reason=death.reason,
    )
    copy.__cause__ = death.__cause__
    copy.add_note(f"the call to endpoint {endpoint!r} was in flight when the rank died")
    return copy


def stopped_because(cause: BaseException | None, reason: str) -> str:
    """The reason recorded for a rank stopped on purpose (for a sibling's restart,
    say), naming the rank whose death caused it."""
    if isinstance(cause, ActorDiedError):
        return (
            f"{reason}, after rank {cause.rank} (pid {cause.pid}) {describe_exit(cause.exitcode)}"
        )
    return reason


def shut_down(group: str) -> GroupClosedError:
    """What every call gets once ``shutdown()`` began."""
    return GroupClosedError(f"group {group!r} was shut down")


def closed_after_give_up(group: str, gave_up: SupervisionError) -> GroupClosedError:
    """What a call made after the group (or its tree) gave up gets."""
    error = GroupClosedError(f"group {group!r} gave up after too many restarts: {gave_up}")
    error.__cause__ = gave_up
    return error


def is_group_wide(error: BaseException | None) -> bool:
    """True for the errors that end the whole group rather than one rank."""
    return isinstance(error, (GroupClosedError, SupervisionError))


def gather(slots: Sequence[CallSlot], group: str, endpoint: str) -> list[Any]:
    """The results of a multi-rank call in rank order, or the error it raises.

    Raises:
        GroupClosedError, SupervisionError: The whole group closed or gave up.
        CallTimeoutError: A rank did not answer in time.
        GroupError: One entry per rank that raised or died.
    """
    errors = [slot.error for slot in slots if slot.error is not None]
    if not errors:
        return [slot.value for slot in slots]
    for error in errors:
        if is_group_wide(error) or isinstance(error, CallTimeoutError):
            raise error
    raise GroupError(
        f"{len(errors)} of {len(slots)} ranks of group {group!r} failed in {endpoint!r}",
        [e if isinstance(e, Exception) else RuntimeError(repr(e)) for e in errors],
    )


def timed_out(slots: Sequence[CallSlot], group: str, endpoint: str, timeout: float | None) -> str:
    """The message of a call's CallTimeoutError: the late ranks, and those that died."""
    late = [slot.rank for slot in slots if not slot.done]
    text = f"{endpoint!r} on rank(s) {late} of group {group!r} got no answer within {timeout}s"
    dead = [
        f"rank {slot.rank} ({slot.error})"
        for slot in slots
        if slot.done and isinstance(slot.error, ActorDiedError)
    ]
    if dead:
        text += "; meanwhile " + "; ".join(dead)
    return text


def timeout_error(
    slots: Sequence[CallSlot], group: str, endpoint: str, timeout: float | None
) -> CallTimeoutError:
    """A CallTimeoutError for ``slots`` (see :func:`timed_out`)."""
    return CallTimeoutError(timed_out(slots, group, endpoint, timeout))


def stopping_message(
    group: str, busy: Sequence[tuple[int, str, str]], world_size: int, timeout: float
) -> str:
    """What a Ctrl-C'd shutdown says it waits for: ``busy`` holds (rank, description,
    endpoint) of each call in flight."""
    seen = sorted({(rank, who, endpoint) for rank, who, endpoint in busy})
    what = ", ".join(f"{who} in {endpoint!r}" for _, who, endpoint in seen)
    what = what or f"the {world_size} rank(s) of group {group!r}"
    return (
        f"torchtroupe: stopping group {group!r}: waiting up to {timeout:g}s for {what}; "
        f"press Ctrl-C again to kill the ranks at once\n"
    )

"""``RestartAuthority``: who decides what follows a rank's death.

The actors floor defines this small protocol and ``supervision/`` implements it (a
group's own restart policy, or a supervisor), so no restart decision is taken here
and nothing here imports the floor above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import ActorDiedError

if TYPE_CHECKING:
    from .lifecycle import GroupLifecycle  # a sibling module


class RestartAuthority(Protocol):
    """Decides what follows a rank's death; ``supervision/`` implements it."""

    def rank_died(self, group: GroupLifecycle, rank: int, death: ActorDiedError) -> None:
        """Called on the monitor thread once ``rank``'s death is recorded and its calls
        in flight failed. Must answer, now or from :meth:`GroupLifecycle.in_background`,
        with ``restart``, ``stay_dead`` or ``give_up``; calls to the rank wait until then.
        """

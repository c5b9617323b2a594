"""torchtroupe: a Ray-free actor framework for PyTorch on one machine.

Each rank is a supervised process that owns an actor object and serves calls to
its endpoints through shared-memory rings. See ``docs/`` for the guide.
"""

import logging

from .actors import Actor as Actor
from .actors import ActorGroup as ActorGroup
from .actors import ActorRef as ActorRef
from .actors import endpoint as endpoint
from .actors import fatal as fatal
from .errors import ActorDiedError as ActorDiedError
from .errors import ActorInitError as ActorInitError
from .errors import CallTimeoutError as CallTimeoutError
from .errors import GroupClosedError as GroupClosedError
from .errors import GroupError as GroupError
from .errors import RemoteError as RemoteError
from .errors import SupervisionError as SupervisionError
from .errors import TroupeError as TroupeError
from .supervision import ChildSpec as ChildSpec
from .supervision import RestartPolicy as RestartPolicy
from .supervision import SupervisionEvent as SupervisionEvent
from .supervision import Supervisor as Supervisor
from .supervision import SupervisorSpec as SupervisorSpec
from .supervision import spawn as spawn

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Actor",
    "ActorDiedError",
    "ActorGroup",
    "ActorInitError",
    "ActorRef",
    "CallTimeoutError",
    "ChildSpec",
    "GroupClosedError",
    "GroupError",
    "RemoteError",
    "RestartPolicy",
    "SupervisionError",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorSpec",
    "TroupeError",
    "endpoint",
    "fatal",
    "spawn",
]

"""A rank's process: boot, build the actor, serve calls until told to stop.

Runs in the rank's process only. The order of the handshake with the caller::

    caller                                   rank
    ------                                   ----
    start process (boot record, death pipe)  processes.lifeline.bind: ignore SIGINT, close the
                                             inherited forkserver lifeline, PR_SET_PDEATHSIG,
                                             lead a process group with a keeper, watch death pipe
                                             set RANK/WORLD_SIZE/... and the CUDA device
                                             join torch.distributed (if asked)
                                             build the actor (runs __init__)
    wait for the READY / ERROR reply  <----  Reply(ready_seq, READY, pid) or ERROR
    requests  ----------------------------> serve, one at a time, in order
    Request(STOP)  ------------------------> Reply(STOPPED), leave the process group, exit 0
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import cloudpickle
import torch

from .._remote_errors import capture
from .._settings import SETTINGS
from ..errors import ChannelBrokenError, ChannelClosedError
from ..processes import lifeline
from ..transport.arena import TensorArena
from ..transport.codec import (
    TARGET_ALL,
    EncodedMessage,
    Encoder,
    decode,
    loads,
    peek_target,
    send_encoded,
)
from ..transport.fdpass import FdChannel
from ..transport.mailbox import MailboxLayout, RankEnd
from ..transport.stream import IncomingMessage, MessageAbortedError
from ..transport.waiting import WaitStrategy, spin_window_s
from .actor import Actor, fatal_hook
from .messages import CALL, ERROR, FATAL, NO_SEQ, READY, RESULT, RUN, STOP, STOPPED

RANK_MODULE = __name__
"""The module the forkserver preloads so that a new rank starts with its code imported."""

FATAL_EXIT_CODE = 70
"""Exit code of a rank that ended through ``tt.fatal`` or a sticky CUDA error."""

_PARK_SLICE_S = 1.0
_STORE_TIMEOUT_S = 300.0
_STORE_BACKLOG = 4096
logger = logging.getLogger(__name__)
_FD_TIMEOUT_S = 30.0  # fds are sent before their message is published: never long
_STICKY_CUDA_ERRORS = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
)


@dataclass(frozen=True, slots=True)
class RankBoot:
    """Everything a rank needs to start; pickled to the new process.

    ``actor`` holds the class, args and kwargs cloudpickled, so classes defined in
    ``__main__`` or a notebook work.
    """

    group: str
    rank: int
    world_size: int
    layout: MailboxLayout
    actor: bytes
    ready_seq: int
    device_index: int | None
    master_port: int
    distributed: str | None
    supervisor_pid: int
    signal_supervisor: bool
    env: dict[str, str] = field(default_factory=dict)


def _is_sticky_cuda_error(text: str) -> bool:
    return "CUDA" in text and any(marker in text for marker in _STICKY_CUDA_ERRORS)


class RankRuntime:
    """The serve loop of one rank.

    Note [A rank keeps its last request]
    ------------------------------------
    The arguments of a request stay referenced until the next request for this rank
    arrives. A CUDA tensor received by IPC handle is mapped through torch's consumer
    cache, keyed by the handle, which holds the mapping only while a tensor on it is
    alive: were the arguments dropped right after the call, every send of the same
    storage (weights, a KV cache, a rollout buffer) would open and close the IPC
    mapping again, about 70 µs each way on an H200 host. The cost is that a rank
    holds its last arguments while it idles.
    """

    def __init__(self, boot: RankBoot, fds: FdChannel) -> None:
        self.boot = boot
        # A rank's liveness check is its death-pipe thread, so parked waits can be long.
        strategy = WaitStrategy(spin_s=spin_window_s(boot.world_size), park_slice_s=_PARK_SLICE_S)
        self.end = RankEnd(boot.layout, boot.rank, strategy)
        self.fds = fds
        # Large tensors of replies go through this rank's arena (Note [The tensor arena]).
        self.encoder = Encoder(
            share_fds=True,
            arena=TensorArena(1, SETTINGS.arena_bytes),
            arena_min_bytes=SETTINGS.arena_min_bytes,
        )
        self.actor: Any = None
        # See Note [A rank keeps its last request].
        self._last_request: Any = None

    def reply(self, seq: int, kind: int, value: Any) -> None:
        """Sends ``Reply(seq, kind, value)``; a value that cannot be pickled becomes an
        error reply."""
        replies = self.end.replies
        if not replies.abort_pending and replies.ring.send_plain(
            TARGET_ALL, seq, (seq, kind, value), -1
        ):
            return  # the hot path: pickled and written in one call of the ring core
        try:
            message = self.encoder.encode_compact((seq, kind, value), tag=seq)
        except TypeError as error:
            failure = capture(
                TypeError(f"the result could not be sent back to the caller: {error}")
            )
            message = self.encoder.encode_compact((seq, ERROR, failure), tag=seq)
        if isinstance(message, EncodedMessage) and message.fds:
            self.fds.send(seq, message.fds)  # before the reply is published
        send_encoded(replies, message, TARGET_ALL, seq, deadline=None)

    def die(self, reason: str) -> NoReturn:
        """Records ``reason``, signals the supervisor and exits (see ``tt.fatal``)."""
        try:
            self.reply(NO_SEQ, FATAL, reason)
        finally:
            if self.boot.signal_supervisor:
                with contextlib.suppress(OSError):
                    os.kill(self.boot.supervisor_pid, signal.SIGUSR1)
            os._exit(FATAL_EXIT_CODE)

    def build_actor(self) -> None:
        """Unpickles the actor class and runs its ``__init__`` with the rank attributes set."""
        boot = self.boot
        actor_class, args, kwargs = cloudpickle.loads(boot.actor)
        actor = actor_class.__new__(actor_class)
        if not isinstance(actor, Actor):
            raise TypeError(f"{actor_class.__qualname__} must subclass torchtroupe.Actor")
        actor.rank = boot.rank
        actor.world_size = boot.world_size
        actor.local_rank = boot.rank
        if boot.device_index is None:
            actor.device = torch.device("cpu")
        else:
            actor.device = torch.device("cuda", boot.device_index)
        actor_class.__init__(actor, *args, **kwargs)
        self.actor = actor

    def serve(self) -> None:
        """Answers requests one at a time until a STOP request, or until the caller
        breaks or closes the rings (see Note [A rank stops quietly]).

        A call that came in one record without tensors is answered right here, as
        :meth:`handle` would answer it, written out flat: it is every call's path.
        Everything else goes through :meth:`serve_one`.

        Note [A rank stops quietly]
        ---------------------------
        The caller is the only writer of the request ring and the only reader of the
        reply rings. It breaks the request ring when it shuts the group down (right
        after the STOP request, or instead of it when there is no time to wait) and a
        reply ring when it has given this rank up. Either way nobody will read what
        this rank would say, so it leaves the serve loop as after a STOP and its
        process exits with code 0, printing nothing: an uncaught ChannelBrokenError
        here would print a traceback for every rank of every group shut down while
        its ranks waited. Records written before the break are still read first, so
        a STOP that got there is answered. A caller that died instead ends the rank
        through its death pipe, not through this path.
        """
        ring = self.end.requests.ring
        actor = self.actor
        rank = self.boot.rank
        spin_s = self.end.strategy.spin_s
        try:
            while True:
                taken = ring.take(loads, rank)
                if taken is None:
                    if not ring.spin(spin_s):  # in the ring core: the reply's latency
                        ring.wait(deadline=None)
                    continue
                if type(taken) is not tuple or len(taken) != 5 or taken[1] != CALL:
                    if not self.serve_one(taken):
                        return
                    continue
                self._last_request = taken
                seq, _, name, args, kwargs = taken
                try:
                    value = getattr(actor, name)(*args, **kwargs)
                except SystemExit:
                    raise
                except BaseException as error:
                    self._reply_error(seq, name, error)
                    continue
                self.reply(seq, RESULT, value)
        except (ChannelBrokenError, ChannelClosedError) as error:
            # See Note [A rank stops quietly].
            logger.debug(
                "group %s rank %d (pid %d) stops: %s", self.boot.group, rank, os.getpid(), error
            )

    def serve_one(self, taken: tuple[Any, ...] | memoryview | None = None) -> bool:
        """Waits for the next request for this rank and answers it. Returns False after
        a STOP request.

        Args:
            taken: What the request ring's ``take`` returned, if the caller read it.
        """
        requests = self.end.requests
        rank = self.boot.rank
        message: tuple[Any, ...] | IncomingMessage | None = None
        if isinstance(taken, tuple):
            message = taken
        elif taken is not None:
            message = requests.message_from(taken)
        if message is None:
            message = requests.take(loads, rank)
        while message is None:
            requests.ring.wait(deadline=None)
            message = requests.take(loads, rank)
        if isinstance(message, tuple):
            request: Any = message  # one record without tensors: the hot path
            tag = NO_SEQ
        else:
            target, tag = peek_target(message)
            if target != TARGET_ALL and target != rank:
                message.finish()
                return True
            try:
                request = decode(message, self._claim_fds, reader=rank)
            except MessageAbortedError:
                return True
            except Exception as error:
                error.add_note("the request could not be unpickled in the rank")
                self.reply(tag, ERROR, capture(error))
                return True
        self._last_request = request
        try:
            seq, kind, name, args, kwargs = request
        except (TypeError, ValueError) as error:
            if tag == NO_SEQ:  # nobody to answer: a reply without a seq means FATAL
                logger.warning("rank %d dropped a malformed request: %s", rank, error)
            else:
                self.reply(tag, ERROR, capture(ValueError(f"a malformed request: {error}")))
            return True
        if kind == STOP:
            self.reply(seq, STOPPED, None)
            return False
        self.handle(seq, kind, name, args, kwargs)
        return True

    def _claim_fds(self, tag: int, count: int) -> list[int]:
        return self.fds.receive(tag, count, timeout=_FD_TIMEOUT_S)

    def handle(
        self, seq: int, kind: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Runs one request (see ``messages.Request``) and replies with its result or
        its exception."""
        try:
            if kind == CALL:
                value = getattr(self.actor, name)(*args, **kwargs)
            elif kind == RUN:
                function, *rest = args
                value = function(self.actor, *rest, **kwargs)
            else:
                raise ValueError(f"unknown request kind {kind}")
        except SystemExit:
            raise
        except BaseException as error:
            self._reply_error(seq, name, error)
            return
        self.reply(seq, RESULT, value)

    def _reply_error(self, seq: int, name: str, error: BaseException) -> None:
        """Answers request ``seq`` with ``error``; a sticky CUDA error then ends the rank.

        However ``error`` is made (a traceback as deep as a recursion limit, a chain of
        causes that never ends, a ``__str__`` that raises), the caller gets an answer
        and the rank serves on: ``capture`` bounds the record and never raises.
        """
        failure = capture(error)
        self.reply(seq, ERROR, failure)
        if _is_sticky_cuda_error(failure.message):  # the message as read once, safely
            self.die(f"unrecoverable CUDA error in {name!r}: {failure.message}")


def _loopback_store(boot: RankBoot) -> Any:
    """The torch.distributed store, listening on 127.0.0.1 only (rank 0 serves it).

    torch's own TCP rendezvous makes rank 0 listen on every interface; so rank 0
    binds the port on the loopback address itself and hands the socket to the store.
    """
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=_STORE_TIMEOUT_S)
    if boot.rank != 0:
        return dist.TCPStore(  # type: ignore[attr-defined]
            "127.0.0.1", boot.master_port, boot.world_size, False, timeout
        )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", boot.master_port))
    listener.listen(_STORE_BACKLOG)
    store = dist.TCPStore(  # type: ignore[attr-defined]
        "127.0.0.1",
        boot.master_port,
        boot.world_size,
        True,
        timeout,
        master_listen_fd=listener.fileno(),
        use_libuv=True,
    )
    listener.detach()  # the store owns the listening socket now
    return store


def _join_process_group(boot: RankBoot) -> None:
    import torch.distributed as dist

    assert boot.distributed is not None
    try:
        store = _loopback_store(boot)
    except (TypeError, RuntimeError, ValueError) as error:
        logger.warning(
            "group %s rank %d: no loopback-only store (%s); using torch's TCP rendezvous",
            boot.group,
            boot.rank,
            error,
        )
        dist.init_process_group(
            boot.distributed,
            init_method=f"tcp://127.0.0.1:{boot.master_port}",
            rank=boot.rank,
            world_size=boot.world_size,
        )
        return
    dist.init_process_group(
        boot.distributed, store=store, rank=boot.rank, world_size=boot.world_size
    )


def rank_main(boot: RankBoot, death_pipe: Connection, fd_socket: socket.socket) -> None:
    """Entry point of a rank's process (the target of its ``Process``)."""
    # First, on the only thread: see Note [A rank dies with its driver] and
    # Note [Descendants end with their rank] in processes/lifeline.py.
    lifeline.bind(death_pipe, exit_code=FATAL_EXIT_CODE)
    os.environ.update(boot.env)
    os.environ.update(
        RANK=str(boot.rank),
        LOCAL_RANK=str(boot.rank),
        WORLD_SIZE=str(boot.world_size),
        LOCAL_WORLD_SIZE=str(boot.world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(boot.master_port),
        TORCHTROUPE_GROUP=boot.group,
    )
    runtime = RankRuntime(boot, FdChannel(fd_socket))
    fatal_hook.handler = runtime.die
    try:
        if boot.device_index is not None:
            torch.cuda.set_device(boot.device_index)
        if boot.distributed is not None:
            _join_process_group(boot)
        runtime.build_actor()
    except BaseException as error:
        runtime.reply(boot.ready_seq, ERROR, capture(error))
        os._exit(1)
    runtime.reply(boot.ready_seq, READY, os.getpid())
    try:
        runtime.serve()
    finally:
        if boot.distributed is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

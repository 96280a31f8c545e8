"""The DICOM node's front door: who gets a connection, a thread and a buffer, and for how long.

pynetdicom gives every TCP connection its threads before the peer has said anything, and reads
each PDU whole, however long the peer takes and however long it says the PDU is. Left alone, a
few hundred silent or slow sockets exhaust the node's association slots and threads, and a
sender that streams a huge object fills its memory. The gate sits between the listening socket
and pynetdicom:

- **Waiting room** (one thread for all): each accepted connection waits here, without a thread
  of its own, for its TLS handshake (on a TLS node) and its whole A-ASSOCIATE-RQ, within
  ``Limits.request_seconds`` of being accepted. At most ``Limits.max_waiting`` wait at once: a
  newcomer beyond that closes the connection that has waited longest, so that a flood pushes a
  sender out only by opening ``max_waiting`` connections in the moment the sender takes to send
  its request (milliseconds), and never holds the room for long. A first PDU that is
  not an A-ASSOCIATE-RQ (or one over ``MAX_REQUEST`` bytes), a failed TLS handshake and a
  request not complete in time close the connection at once.
- **Admission**: the request's called AE title must be the node's, its calling AE title on the
  allow-list (if any); otherwise an A-ASSOCIATE-RJ is sent from here. Only then is it handed to
  pynetdicom, if one of ``Limits.max_associations`` slots is free. Slots count working
  associations: when all are taken, the association idle longest (nothing received or sent for
  ``Limits.idle_grace`` seconds, no answer owed) is aborted to make room; if none is idle, the
  request is rejected as transient (the sender tries again later).
- **On the wire**, for each admitted association, the bytes are followed PDU by PDU as pynetdicom
  reads them: a PDU must arrive whole within ``Limits.pdu_seconds`` of its first byte, be a
  DICOM PDU no longer than the node takes (P-DATA-TF: the maximum PDU length the node
  announced; others ``MAX_REQUEST``), and the data set of one message (an object) must stay
  within ``Limits.max_object_bytes`` *while* it arrives. A breach sends an A-ABORT and closes the
  connection. A silent association is aborted after ``Limits.idle_seconds`` (pynetdicom's network
  timeout).

Each refused or dropped peer is logged once, escaped (AE titles are the peer's bytes): repeats of
the same refusal from one host are counted and summed up in one line a minute. What pynetdicom
logs on an association's threads (tracebacks included) is folded into the one line that
reports how the association ended.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer
    from pynetdicom.association import Association
    from pynetdicom.events import Event, EventHandlerType

LOG = logging.getLogger(__name__)
MAX_REQUEST = 64 * 1024  # an A-ASSOCIATE-RQ (or any PDU but P-DATA-TF) longer than this: refused
A_ASSOCIATE_RQ, A_ASSOCIATE_RJ, P_DATA_TF, A_ABORT = 0x01, 0x03, 0x04, 0x07
# A-ASSOCIATE-RJ (result, source, reason): PS3.8 table 9-21
CALLING_NOT_RECOGNISED = (1, 1, 3)
CALLED_NOT_RECOGNISED = (1, 1, 7)
LOCAL_LIMIT_EXCEEDED = (2, 3, 2)
# A-ABORT (source, reason): PS3.8 table 9-26
_ABORT_BY_USER = (0, 0)
_ABORT_INVALID_PARAMETER = (2, 6)
_ABORT_UNRECOGNISED_PDU = (2, 1)
_POLL_SECONDS = 0.05  # how often a connection whose request has partly arrived is looked at again
_SUMMARY_SECONDS = 60.0  # repeated refusals from one host are summed up this often
_DETAILS = 10  # refusals of one kind from one host logged apart (one per AE title), at most


@dataclass(frozen=True)
class Limits:
    """The bounds the gate enforces (see the module's docstring)."""

    max_associations: int = 10
    max_object_bytes: int = 100 * 1024 * 1024
    max_pdu_bytes: int = 16382  # pynetdicom's default maximum PDU length, announced to peers
    max_waiting: int = 256
    request_seconds: float = 10.0
    pdu_seconds: float = 10.0
    idle_seconds: float = 60.0
    idle_grace: float = 2.0

    def __post_init__(self) -> None:
        if min(self.max_associations, self.max_object_bytes, self.max_pdu_bytes,
               self.max_waiting) < 1:
            raise ValueError("association, object, PDU and waiting limits must be positive")
        if min(self.request_seconds, self.pdu_seconds, self.idle_seconds, self.idle_grace) <= 0:
            raise ValueError("timeouts must be positive")


def printable(text: str | bytes) -> str:
    r"""``text`` (an AE title, a UID, anything a peer chose) safe for one log line: stripped,
    with every character outside printable ASCII, and the backslash, written as ``\xNN`` (or
    ``\uNNNN``)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return "".join(c if " " <= c <= "~" and c != "\\" else
                   (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   for c in text.strip())


@dataclass(eq=False)
class Connection:
    """One admitted association: who, since when, what it did, and why it ended if the gate or
    the node ended it."""

    host: str
    port: int
    calling: str  # printable
    limits: Limits
    stream: _MeteredSocket  # what pynetdicom reads the association from
    opened: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    association: Association | None = None  # once it exists
    counts: dict[str, int] = field(default_factory=dict)
    ended_by: str | None = None  # a limit or an eviction, said in the summary line
    outcome: str = "closed"  # released / aborted, as pynetdicom saw it
    library: list[str] = field(default_factory=list)
    library_more: int = 0
    evicting: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.frames = _Frames(self.limits)

    @property
    def peer(self) -> str:
        """``CALLING@host:port``, for the log."""
        return f"{self.calling}@{self.host}:{self.port}"

    def count(self, what: str) -> None:
        """One more ``what`` (stored, refused, echo) for the summary line."""
        self.counts[what] = self.counts.get(what, 0) + 1

    def note(self, message: str) -> None:
        """Keep one line of what a library logged on this association's threads."""
        if len(self.library) < 2:
            self.library.append(message)
        else:
            self.library_more += 1

    def summary(self) -> tuple[int, str]:
        """The log level and the one line that says how the association went (what pynetdicom
        said is left out when the gate or node ended it: it only tells of that end)."""
        done = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())) or "nothing"
        said = ""
        if self.library and not self.ended_by:
            more = f" (+{self.library_more} more)" if self.library_more else ""
            said = f"; pynetdicom said: {' | '.join(self.library)}{more}"
        ending = f"dropped: {self.ended_by}" if self.ended_by else self.outcome
        seconds = time.monotonic() - self.opened
        level = logging.WARNING if self.ended_by or self.library else logging.INFO
        return level, f"association with {self.peer}, {seconds:.1f} s, {done}: {ending}{said}"


@dataclass(frozen=True)
class _Breach:
    """A limit the stream broke: why, and the A-ABORT (source, reason) that says so."""

    reason: str
    abort: tuple[int, int]


class _Frames:
    """Follows a byte stream PDU by PDU (and the PDV items of each P-DATA-TF) as it is read:
    where each PDU began, how many data set bytes the current message has, whether the peer
    waits for an answer. :meth:`feed` returns a :class:`_Breach` of a limit, or None."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.header = bytearray()  # of the PDU under way (6 bytes once complete)
        self.kind = 0
        self.left = 0  # bytes of the PDU under way still to come
        self.started: float | None = None  # when the PDU under way began
        self.item_header = bytearray()  # of the PDV item under way (length, context, control)
        self.item_left = 0
        self.object_bytes = 0  # data set bytes of the message under way
        self.command_done = False  # a whole command set came, its data set may follow
        self.awaiting_reply = False

    def feed(self, data: bytes, now: float) -> _Breach | None:
        view, at = memoryview(data), 0
        while at < len(view):
            if len(self.header) < 6:
                if not self.header:
                    self.started = now
                take = min(6 - len(self.header), len(view) - at)
                self.header += view[at : at + take]
                at += take
                if len(self.header) == 6:
                    self.kind, self.left = self.header[0], int.from_bytes(self.header[2:6], "big")
                    if broken := self._check_pdu():
                        return broken
                    if self.left == 0:
                        self._pdu_done()
                continue
            take = min(self.left, len(view) - at)
            if self.kind == P_DATA_TF and (broken := self._items(view[at : at + take])):
                return broken
            self.left -= take
            at += take
            if self.left == 0:
                if self.item_header or self.item_left:
                    return _Breach("a PDV item runs past the end of its P-DATA-TF PDU",
                                   _ABORT_INVALID_PARAMETER)
                self._pdu_done()
        return None

    def _check_pdu(self) -> _Breach | None:
        if not 1 <= self.kind <= 7:
            return _Breach(f"not a DICOM PDU (type 0x{self.kind:02X})", _ABORT_UNRECOGNISED_PDU)
        limit = self.limits.max_pdu_bytes if self.kind == P_DATA_TF else MAX_REQUEST
        if self.left > limit:
            return _Breach(f"a PDU of {self.left:,} bytes, over the {limit:,} this node takes",
                           _ABORT_INVALID_PARAMETER)
        return None

    def _items(self, body: memoryview) -> _Breach | None:
        at = 0
        while at < len(body):
            if len(self.item_header) < 6:
                take = min(6 - len(self.item_header), len(body) - at)
                self.item_header += body[at : at + take]
                at += take
                if len(self.item_header) == 6:
                    length = int.from_bytes(self.item_header[:4], "big")
                    if length < 2:
                        return _Breach(f"a PDV item of length {length}", _ABORT_INVALID_PARAMETER)
                    self.item_left = length - 2
                    if not self.item_header[5] & 1 and not self.command_done:
                        return _Breach("a data set fragment with no command before it",
                                       _ABORT_INVALID_PARAMETER)
                    if self.item_left == 0:
                        self._item_done()
                continue
            take = min(self.item_left, len(body) - at)
            if not self.item_header[5] & 1:  # a data set fragment
                self.object_bytes += take
                if self.object_bytes > self.limits.max_object_bytes:
                    return _Breach(f"an object over the limit of "
                                   f"{self.limits.max_object_bytes:,} bytes "
                                   f"({self.object_bytes:,} received)", _ABORT_BY_USER)
            self.item_left -= take
            at += take
            if self.item_left == 0:
                self._item_done()
        return None

    def _item_done(self) -> None:
        control = self.item_header[5]
        if control & 2:  # the last fragment of a command or data set: the peer awaits an answer
            self.awaiting_reply = True
            self.command_done = bool(control & 1)
            if not control & 1:
                self.object_bytes = 0
        self.item_header.clear()

    def _pdu_done(self) -> None:
        self.header.clear()
        self.started = None


class _MeteredSocket(socket.socket):
    """A socket that pynetdicom reads an admitted association from: it serves first the bytes
    the gate already read (TLS), follows the stream with :class:`_Frames`, times each PDU, and
    tells the gate when it is closed. Inert until :meth:`arm` is called. Everything else is the
    socket's (or, in :class:`_MeteredTLSSocket`, the TLS socket's)."""

    _connection: Connection | None = None
    _unread: bytes = b""
    _on_close: Callable[[Connection], None] | None = None

    def arm(self, connection: Connection, unread: bytes,
            on_close: Callable[[Connection], None]) -> None:
        self._connection, self._unread, self._on_close = connection, unread, on_close
        self.settimeout(connection.limits.pdu_seconds)

    def recv(self, size: int = 1024, flags: int = 0) -> bytes:
        connection = self._connection
        if connection is None or flags:
            return super().recv(size, flags)
        if connection.ended_by:
            raise ConnectionAbortedError(connection.ended_by)
        if self._unread:
            data, self._unread = self._unread[:size], self._unread[size:]
        else:
            frames, limits = connection.frames, connection.limits
            left = (limits.pdu_seconds if frames.started is None
                    else frames.started + limits.pdu_seconds - time.monotonic())
            if left <= 0:
                self._break(connection, f"no whole PDU within {limits.pdu_seconds:g} s", _ABORT_BY_USER)
            self.settimeout(left)
            try:
                data = super().recv(size)
            except TimeoutError:
                self._break(connection, f"no whole PDU within {limits.pdu_seconds:g} s", _ABORT_BY_USER)
        now = time.monotonic()
        connection.last_active = now
        if breach := connection.frames.feed(data, now):
            self._break(connection, breach.reason, breach.abort)
        return data

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        if self._connection is not None:
            self._connection.last_active = time.monotonic()
            self._connection.frames.awaiting_reply = False
            self.settimeout(self._connection.limits.pdu_seconds)  # a peer that reads nothing
        return super().send(data, flags)

    def shutdown(self, how: int) -> None:
        # pynetdicom closes a socket only if shutting it down did not raise (a peer that reset)
        with contextlib.suppress(OSError):
            super().shutdown(how)

    def close(self) -> None:
        super().close()
        connection, on_close = self._connection, self._on_close
        if connection is not None and on_close is not None and not connection.closed:
            connection.closed = True
            on_close(connection)

    def _break(self, connection: Connection, reason: str, abort: tuple[int, int]) -> NoReturn:
        """End the association: record why, send an A-ABORT, raise for pynetdicom."""
        connection.ended_by = connection.ended_by or reason
        with contextlib.suppress(OSError, ValueError):
            self.settimeout(1.0)
            super().sendall(bytes([A_ABORT, 0, 0, 0, 0, 4, 0, 0, *abort]))
        raise ConnectionAbortedError(reason)


class _MeteredTLSSocket(_MeteredSocket, ssl.SSLSocket):
    """A :class:`_MeteredSocket` over TLS (the TLS node's ``sslsocket_class``)."""

    def pending(self) -> int:
        """Bytes readable without the socket (pynetdicom asks a TLS socket when select() says
        nothing is ready): those the gate read first, and those TLS decrypted."""
        return len(self._unread) + super().pending()


@dataclass(eq=False)
class _Waiting:
    """A connection in the waiting room."""

    sock: socket.socket  # on a TLS node, a _MeteredTLSSocket
    host: str
    port: int
    deadline: float
    handshaken: bool = False
    received: bytearray = field(default_factory=bytearray)  # TLS: the bytes read so far

    @property
    def tls(self) -> bool:
        """True on a TLS node (the gate does the handshake)."""
        return isinstance(self.sock, ssl.SSLSocket)


class _Refused(Exception):
    """Why a waiting connection is closed; ``reject`` the A-ASSOCIATE-RJ to send first."""

    def __init__(self, kind: str, reason: str, reject: tuple[int, int, int] | None = None,
                 detail: str = "") -> None:
        super().__init__(reason)
        self.kind, self.reason, self.reject, self.detail = kind, reason, reject, detail


class _Refusals:
    """Logs a refusal the first time a host gets it in a minute, and then, once the minute is
    over, how many more of the same the host got: a flood makes two lines, not thousands."""

    def __init__(self, seconds: float = _SUMMARY_SECONDS) -> None:
        self.seconds = seconds
        self._repeats: dict[tuple[str, str, str], list] = {}  # key -> [since, count, message]
        self._lock = threading.Lock()

    def refuse(self, host: str, kind: str, message: str, detail: str = "") -> None:
        """Log (or count) one refusal of ``kind`` from ``host`` (``detail``: what tells refusals
        of a kind apart, such as the calling AE title); ``message`` says who and why."""
        now = time.monotonic()
        with self._lock:
            if detail and sum(k[:2] == (host, kind) for k in self._repeats) >= _DETAILS:
                detail = "..."  # a host trying many AE titles: the rest counted together
            key = (host, kind, detail)
            seen = self._repeats.get(key)
            if seen is not None:
                seen[1] += 1
                return
            self._repeats[key] = [now, 0, message]
        LOG.warning("refused %s", message)

    def flush(self, force: bool = False) -> None:
        """Log the sums of the repeats whose minute is over (all of them, with ``force``)."""
        now = time.monotonic()
        with self._lock:
            due = [(key, seen) for key, seen in self._repeats.items()
                   if force or now - seen[0] >= self.seconds]
            for key, _ in due:
                del self._repeats[key]
        for _, (since, count, message) in due:
            if count:
                LOG.warning("refused %d more time(s) in %.0f s, as %s", count, now - since,
                            message)


class _LibraryFold(logging.Filter):
    """Holds what pynetdicom logs on an admitted association's threads; it reaches the log
    folded into that association's summary line."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, Connection] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        connection = self.threads.get(record.threadName) if record.threadName is not None else None
        if connection is None:
            return True
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text = f"{text} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            connection.note(printable(" ".join(text.split()))[:300])
        return False


_FOLD = _LibraryFold()


def _fold_library_logs() -> None:
    for name in ("pynetdicom", *logging.Logger.manager.loggerDict):
        if name.split(".")[0] == "pynetdicom":
            logging.getLogger(name).addFilter(_FOLD)  # once: a filter is added only once
    if threading.excepthook is not _fold_thread_exception:
        _fold_thread_exception.previous = threading.excepthook
        threading.excepthook = _fold_thread_exception


class _ThreadExceptionFold:
    """``threading.excepthook``: an exception pynetdicom lets out of an association's thread (a
    malformed message can kill its DUL thread; the association then ends) goes into the
    association's line instead of a traceback on stderr; other threads' go to ``previous``, the
    hook it replaced."""

    def __init__(self, previous: Callable[[threading.ExceptHookArgs], object]) -> None:
        self.previous = previous

    def __call__(self, args: threading.ExceptHookArgs) -> None:
        connection = _FOLD.threads.get(args.thread.name) if args.thread is not None else None
        if connection is None:
            self.previous(args)
            return
        connection.note(printable(f"{args.exc_type.__name__}: {args.exc_value}")[:300])


_fold_thread_exception = _ThreadExceptionFold(threading.excepthook)


def _server_class():
    """The pynetdicom server class with the gate in front (made on first use: pynetdicom is an
    optional dependency)."""
    from pynetdicom.transport import ThreadedAssociationServer

    class GatedServer(ThreadedAssociationServer):
        """pynetdicom's threaded server whose accepted connections go to the gate's waiting
        room instead of a thread each; the gate hands admitted ones back with
        :meth:`hand_off`."""

        request_queue_size = 1024  # the listen backlog: socketserver's 5 drops SYNs in a flood
        gate: Gate

        def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
            if self.socket is None:  # pynetdicom types it optional; it is set until closed
                raise OSError("the node's listening socket is closed")
            return self.socket.accept()  # TLS is the gate's, off the accepting thread

        def process_request(self, request, client_address) -> None:
            self.gate.admit(request, client_address)

        def hand_off(self, stream: socket.socket, client_address: tuple[str, int]) -> None:
            super().process_request(stream, client_address)

        def handle_error(self, request, client_address) -> None:
            LOG.warning("connection from %s failed before its association started: %s",
                        client_address[0], printable(str(sys.exc_info()[1])))

        def shutdown(self) -> None:
            # socketserver's own: pynetdicom's also takes the server off an AE list it is not on
            socketserver.BaseServer.shutdown(self)
            self.server_close()

    return GatedServer


class Gate:
    """The waiting room and the slots of one node (see the module's docstring).

    ``ae``: the pynetdicom AE the node serves with (its supported contexts set; its timeouts,
    maximum PDU length and association count are set here from ``limits``); ``allow``: the
    calling AE titles admitted (empty: any); ``tls``: a server SSL context or None (its
    ``sslsocket_class`` becomes the gate's own, which meters what pynetdicom reads).
    """

    def __init__(self, ae, address: tuple[str, int], evt_handlers: list[EventHandlerType],
                 limits: Limits, allow: Sequence[str] = (), tls: ssl.SSLContext | None = None) -> None:
        from pynetdicom import evt

        self.limits, self.allow, self.tls = limits, set(allow), tls
        self.ae_title = ae.ae_title.strip()
        self.refusals = _Refusals()
        ae.acse_timeout = limits.request_seconds
        ae.network_timeout = limits.idle_seconds
        ae.maximum_pdu_size = limits.max_pdu_bytes
        # the gate counts slots; pynetdicom's own count also holds the evicted on their way out
        ae.maximum_associations = 2 * limits.max_associations
        if tls is not None:
            tls.sslsocket_class = _MeteredTLSSocket
        handlers = [*evt_handlers, (evt.EVT_CONN_OPEN, self._opened),
                    (evt.EVT_RELEASED, self._ended, ["released"]),
                    (evt.EVT_ABORTED, self._ended, ["aborted"])]
        self.server = ae.make_server(address, evt_handlers=handlers,
                                     server_class=_server_class())
        self.server.gate = self
        self._waiting: dict[int, _Waiting] = {}  # by file descriptor, oldest first
        self._polled: set[int] = set()  # waiting with part of their request in
        self._working: dict[int, Connection] = {}  # by id
        self._handed: dict[tuple[str, int], Connection] = {}  # handed off, not yet opened
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._numbers = itertools.count(1)
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        """The TCP port the node listens on (the one the system chose, for port 0)."""
        return self.server.server_address[1]

    def start(self) -> None:
        """Start accepting (one thread) and the waiting room (another)."""
        _fold_library_logs()
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="pneumocnn-accept",
                             daemon=True),
            threading.Thread(target=self._run, name="pneumocnn-gate", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop accepting, close the waiting room, abort the working associations."""
        if self._threads:
            self.server.shutdown()
        else:
            self.server.server_close()
        self._stopping.set()
        self._wake()
        for thread in self._threads:
            thread.join()
        for waiting in list(self._waiting.values()):
            self._close(waiting)
        with self._lock:
            working = [(c, c.association) for c in self._working.values()
                       if c.association is not None]
        for connection, association in working:
            connection.ended_by = connection.ended_by or "the node is stopping"
            association.abort(block=False)
        for connection, association in working:  # a peer that does not close after the A-ABORT: closed
            with contextlib.suppress(RuntimeError):  # a thread a moment from starting
                association.join(1.0)
                if association.is_alive():
                    connection.stream.shutdown(socket.SHUT_RDWR)
                    association.join(1.0)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()
        self.refusals.flush(force=True)

    def connection(self, association: Association) -> Connection | None:
        """The :class:`Connection` of a pynetdicom association, or None."""
        with self._lock:
            return next((c for c in self._working.values() if c.association is association),
                        None)

    def working(self) -> int:
        """How many associations hold a slot."""
        with self._lock:
            return sum(not c.evicting for c in self._working.values())

    # the accepting thread

    def admit(self, sock: socket.socket, address) -> None:
        """Take an accepted connection into the waiting room (from the accepting thread)."""
        self._arrivals.put((sock, address))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    # the gate's thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._turn()
            except Exception:  # a bug in the gate must not close the node's door for good
                LOG.exception("the gate's loop failed; it goes on")

    def _turn(self) -> None:
        """One turn of the waiting room: arrivals, reads, deadlines, dead slots, log sums."""
        for key, _ in self._selector.select(self._next_timeout()):
            if key.fileobj is self._wake_read:
                with contextlib.suppress(OSError):
                    self._wake_read.recv(4096)
                self._take_arrivals()
            else:
                self._advance_safely(key.data)
        for descriptor in list(self._polled):
            if (waiting := self._waiting.get(descriptor)) is not None:
                self._advance_safely(waiting)
        now = time.monotonic()
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            unfinished = " (its TLS handshake unfinished)" if waiting.tls and not waiting.handshaken else ""
            self._refuse(waiting, _Refused(
                "slow", f"no whole A-ASSOCIATE-RQ within {self.limits.request_seconds:g} s "
                        f"of connecting{unfinished}"))
        self._sweep()
        self.refusals.flush()

    def _next_timeout(self) -> float:
        if self._polled:
            return _POLL_SECONDS
        if self._waiting:
            first = next(iter(self._waiting.values()))
            return max(0.0, min(1.0, first.deadline - time.monotonic()))
        return 1.0

    def _take_arrivals(self) -> None:
        while True:
            try:
                sock, address = self._arrivals.get_nowait()
            except queue.Empty:
                return
            if len(self._waiting) >= self.limits.max_waiting:
                oldest = next(iter(self._waiting.values()))
                self._refuse(oldest, _Refused(
                    "crowded", f"the waiting room was full ({self.limits.max_waiting} connections "
                               "without an association); the one waiting longest was closed"))
            try:
                sock.setblocking(False)
                if self.tls is not None:
                    sock = self.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
            except OSError:
                sock.close()
                continue
            waiting = _Waiting(sock, address[0], address[1],
                               time.monotonic() + self.limits.request_seconds)
            self._waiting[sock.fileno()] = waiting
            self._selector.register(sock, selectors.EVENT_READ, waiting)

    def _advance_safely(self, waiting: _Waiting) -> None:
        """:meth:`_advance`; a fault in the gate's own code closes that connection, never the
        gate (logged with its traceback: it is a bug)."""
        try:
            self._advance(waiting)
        except Exception:
            LOG.exception("the gate failed on a connection from %s; closed it", waiting.host)
            self._close(waiting)

    def _advance(self, waiting: _Waiting) -> None:
        """Read on: the TLS handshake, then the A-ASSOCIATE-RQ; admit or refuse when it is whole."""
        try:
            if isinstance(waiting.sock, ssl.SSLSocket) and not waiting.handshaken:
                waiting.sock.do_handshake()
                waiting.handshaken = True
            request = self._request(waiting)
        except ssl.SSLWantReadError:
            self._selector.modify(waiting.sock, selectors.EVENT_READ, waiting)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(waiting.sock, selectors.EVENT_WRITE, waiting)
            return
        except _Refused as refused:
            self._refuse(waiting, refused)
            return
        except ssl.SSLError as error:
            what = "TLS handshake failed" if not waiting.handshaken else "TLS failed"
            self._refuse(waiting, _Refused("tls", f"{what} ({_ssl_reason(error)})"))
            return
        except OSError:  # the peer reset the connection: nothing to refuse
            self._close(waiting)
            return
        if request is not None:
            self._decide(waiting, request)
        elif waiting.tls:
            self._selector.modify(waiting.sock, selectors.EVENT_READ, waiting)

    def _request(self, waiting: _Waiting) -> bytes | None:
        """The bytes of the whole A-ASSOCIATE-RQ once it is in (TLS: with anything read after
        it), None while part of it is; :class:`_Refused` if it is not one."""
        if waiting.tls:
            while len(waiting.received) <= MAX_REQUEST + 6:
                try:
                    chunk = waiting.sock.recv(65536)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    raise _Refused("closed", "closed the connection before its request")
                waiting.received += chunk
            data = bytes(waiting.received)
        else:
            data = waiting.sock.recv(MAX_REQUEST + 6, socket.MSG_PEEK)
            if not data:
                raise _Refused("closed", "closed the connection before its request")
        if not data:  # TLS: the handshake is done, the request not yet here
            return None
        if data[0] != A_ASSOCIATE_RQ:
            raise _Refused("protocol", f"its first bytes are not an A-ASSOCIATE-RQ ({_what(data)})")
        if len(data) < 6:
            self._partial(waiting)
            return None
        length = int.from_bytes(data[2:6], "big")
        if length > MAX_REQUEST:
            raise _Refused("protocol", f"an A-ASSOCIATE-RQ of {length:,} bytes, over the "
                                       f"{MAX_REQUEST:,} this node takes")
        if length < 68:  # protocol version, AE titles, reserved bytes, one item at least
            raise _Refused("protocol", f"an A-ASSOCIATE-RQ of {length} bytes is malformed")
        if len(data) < 6 + length:
            self._partial(waiting)
            return None
        self._polled.discard(waiting.sock.fileno())
        return data

    def _partial(self, waiting: _Waiting) -> None:
        if not waiting.tls:  # peeked bytes stay readable: look again on a timer, not on select
            descriptor = waiting.sock.fileno()
            if descriptor not in self._polled:
                self._polled.add(descriptor)
                self._selector.unregister(waiting.sock)

    def _decide(self, waiting: _Waiting, request: bytes) -> None:
        called = request[10:26].decode("latin-1").strip()
        calling = request[26:42].decode("latin-1").strip()
        try:
            if called != self.ae_title:
                raise _Refused("called", f"it called '{printable(called)}', not this node's AE "
                                         f"title {self.ae_title!r}", CALLED_NOT_RECOGNISED,
                               detail=called)
            if self.allow and calling not in self.allow:
                raise _Refused("calling", f"calling AE title '{printable(calling)}' is not "
                                          "allowed (--allow)", CALLING_NOT_RECOGNISED,
                               detail=calling)
            if not self._free_slot():
                raise _Refused("busy", f"{self.limits.max_associations} associations at once "
                                       "already, none idle", LOCAL_LIMIT_EXCEEDED)
        except _Refused as refused:
            if not waiting.tls:  # read what was peeked, so that closing sends FIN, not RST
                with contextlib.suppress(OSError):
                    waiting.sock.recv(len(request))
            self._refuse(waiting, refused, calling=printable(calling))
            return
        self._hand_off(waiting, printable(calling), request)

    def _free_slot(self) -> bool:
        """True if an association may start now, after aborting the one idle longest if every
        slot is taken."""
        now = time.monotonic()
        with self._lock:
            holding = [c for c in self._working.values() if not c.evicting]
            if len(holding) < self.limits.max_associations:
                return True
            idle = [(c, c.association) for c in holding if c.association is not None
                    and not c.frames.awaiting_reply
                    and now - c.last_active >= self.limits.idle_grace]
            if not idle:
                return False
            longest, association = min(idle, key=lambda pair: pair[0].last_active)
            longest.evicting = True
            longest.ended_by = (f"idle for {now - longest.last_active:.1f} s while a sender "
                                "waited for a slot")
        association.abort(block=False)
        return True

    def _hand_off(self, waiting: _Waiting, calling: str, request: bytes) -> None:
        del self._waiting[waiting.sock.fileno()]
        self._polled.discard(waiting.sock.fileno())
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(waiting.sock)
        stream: _MeteredSocket
        if isinstance(waiting.sock, _MeteredTLSSocket):  # made so by the context (see __init__)
            stream, unread = waiting.sock, bytes(waiting.received)
        else:
            plain = waiting.sock
            stream = _MeteredSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
            unread = b""
        connection = Connection(waiting.host, waiting.port, calling, self.limits, stream)
        stream.arm(connection, unread, self._closed)
        with self._lock:
            self._working[id(connection)] = connection
            self._handed[(waiting.host, waiting.port)] = connection
        self.server.hand_off(stream, (waiting.host, waiting.port))

    def _refuse(self, waiting: _Waiting, refused: _Refused, calling: str = "") -> None:
        if refused.reject is not None:
            result, source, reason = refused.reject
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                waiting.sock.send(bytes([A_ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, result, source,
                                         reason]))
        if refused.kind != "closed":
            peer = f"{calling}@{waiting.host}" if calling else waiting.host
            self.refusals.refuse(waiting.host, refused.kind, f"{peer}: {refused.reason}",
                                 printable(refused.detail))
        self._close(waiting)

    def _close(self, waiting: _Waiting) -> None:
        descriptor = waiting.sock.fileno()
        self._waiting.pop(descriptor, None)
        if descriptor in self._polled:
            self._polled.discard(descriptor)
        else:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(waiting.sock)
        with contextlib.suppress(OSError):
            waiting.sock.close()

    def _sweep(self) -> None:
        """Free the slots of associations whose threads ended without closing their socket."""
        with self._lock:
            dead = [c for c in self._working.values() if c.association is not None
                    and c.association.ident is not None and not c.association.is_alive()]
        for connection in dead:
            connection.stream.close()

    # pynetdicom's threads

    def _opened(self, event: _ConnectionOpened) -> None:
        """EVT_CONN_OPEN: tie the association to its connection, and its threads to the
        library log fold."""
        with self._lock:
            connection = self._handed.pop(event.address, None)
        if connection is None:
            return
        connection.association = event.assoc
        number = next(self._numbers)
        event.assoc.name = f"AcceptorThread-pneumocnn-{number}"  # pynetdicom counts by the prefix
        event.assoc.dul.name = f"pneumocnn-dul-{number}"
        _FOLD.threads[event.assoc.name] = _FOLD.threads[event.assoc.dul.name] = connection

    def _ended(self, event: Event, outcome: str) -> None:
        if (connection := self.connection(event.assoc)) is not None:
            connection.outcome = outcome

    def _closed(self, connection: Connection) -> None:
        """A socket of an admitted association closed: free its slot, log how it went."""
        with self._lock:
            self._working.pop(id(connection), None)
            self._handed = {k: c for k, c in self._handed.items() if c is not connection}
        association = connection.association
        if association is not None:
            for name in (association.name, association.dul.name):
                _FOLD.threads.pop(name, None)
        level, line = connection.summary()
        LOG.log(level, line)


class _ConnectionOpened(Protocol):
    """pynetdicom's EVT_CONN_OPEN event (its ``address`` is set at run time, so not typed)."""

    assoc: Association
    address: tuple[str, int]  # the peer's (host, port), as the gate handed the connection off


def _what(data: bytes) -> str:
    """What a first PDU that is not an A-ASSOCIATE-RQ looks like, for the log."""
    if data[:1] == b"\x16" and data[1:2] == b"\x03":
        return "a TLS handshake: this node does not speak TLS"
    if data[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI"):
        return "an HTTP request"
    return f"type 0x{data[0]:02X}"


def _ssl_reason(error: ssl.SSLError) -> str:
    reason = getattr(error, "reason", None) or str(error)
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_MESSAGE",
                  "UNSUPPORTED_PROTOCOL") or "wrong version" in reason.lower():
        return f"{reason}: a sender without TLS?"
    return printable(str(reason))

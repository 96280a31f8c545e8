"""The DICOM node: a storage SCP that triages the chest X-rays an X-ray unit or PACS sends it.

``Node(out, ...).start()`` (or ``pneumocnn listen``) answers C-ECHO (the Verification SOP class:
an administrator's first test of a new node) and accepts by C-STORE the image SOP classes chest
radiographs come in (:data:`ACCEPTED`: Computed Radiography, Digital X-Ray for presentation and
for processing, Secondary Capture and its multi-frame grayscale kinds) in every transfer syntax
it can decode (:func:`~pneumocnn.core.dicom.decodable_transfer_syntaxes`); the input guard
(:mod:`pneumocnn.core.guard`) then decides from the tags which are scored. Every other SOP class
(CT, MR, Structured Reports, presentation states...) is refused at association: its
presentation context is rejected, and the sender reports it as not sent. In the folder ``out``:

- ``received/SOP_INSTANCE_UID.dcm``: each object as it was sent, written atomically and flushed
  to disk (file and folder) **before** the C-STORE is answered with success, so that an object
  the sender believes delivered survives a crash;
- ``scores.csv``, ``worklist.csv``, ``report.html``, ``images/``: the triage worklist
  (:mod:`pneumocnn.clinic.triage`), a row per object, scored in a worker thread (never in the
  association's thread); the worklist and report are rewritten whenever the queue empties;
- ``results/REPORT_UID.dcm``: a DICOM Structured Report per X-ray scored
  (:mod:`pneumocnn.clinic.structured_report`), and with ``forward`` a marker in ``outbox/``
  until the PACS has stored it (:mod:`pneumocnn.clinic.forward`);
- ``conflicts/SOP_INSTANCE_UID.DIGEST.dcm``: an object sent with the SOP Instance UID of one
  already stored but other pixel data. The first is kept (and scored), as DICOM intends; the
  other is kept here, not scored, and listed with the failures of the worklist, and the
  conflict is logged.

The journal is the folder itself: an object is stored when its file is in ``received/`` (or
``conflicts/``), and scored when its row is in ``scores.csv`` (appended and flushed after its
report was written). At start, every stored object without a row is scored: after ``kill -9``,
nothing the node acknowledged is lost and nothing already scored is scored again. An object
sent again (same SOP Instance UID, same pixels) is answered with success and not stored or
scored again: it is listed once. The folder is locked: one node per folder.

Connections go through the gate (:mod:`pneumocnn.clinic.gate`): bounded waiting, the
allow-list and the association slots, per-PDU and idle timeouts, the object size limit
enforced while an object arrives. Refused, each with one logged line: a calling AE title not on
``allow`` or a called AE title other than the node's (the association is rejected); an object
over ``max_object_mb`` (the association is aborted as the limit is crossed); one whose data set
names another SOP class than it was sent as (status 0xA900); one that cannot be read whole, or
whose SOP Instance, Study Instance or Series Instance UID is not a valid UID (0xC000); one the
node cannot write (a full disk: 0xA700, out of resources). Needs the ``dicom-net`` extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

from pneumocnn.clinic import structured_report, triage
from pneumocnn.clinic.entry import Entry, not_scored
from pneumocnn.clinic.forward import Destination, Forwarder, pynetdicom
from pneumocnn.clinic.gate import Gate, Limits, printable
from pneumocnn.clinic.received import read_received, same_pixels, valid_uid, write_object
from pneumocnn.core.dicom import decodable_transfer_syntaxes, holding_library_logs, one_line
from pneumocnn.core.durable_files import exclusive_lock, remove_temporaries, write_durably
from pneumocnn.runtime.model import Model, load

LOG = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
ACCEPTED = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
SUCCESS, OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
_STOP = None


class Node:
    """A DICOM storage SCP writing the triage of what it receives into ``out``.

    ``model``: a :class:`Model`, a model path, or None for the bundled model. ``allow``: the
    calling AE titles that may store (None: any; a calling AE title is what the sender says it
    is: only a TLS CA, ``tls_context(..., ca=...)``, controls who may send). ``forward``:
    ``AE@HOST:PORT`` (or a :class:`~pneumocnn.clinic.forward.Destination`) to send each report
    to. ``tls``: a server SSL context (see :func:`tls_context`); ``forward_tls`` a client SSL
    context for the forward. ``limits``: the gate's timeouts and bounds
    (:class:`~pneumocnn.clinic.gate.Limits`; ``max_associations`` and ``max_object_mb`` set
    theirs). ``port=0`` takes a free port (see :attr:`port`). ``heatmaps``: which X-rays get
    one in the worklist, as :func:`~pneumocnn.clinic.triage.triage` takes it.
    """

    def __init__(self, out: str | os.PathLike, model: Model | str | os.PathLike | None = None, *,
                 port: int = 11112, host: str = "0.0.0.0", ae_title: str = "PNEUMOCNN",
                 allow: Sequence[str] | None = None,
                 forward: str | Destination | None = None, max_associations: int = 10,
                 max_object_mb: float = 100.0, tls: ssl.SSLContext | None = None,
                 forward_tls: ssl.SSLContext | None = None, heatmaps: str = "flagged",
                 guard: bool = True, forward_attempts: int = 3, forward_pause: float = 2.0,
                 retry_seconds: float = 300.0, limits: Limits | None = None) -> None:
        pynetdicom()
        if not 1 <= len(ae_title.strip()) <= 16:
            raise ValueError(f"AE title {ae_title!r}: 1 to 16 characters")
        if max_associations < 1 or max_object_mb <= 0:
            raise ValueError("max_associations and max_object_mb must be positive")
        self.out = Path(out).resolve()
        self.model = model if isinstance(model, Model) else load(model)
        self.host, self.ae_title = host, ae_title.strip()
        self.allow = [title.strip() for title in allow] if allow else []
        self.limits = dataclasses.replace(limits or Limits(), max_associations=max_associations,
                                          max_object_bytes=int(max_object_mb * 1024 * 1024))
        triage.check_heatmaps(heatmaps)  # refused here, not in the scoring thread
        self.tls, self.heatmaps, self.guard = tls, heatmaps, guard
        self._requested_port = port
        self.received, self.results = self.out / "received", self.out / "results"
        self.conflicts = self.out / "conflicts"
        self.forwarder = None
        if forward is not None:
            destination = forward if isinstance(forward, Destination) else Destination.parse(forward)
            self.forwarder = Forwarder(destination, self.out / "outbox", self.results,
                                       self.ae_title, attempts=forward_attempts,
                                       pause=forward_pause, retry_seconds=retry_seconds,
                                       tls=forward_tls)
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._store_lock = threading.Lock()
        self._scored: set[str] = set()
        self._gate: Gate | None = None
        self._worker: threading.Thread | None = None
        self._held = contextlib.ExitStack()

    @property
    def port(self) -> int:
        """The port the node listens on (the one bound, when started with ``port=0``)."""
        return self._gate.port if self._gate else self._requested_port

    def start(self) -> Node:
        """Lock ``out``, listen, queue what an earlier run stored but did not score, start the
        worker (and the forwarder); return at once. A node starts once."""
        with self._held as held:
            held.enter_context(exclusive_lock(self.out / ".lock", f"the node folder {self.out}"))
            for folder in (self.received, self.conflicts, self.results, self.out / "images"):
                folder.mkdir(parents=True, exist_ok=True)
                remove_temporaries(folder)
            self._scored = {entry.file for entry in triage.read_scores(self.out / triage.SCORES)}
            pending = [path for folder in (self.received, self.conflicts)
                       for path in sorted(folder.glob("*.dcm")) if str(path) not in self._scored]
            if pending:
                LOG.info("%d object(s) stored by an earlier run but not scored: scoring them",
                         len(pending))
            self._gate = self._listen()  # a port in use raises here, before any thread
            for path in pending:
                self._queue.put(path)
            self._worker = threading.Thread(target=self._work, name="pneumocnn-score", daemon=True)
            self._worker.start()
            if self.forwarder:
                self.forwarder.start()
            self._gate.start()
            self._held = held.pop_all()
        LOG.info("%s listening on %s:%d%s; writing to %s", self.ae_title, self.host, self.port,
                 " (TLS)" if self.tls else "", self.out)
        return self

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every object received so far is scored and listed (and, with a
        forward, every report tried); True if that happened within ``timeout`` seconds."""
        done = threading.Event()

        def signal_when_drained() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=signal_when_drained, daemon=True).start()
        if not done.wait(timeout):
            return False
        return self.forwarder is None or self.forwarder.wait_idle(timeout)

    def stop(self) -> None:
        """Stop listening (aborting the associations under way), finish scoring what was
        received, stop forwarding, unlock ``out``."""
        if self._gate is not None:
            self._gate.stop()
            self._gate = None
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join()
            self._worker = None
        if self.forwarder:
            self.forwarder.stop()
        self._held.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # the SCP

    def _listen(self) -> Gate:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # the gate checks both first; pynetdicom checks again
        ae.require_calling_aet = self.allow
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in ACCEPTED:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers: list[evt.EventHandlerType] = [(evt.EVT_C_STORE, self._on_store),
                                                (evt.EVT_C_ECHO, self._on_echo)]
        return Gate(ae, (self.host, self._requested_port), handlers, self.limits,
                    allow=self.allow, tls=self.tls)

    def _on_echo(self, event) -> int:
        """Answer a C-ECHO with success (the association says who asked, when it ends)."""
        gate = self._gate
        if gate and (connection := gate.connection(event.assoc)) is not None:
            connection.count("echo")
        return SUCCESS

    def _on_store(self, event) -> int:
        """Store one object durably, queue it for scoring, and answer; never raises. Logs one
        line per object refused (what the libraries said folded into it)."""
        gate = self._gate
        connection = gate.connection(event.assoc) if gate else None
        sender = connection.peer if connection else printable(event.assoc.requestor.ae_title)
        with holding_library_logs() as said:
            try:
                status, level, message = self._store(event)
            except OSError as error:  # a full disk, say: the sender may try again later
                status, level = OUT_OF_RESOURCES, logging.ERROR
                message = f"cannot store it ({printable(str(error))[:300]})"
            except Exception as error:  # whatever a hostile object makes pydicom raise
                status, level = CANNOT_UNDERSTAND, logging.WARNING
                message = f"cannot read it whole ({printable(one_line(error) or type(error).__name__)[:300]})"
        if connection is not None:
            connection.count("stored" if status == SUCCESS else "refused")
        if said and status != SUCCESS:
            more = f" (+{len(said) - 1} more)" if len(said) > 1 else ""
            message += f"; pydicom said: {printable(one_line(said[0]))[:200]}{more}"
        if status != SUCCESS:
            LOG.log(max(level, logging.WARNING), "refused an object from %s (status 0x%04X): %s",
                    sender, status, message)
        else:
            LOG.log(level, "%s from %s", message, sender)
        return status

    def _store(self, event) -> tuple[int, int, str]:
        """The status, log level and log message of one C-STORE."""
        context = event.context
        with read_received(event.request.DataSet, context.transfer_syntax,
                           self.limits.max_object_bytes) as received:
            dataset = received.dataset
            sop_class = str(dataset.get("SOPClassUID", ""))
            instance = str(dataset.get("SOPInstanceUID", ""))
            if sop_class != str(context.abstract_syntax):
                return NOT_MATCHING, logging.WARNING, (
                    f"SOP class {printable(sop_class)[:80] or 'missing'} sent as "
                    f"{context.abstract_syntax}; accepted: {', '.join(ACCEPTED.values())}")
            if not (valid_uid(instance) and instance == str(event.request.AffectedSOPInstanceUID)):
                return CANNOT_UNDERSTAND, logging.WARNING, (
                    f"invalid or mismatched SOP Instance UID '{printable(instance)[:80]}'")
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
                value = str(dataset.get(keyword, ""))
                if keyword in dataset and not valid_uid(value):
                    return CANNOT_UNDERSTAND, logging.WARNING, (
                        f"invalid {keyword} '{printable(value)[:80]}'")
            from pynetdicom.dsutils import encode_file_meta

            file_meta = encode_file_meta(event.file_meta)
            path = self.received / f"{instance}.dcm"
            with self._store_lock:
                if not path.exists():
                    write_object(path, file_meta, received)
                    self._queue.put(path)
                    return SUCCESS, logging.INFO, f"stored {path.name}"
                if same_pixels(path, received, file_meta):
                    return SUCCESS, logging.INFO, (f"already stored: {instance} (not stored or "
                                                   "listed again)")
                conflict = self.conflicts / f"{instance}.{received.digest[:16]}.dcm"
                if conflict.exists():
                    return SUCCESS, logging.INFO, f"conflict already recorded: {conflict.name}"
                write_object(conflict, file_meta, received)
                self._queue.put(conflict)
                return SUCCESS, logging.WARNING, (
                    f"conflict: {instance} is stored already with other pixel data; the first "
                    f"is kept and scored, this one kept as {conflict.relative_to(self.out)}, "
                    "not scored, and listed with the failures")

    # the worker

    def _work(self) -> None:
        while True:
            path = self._queue.get()
            try:
                if path is _STOP:
                    return
                self._score(path)
                if self._queue.empty():
                    triage.write_worklist(self.out, self.model, self.heatmaps)
            except Exception:  # never stop the worker: the object stays unscored until a restart
                LOG.exception("could not score or list %s", path)
            finally:
                self._queue.task_done()

    def _score(self, path: Path) -> None:
        """Score one stored object, read once; write its report (and outbox marker), then its
        row."""
        name = str(path)
        if name in self._scored:
            return
        if path.parent == self.conflicts:
            entry = _conflict_entry(path, self.received / f"{path.stem.rsplit('.', 1)[0]}.dcm")
        else:
            entry = triage.score(self.model, path, name, self.out / "images", self.heatmaps,
                                 self.guard)
        if not entry.error:
            try:
                with holding_library_logs():  # what it says is in the report's own warnings
                    report = structured_report.structured_report(entry, self.model)
            except ValueError as error:  # what the report would copy is not valid DICOM
                entry = entry.not_scored(f"no report: {error}")
            else:
                report_name = f"{report.SOPInstanceUID}.dcm"
                write_durably(self.results / report_name, structured_report.encode(report))
                if self.forwarder:
                    write_durably(self.forwarder.outbox / report_name, b"")
        triage.append_score(self.out / triage.SCORES, entry)
        self._scored.add(name)
        row = entry.row()
        LOG.info("%s: %s", path.name,
                 printable(row["error"]) or f"{row['label']} ({row['probability']})")
        if self.forwarder and not entry.error:
            self.forwarder.wake()


def _conflict_entry(path: Path, first: Path) -> Entry:
    """The worklist entry of an object kept in ``conflicts/``: never scored."""
    from pneumocnn.core.dicom import read_identifiers

    reason = (f"conflict: same SOP Instance UID as {first} but other pixel data; not scored "
              "(the first received is kept and scored)")
    return Entry(not_scored(str(path), reason), read_identifiers(path))


def tls_context(cert: str | os.PathLike, key: str | os.PathLike,
                ca: str | os.PathLike | None = None) -> ssl.SSLContext:
    """A server SSL context from a certificate and key (PEM); with ``ca``, senders must show a
    certificate that CA signed (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def serve(out: str | os.PathLike, model: Model | str | os.PathLike | None = None,
          **options) -> None:
    """Run a :class:`Node` (``options`` as it takes them) until SIGINT or SIGTERM, then stop
    it cleanly. Python warnings go to the log, where those made while reading an object or on
    an association's threads are folded into its line."""
    logging.captureWarnings(True)
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with Node(out, model, **options), contextlib.suppress(KeyboardInterrupt):
        stopping.wait()
    LOG.info("stopped")


__all__ = ["ACCEPTED", "Destination", "Node", "serve", "tls_context"]

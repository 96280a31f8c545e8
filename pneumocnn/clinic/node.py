"""The DICOM node: a storage SCP that triages the chest X-rays an X-ray unit or PACS sends it.

``Node(out, ...).start()`` (or ``pneumocnn listen``) accepts Computed Radiography and Digital
X-Ray (for presentation) images by C-STORE and, in the folder ``out``:

- ``received/SOP_INSTANCE_UID.dcm``: each object as it was sent, written atomically and flushed
  to disk (file and folder) **before** the C-STORE is answered with success, so that an object
  the sender believes delivered survives a crash;
- ``scores.csv``, ``worklist.csv``, ``report.html``, ``images/``: the triage worklist
  (:mod:`pneumocnn.clinic.triage`), a row per object, scored in a worker thread (never in the
  association's thread); the worklist and report are rewritten whenever the queue empties;
- ``results/REPORT_UID.dcm``: a DICOM Structured Report per X-ray scored
  (:mod:`pneumocnn.clinic.structured_report`), and with ``forward`` a marker in ``outbox/``
  until the PACS has stored it (:mod:`pneumocnn.clinic.forward`).

The journal is the folder itself: an object is stored when its file is in ``received/``, and
scored when its row is in ``scores.csv`` (appended and flushed after its report was written).
At start, every stored object without a row is scored: after ``kill -9``, nothing the node
acknowledged is lost and nothing already scored is scored again. An object whose SOP Instance
UID is already stored is answered with success and not stored or scored again: it is listed
once. The folder is locked: one node per folder.

Refused, each with a logged reason: a calling AE title not on ``allow`` (the association is
rejected); SOP classes other than CR and DX for presentation (their presentation contexts are
rejected; a data set that says another class gets status 0xA900); an object over
``max_object_mb`` (0xA700, checked once received); one that cannot be parsed or carries an
invalid SOP Instance UID (0xC000). Beyond ``max_associations`` at once, an association is
rejected (transient). Needs the ``dicom-net`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

from pneumocnn.clinic import structured_report, triage
from pneumocnn.clinic.forward import Destination, Forwarder, pynetdicom
from pneumocnn.core.durable_files import exclusive_lock, remove_temporaries, write_durably
from pneumocnn.runtime.model import Model, load

LOG = logging.getLogger("pneumocnn.node")
ACCEPTED = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
}
SUCCESS, OUT_OF_RESOURCES, NOT_MATCHING, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_STOP = None


class Node:
    """A DICOM storage SCP writing the triage of what it receives into ``out``.

    ``model``: a :class:`Model`, a model path, or None for the bundled model. ``allow``: the
    calling AE titles that may store (None: any). ``forward``: ``AE@HOST:PORT`` (or a
    :class:`~pneumocnn.clinic.forward.Destination`) to send each report to. ``tls``: a server
    SSL context (see :func:`tls_context`); ``forward_tls`` a client SSL context for the
    forward. ``port=0`` takes a free port (see :attr:`port`). ``heatmaps``: which X-rays get
    one in the worklist, as :func:`~pneumocnn.clinic.triage.triage` takes it.
    """

    def __init__(self, out: str | os.PathLike, model: Model | str | os.PathLike | None = None, *,
                 port: int = 11112, host: str = "0.0.0.0", ae_title: str = "PNEUMOCNN",
                 allow: Sequence[str] | None = None,
                 forward: str | Destination | None = None, max_associations: int = 10,
                 max_object_mb: float = 100.0, tls: ssl.SSLContext | None = None,
                 forward_tls: ssl.SSLContext | None = None, heatmaps: str = "flagged",
                 guard: bool = True, forward_attempts: int = 3, forward_pause: float = 2.0,
                 retry_seconds: float = 300.0) -> None:
        pynetdicom()
        if not 1 <= len(ae_title.strip()) <= 16:
            raise ValueError(f"AE title {ae_title!r}: 1 to 16 characters")
        if max_associations < 1 or max_object_mb <= 0:
            raise ValueError("max_associations and max_object_mb must be positive")
        self.out = Path(out).resolve()
        self.model = model if isinstance(model, Model) else load(model)
        self.host, self.ae_title = host, ae_title.strip()
        self.allow = [title.strip() for title in allow] if allow else []
        self.max_associations = max_associations
        self.max_object_bytes = int(max_object_mb * 1024 * 1024)
        self.tls, self.heatmaps, self.guard = tls, heatmaps, guard
        self._requested_port = port
        self.received, self.results = self.out / "received", self.out / "results"
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
        self._server = None
        self._worker: threading.Thread | None = None
        self._held = contextlib.ExitStack()

    @property
    def port(self) -> int:
        """The port the node listens on (the one bound, when started with ``port=0``)."""
        return self._server.server_address[1] if self._server else self._requested_port

    def start(self) -> Node:
        """Lock ``out``, listen, queue what an earlier run stored but did not score, start the
        worker (and the forwarder); return at once. A node starts once."""
        with self._held as held:
            held.enter_context(exclusive_lock(self.out / ".lock", f"the node folder {self.out}"))
            for folder in (self.received, self.results, self.out / "images"):
                folder.mkdir(parents=True, exist_ok=True)
                remove_temporaries(folder)
            self._scored = {row["file"] for row in triage.read_scores(self.out / triage.SCORES)}
            pending = [path for path in sorted(self.received.glob("*.dcm"))
                       if str(path) not in self._scored]
            if pending:
                LOG.info("%d object(s) stored by an earlier run but not scored: scoring them",
                         len(pending))
            self._server = self._listen()  # a port in use raises here, before any thread
            for path in pending:
                self._queue.put(path)
            self._worker = threading.Thread(target=self._work, name="pneumocnn-score", daemon=True)
            self._worker.start()
            if self.forwarder:
                self.forwarder.start()
            self._held = held.pop_all()
        LOG.info("%s listening on %s:%d%s; writing to %s", self.ae_title, self.host, self.port,
                 " (TLS)" if self.tls else "", self.out)
        return self

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every object received so far is scored and listed (and, with a
        forward, every report tried); True if that happened within ``timeout`` seconds."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        if not done.wait(timeout):
            return False
        return self.forwarder is None or self.forwarder.wait_idle(timeout)

    def stop(self) -> None:
        """Stop listening, finish scoring what was received, stop forwarding, unlock ``out``."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
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

    def _listen(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.require_called_aet = True
        ae.require_calling_aet = self.allow
        for sop_class in ACCEPTED:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, _log_rejection)]
        return ae.start_server((self.host, self._requested_port), block=False,
                               ssl_context=self.tls, evt_handlers=handlers)

    def _on_store(self, event) -> int:
        """Store one object durably, queue it for scoring, and answer; never raises."""
        sender = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        try:
            status, reason = self._store(event)
        except Exception as error:  # whatever a hostile object makes pydicom raise
            status, reason = CANNOT_UNDERSTAND, f"cannot parse it ({_one_line(error)})"
        if status != SUCCESS:
            LOG.warning("refused an object from %s (status 0x%04X): %s", sender, status, reason)
        elif reason:
            LOG.info("%s from %s", reason, sender)
        return status

    def _store(self, event) -> tuple[int, str]:
        encoded = event.encoded_dataset(include_meta=False)
        if len(encoded) > self.max_object_bytes:
            return OUT_OF_RESOURCES, (f"{len(encoded):,} bytes, over the limit of "
                                      f"{self.max_object_bytes:,}")
        context = str(event.context.abstract_syntax)
        dataset = event.dataset
        for _ in dataset.iterall():  # parse every element now: a broken one is refused here
            pass
        sop_class = str(dataset.get("SOPClassUID", ""))
        instance = str(dataset.get("SOPInstanceUID", ""))
        if context not in ACCEPTED or sop_class != context:
            return NOT_MATCHING, (f"SOP class {sop_class or 'missing'} sent as {context}; "
                                  f"accepted: {', '.join(ACCEPTED.values())}")
        if not (_UID.fullmatch(instance) and len(instance) <= 64
                and instance == str(event.request.AffectedSOPInstanceUID)):
            return CANNOT_UNDERSTAND, f"invalid or mismatched SOP Instance UID {instance[:80]!r}"
        path = self.received / f"{instance}.dcm"
        with self._store_lock:
            if path.exists():
                return SUCCESS, f"already stored: {instance} (not stored or listed again)"
            write_durably(path, event.encoded_dataset())
        self._queue.put(path)
        return SUCCESS, f"stored {path.name}"

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
        """Score one stored object; write its report (and outbox marker), then its row."""
        name = str(path)
        if name in self._scored:
            return
        row = triage.score(self.model, path, name, self.out / "images", self.heatmaps, self.guard)
        if not row["error"]:
            import pydicom

            source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            report = structured_report.structured_report(source, row, self.model)
            report_name = f"{report.SOPInstanceUID}.dcm"
            write_durably(self.results / report_name, structured_report.encode(report))
            if self.forwarder:
                write_durably(self.forwarder.outbox / report_name, b"")
        triage.append_score(self.out / triage.SCORES, row)
        self._scored.add(name)
        LOG.info("%s: %s", path.name, row["error"] or f"{row['label']} ({row['probability']})")
        if self.forwarder and not row["error"]:
            self.forwarder.wake()


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
    it cleanly."""
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with Node(out, model, **options), contextlib.suppress(KeyboardInterrupt):
        stopping.wait()
    LOG.info("stopped")


def _log_rejection(event) -> None:
    """Log why an association was rejected, by the checks pynetdicom made, in its order."""
    requestor, ae = event.assoc.requestor, event.assoc.ae
    called = str(requestor.primitive.called_ae_title).strip()
    if ae.require_calling_aet and requestor.ae_title.strip() not in ae.require_calling_aet:
        reason = f"calling AE title not allowed (allowed: {', '.join(ae.require_calling_aet)})"
    elif called != event.assoc.acceptor.ae_title.strip():
        reason = f"it called {called!r}, not this node's AE title"
    else:
        reason = f"{ae.maximum_associations} associations at once already"
    LOG.warning("rejected an association from %s@%s: %s", requestor.ae_title,
                requestor.address, reason)


def _one_line(error: Exception) -> str:
    from pneumocnn.core.dicom import one_line

    return one_line(error) or type(error).__name__


__all__ = ["ACCEPTED", "Destination", "Node", "serve", "tls_context"]

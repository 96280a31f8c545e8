"""Sending result files on to a PACS by C-STORE (a pynetdicom storage SCU), from a durable
outbox.

A file to send is first written (by the caller) and then named in the outbox folder by an
empty marker file of the same name; the marker is deleted only once the destination answered
the C-STORE with success. A send that fails is tried ``attempts`` times, with a growing pause;
then the failure is logged as an error and the marker left, so the file is tried again on the
next pass (every ``retry_seconds``, whenever a new file is queued, and after a restart). The
result file itself is never removed. Needs the ``dicom-net`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from pneumocnn.core.errors import MissingDependencyError, PneumocnnError

LOG = logging.getLogger(__name__)
INSTALL = "pip install 'pneumocnn[dicom-net]'"
_DESTINATION = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})")
# Success, and the storage warnings (coercion of data elements, elements discarded, data set
# does not match the SOP class): the destination holds the report
_STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


def pynetdicom():
    """The pynetdicom module, or :class:`MissingDependencyError` naming the extra."""
    try:
        import pynetdicom as module
    except ImportError:
        raise MissingDependencyError(f"the DICOM node needs pynetdicom: {INSTALL}") from None
    return module


@dataclass(frozen=True)
class Destination:
    """A DICOM storage SCP to send to: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@HOST:PORT`` (an IPv6 host in brackets); ``ValueError`` saying the form."""
        match = _DESTINATION.fullmatch(text.strip())
        if not match or not 0 < int(match["port"]) < 65536 or not match["ae"].strip():
            raise ValueError(f"{text!r}: a destination is AE@HOST:PORT, e.g. PACS@10.0.0.5:104 "
                             "(AE title of at most 16 characters)")
        return cls(match["ae"].strip(), match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class ForwardError(PneumocnnError):
    """A file could not be stored at the destination."""


class Forwarder:
    """A thread that sends the files named in ``outbox`` (found in ``folder``) to
    ``destination``, calling as ``ae_title``; ``tls`` is a client SSL context or None."""

    def __init__(self, destination: Destination, outbox: Path, folder: Path, ae_title: str, *,
                 attempts: int = 3, pause: float = 2.0, retry_seconds: float = 300.0,
                 tls: ssl.SSLContext | None = None) -> None:
        pynetdicom()
        self.destination = destination
        self.outbox, self.folder = Path(outbox), Path(folder)
        self.ae_title = ae_title
        self.attempts, self.pause, self.retry_seconds = max(1, attempts), pause, retry_seconds
        self.tls = tls
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pneumocnn-forward", daemon=True)

    def start(self) -> None:
        """Start sending; what an earlier run left in the outbox is sent first."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (a file was queued)."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until a pass found nothing more to try; True if it did within ``timeout``."""
        return self._idle.wait(timeout)

    def pending(self) -> list[str]:
        """Names of the files not yet stored at the destination."""
        return sorted(path.name for path in self.outbox.iterdir() if not path.name.startswith("."))

    def stop(self) -> None:
        """Stop after the send under way; the outbox keeps what was not sent."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            for name in self.pending():
                if self._stopping.is_set():
                    return
                self._send_with_retries(name)
            if not self._wake.is_set():
                self._idle.set()
            self._wake.wait(self.retry_seconds)

    def _send_with_retries(self, name: str) -> None:
        path = self.folder / name
        for attempt in range(1, self.attempts + 1):
            try:
                self.send(path)
            except Exception as error:  # refused, unreachable, or a file pydicom cannot read
                if attempt == self.attempts:
                    LOG.error("could not forward %s to %s after %d attempts (%s); the file is "
                              "kept and will be tried again", path, self.destination,
                              self.attempts, error)
                    return
                LOG.warning("forwarding %s to %s failed (%s); trying again", path,
                            self.destination, error)
                if self._stopping.wait(self.pause * attempt):
                    return
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.outbox / name).unlink()
                LOG.info("forwarded %s to %s", path, self.destination)
                return

    def send(self, path: Path) -> None:
        """Store the DICOM file ``path`` at the destination; :class:`ForwardError` if the
        destination refused it or did not answer (a file that cannot be read raises as pydicom
        raises)."""
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        dataset = pydicom.dcmread(path)
        ae = AE(ae_title=self.ae_title)
        # every SCP takes Implicit VR Little Endian, DICOM's default
        ae.add_requested_context(dataset.SOPClassUID, [ExplicitVRLittleEndian,
                                                       ImplicitVRLittleEndian])
        tls = (self.tls, self.destination.host) if self.tls else None
        association = ae.associate(self.destination.host, self.destination.port,
                                   ae_title=self.destination.ae_title, tls_args=tls)
        if not association.is_established:
            raise ForwardError(f"association with {self.destination} "
                               f"{'rejected' if association.is_rejected else 'failed'}")
        try:
            status = association.send_c_store(dataset)
        finally:
            association.release()
        code = int(status.get("Status", -1)) if status else -1
        if code not in _STORED:
            raise ForwardError("no answer to the C-STORE" if code < 0 else
                               f"the C-STORE was answered with status 0x{code:04X}")

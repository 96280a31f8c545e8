"""Score files on a Dask cluster: :func:`predict_on_dask`, behind ``pneumocnn predict --dask``.

Needs ``pip install 'pneumocnn[dask]'`` on the client and on every worker (with the same
pneumocnn; workers also need ``[dicom]`` for DICOM files). Importing this module without it
raises :class:`~pneumocnn.MissingDependencyError`; nothing else in pneumocnn imports it, or
Dask.

- The model is loaded on the client (checked, and its variant chosen there) and its file's
  bytes (under 1 MB) are sent once to each worker in a ``distributed.WorkerPlugin``, which
  loads it when the worker starts (again if a worker is restarted): workers need no shared
  file system for the model, only for the X-rays.
- Inputs are listed lazily on the client (folders, manifests, paths) and sent out in
  partitions of ``partition_size`` paths, with at most ``window`` partitions in flight, so the
  client holds a bounded number of futures however many inputs there are.
- A worker reads, decodes and scores each file of its partition exactly as
  :meth:`~pneumocnn.runtime.model.Model.predict_iter` does and sends back the
  :class:`~pneumocnn.runtime.model.Prediction` records (name, label, probability, threshold,
  error), never pixels. A file it cannot read is an error row, never a failed task.
- The predictions of a partition are yielded once, when its future completes: a worker killed
  mid-run costs its partitions' time (Dask runs them again elsewhere), never a lost or repeated
  row. A partition whose workers keep dying (a file that crashes the decoder, say) is tried
  again one file a task, and the file that still kills its worker gets an error row.
- Rows arrive in the order partitions finish, not in input order; within a partition, in
  input order.
"""

from __future__ import annotations

import itertools
import math
import os
import uuid
from collections import deque
from collections.abc import Container, Generator, Iterable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

from pneumocnn.core.errors import InputError, MissingDependencyError, PneumocnnError

try:
    import distributed
except ImportError:
    raise MissingDependencyError(
        "scoring on Dask needs dask and distributed: pip install 'pneumocnn[dask]'"
    ) from None

from pneumocnn.core.inputs import expand_inputs
from pneumocnn.core.modelfile import read_tflite_description
from pneumocnn.core.preprocessing import ImageInput, load_pixels
from pneumocnn.runtime.backends import TFLiteBackend
from pneumocnn.runtime.model import Model, Prediction, check_threshold, load

PARTITION_SIZE = 128
KILLED = "the worker scoring this file died, on every try"


def predict_on_dask(
    inputs: ImageInput | Iterable[ImageInput],
    model: Model | str | os.PathLike | None = None,
    *,
    cluster: distributed.Client | str = "local",
    threshold: float | None = None,
    threads: int = 1,
    skip: Container[str] = (),
    partition_size: int = PARTITION_SIZE,
    window: int | None = None,
    guard: bool = True,
) -> Generator[Prediction, None, None]:
    """Score files, folders and manifests on a Dask cluster, yielding each
    :class:`~pneumocnn.runtime.model.Prediction` as its partition completes (not in input
    order); the same rows, probabilities and error rows as :meth:`Model.predict_iter`.

    ``model``: a loaded ``.tflite`` :class:`Model`, a model file or folder of variants (the
    variant fastest on this machine at ``threads`` threads is chosen here), or None for the
    bundled models. ``cluster``: a ``distributed.Client``; ``"local:N"`` for a
    ``LocalCluster`` of N single-threaded worker processes on this machine (``"local"``: one
    per core), closed at the end; or a scheduler address (``"tcp://host:8786"``). ``threads``:
    the interpreter threads of each worker's model. ``skip``: names not to score (already
    done). ``window``: partitions in flight (default: twice the cluster's worker threads, at
    least 4). ``guard``: as for :meth:`Model.predict`. In-memory inputs (bytes, arrays,
    images) cannot be sent by path and get an error row."""
    if not isinstance(model, Model):
        model = load(model, threads=threads)
    if not model.path.endswith(".tflite"):
        raise ValueError(f"{model.path}: scoring on Dask takes a .tflite model")
    if partition_size < 1:
        raise ValueError(f"partition_size must be at least 1, got {partition_size}")
    threshold = model.threshold if threshold is None else check_threshold(threshold)
    plugin = ModelPlugin(Path(model.path).read_bytes(), model.path, threads)
    work = _partitions(inputs, skip, partition_size, threshold)
    first = next(work, None)
    if first is None:  # nothing to do (all done already): no cluster needed
        return
    client, owned = _connect(cluster)
    try:
        client.register_plugin(plugin)
        yield from _score(client, plugin.name, (threshold, guard), itertools.chain([first], work),
                          window)
    finally:
        if owned:
            cluster_ = client.cluster
            client.close()
            if cluster_ is not None:
                cluster_.close()


def _connect(cluster: distributed.Client | str) -> tuple[distributed.Client, bool]:
    """``(client, whether it and its cluster are ours to close)``."""
    if isinstance(cluster, distributed.Client):
        return cluster, False
    if not isinstance(cluster, str):
        raise ValueError(f"cluster must be a distributed.Client, 'local:N' or a scheduler "
                         f"address, not {cluster!r}")
    if cluster == "local" or cluster.startswith("local:"):
        count = cluster.partition(":")[2] or str(os.cpu_count() or 1)
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{cluster!r}: 'local:N' takes a number of workers N >= 1")
        local = distributed.LocalCluster(n_workers=int(count), threads_per_worker=1,
                                         processes=True, dashboard_address=None)
        return distributed.Client(local), True
    return distributed.Client(cluster), True


class ModelPlugin(distributed.WorkerPlugin):
    """The model for the workers: the file's bytes, loaded once per worker process when the
    plugin reaches it (at registration, or when the worker starts or is restarted) with
    ``threads`` interpreter threads. Its name is unique to the bytes and threads, and it is
    idempotent: registering it again on a cluster that has it changes nothing. It stays
    registered after a run (another client may be using it), so that the next run of the same
    model on that cluster ships nothing."""

    idempotent = True

    def __init__(self, content: bytes, source: str, threads: int) -> None:
        self.content, self.source, self.threads = content, source, threads
        self.name = f"pneumocnn-model-{sha256(content).hexdigest()[:16]}-{threads}"
        self.model: Model | None = None

    def setup(self, worker: Any) -> None:
        """Load the model in this worker (its digest and tensors checked, as by ``load``)."""
        description = read_tflite_description(self.content, self.source)
        backend = TFLiteBackend(self.content, description, self.source, self.threads)
        self.model = Model(backend, description, self.source)

    def teardown(self, worker: Any) -> None:
        """Drop the model."""
        self.model = None


def _score_partition(names: list[str], plugin: str, threshold: float,
                     guard: bool) -> list[Prediction]:
    """On a worker: score each file of a partition with the worker's model."""
    held = distributed.get_worker().plugins[plugin]
    assert isinstance(held, ModelPlugin) and held.model is not None, f"{plugin} is not set up"
    return [_score_file(held.model, name, threshold, guard) for name in names]


def _score_file(model: Model, name: str, threshold: float, guard: bool) -> Prediction:
    """One file, as one input even where its name looks like a folder or a manifest (``predict``
    would expand those): a manifest entry that is one gets an error row, as without Dask."""
    try:
        pixels = load_pixels(name, model.description.preprocessing, name, guard=guard)
        return model.predict_pixels(pixels, name, threshold)
    except Exception as error:  # noqa: BLE001 -- one odd file must not fail its partition's task
        return Prediction.failed(name, threshold, error)


def _partitions(inputs, skip: Container[str], size: int,
                threshold: float) -> Iterator[list[str] | Prediction]:
    """The names to score in lists of up to ``size``, read lazily from ``inputs``; an input
    that is not a file path (a folder that cannot be listed, an in-memory image) as its error
    row instead."""
    batch: list[str] = []
    for item, name in expand_inputs(inputs):
        if name in skip:
            continue
        if isinstance(item, (str, os.PathLike)) and name is not None:
            batch.append(name)
            if len(batch) == size:
                yield batch
                batch = []
        elif isinstance(item, InputError):
            yield Prediction.failed(item.source, threshold, item)
        else:
            yield Prediction(name or "(in-memory input)", None, math.nan, threshold,
                             "not a file path: Dask workers read their inputs from files")
    if batch:
        yield batch


def _score(client: distributed.Client, plugin: str, scoring: tuple[float, bool],
           work: Iterator[list[str] | Prediction], window: int | None) -> Iterator[Prediction]:
    """Submit partitions, keeping at most ``window`` in flight, and yield each one's
    predictions once, when its future completes; ``scoring`` is ``(threshold, guard)``."""
    threshold = scoring[0]
    run = uuid.uuid4().hex[:12]
    keys = itertools.count()
    futures = distributed.as_completed()
    names_of: dict[distributed.Future, list[str]] = {}
    retry: deque[list[str]] = deque()  # the files of a partition whose workers kept dying
    ready: list[Prediction] = []

    def fill() -> None:
        limit = window or max(4, 2 * sum(client.nthreads().values()))
        while futures.count() < limit:
            part = retry.popleft() if retry else next(work, None)
            if part is None:
                return
            if isinstance(part, Prediction):
                ready.append(part)
                continue
            future = client.submit(_score_partition, part, plugin, *scoring,
                                   key=f"pneumocnn-predict-{run}-{next(keys)}", pure=False)
            names_of[future] = part
            futures.add(future)

    try:
        fill()
        for future in futures:
            yield from ready
            ready.clear()
            names = names_of.pop(future)
            try:
                yield from future.result()
            except distributed.KilledWorker:
                if len(names) == 1:  # this file kills whichever worker reads it
                    yield Prediction(names[0], None, math.nan, threshold, KILLED)
                else:  # find the file: one task each
                    retry.extend([name] for name in names)
            except Exception as error:
                raise PneumocnnError(f"a Dask task failed: {type(error).__name__}: "
                                     f"{error}") from error
            finally:
                future.release()
            fill()
        yield from ready
    finally:
        client.cancel(list(names_of))

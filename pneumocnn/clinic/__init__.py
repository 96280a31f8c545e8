"""Clinic services built on the runtime: the triage worklist (:mod:`~pneumocnn.clinic.triage`),
the DICOM node (:mod:`~pneumocnn.clinic.node`) with its gate for connections
(:mod:`~pneumocnn.clinic.gate`), its checks of what it receives
(:mod:`~pneumocnn.clinic.received`), its Structured Reports
(:mod:`~pneumocnn.clinic.structured_report`) and forwarding to a PACS
(:mod:`~pneumocnn.clinic.forward`), site calibration (:mod:`~pneumocnn.clinic.site_calibration`)
and scoring on a Dask cluster (:mod:`~pneumocnn.clinic.dask_scoring`).

They use the runtime and core; neither imports them back, and nothing here imports the
training wing or TensorFlow (``tests/test_layout.py`` checks it).
"""

HEATMAPS = ("flagged", "all", "none")  # which scored files get a heatmap (triage, the node)

"""The core: what every wing shares, with neither TensorFlow nor a model runtime.

Errors, atomic file writes, CSV cells safe from formulas, strict JSON, image and DICOM
reading, the input guard,
preprocessing, folder walking and indexing, metrics, plots, and the model-file contract
(:mod:`pneumocnn.core.modelfile`).
Nothing here imports :mod:`pneumocnn.runtime` or :mod:`pneumocnn.training`.
"""

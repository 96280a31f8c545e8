"""The runtime: load a model file and score X-rays, on LiteRT without TensorFlow.

Backends behind one protocol (:mod:`~pneumocnn.runtime.backends`), the :class:`Model`
(:mod:`~pneumocnn.runtime.model`), evaluation, explanations and triage worklists. Nothing here
imports :mod:`pneumocnn.training` or TensorFlow (a ``.keras`` file loads Keras on demand).
"""

"""The runtime: load a model file and score X-rays, on LiteRT without TensorFlow.

Backends behind one protocol (:mod:`~pneumocnn.runtime.backends`), the :class:`Model`
(:mod:`~pneumocnn.runtime.model`), its variants, evaluation and explanations. Nothing here
imports :mod:`pneumocnn.training`, the clinic services (:mod:`pneumocnn.clinic`) or TensorFlow
(a ``.keras`` file loads Keras on demand).
"""

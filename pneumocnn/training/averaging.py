"""Weight averaging (the ``ema_momentum`` setting): the optimizer keeps an exponential moving
average of the weights over the training steps (Keras's ``use_ema``), training goes on from
the weights themselves, and the exported model takes the average.

Keras's ``fit`` ends by overwriting the weights with the average. The trainer calls ``fit``
once per epoch, so :class:`KeepTrainingWeights` puts the training weights back after each call;
checkpoints then hold the training weights, and the optimizer state in them the average.
"""

from __future__ import annotations

import keras


class KeepTrainingWeights(keras.callbacks.Callback):
    """Restore the weights of the last epoch's end after ``fit`` overwrote them with their
    moving average."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Keep a copy of the training weights, before ``fit`` replaces them."""
        self._weights = [variable.numpy() for variable in self.model.trainable_variables]

    def on_train_end(self, logs: dict | None = None) -> None:
        """Put the kept training weights back over the average ``fit`` wrote."""
        for variable, value in zip(self.model.trainable_variables, self._weights, strict=True):
            variable.assign(value)


def take_average(model: keras.Model) -> None:
    """Overwrite ``model``'s trainable weights with its optimizer's moving average of them."""
    model.optimizer.finalize_variable_values(model.trainable_variables)

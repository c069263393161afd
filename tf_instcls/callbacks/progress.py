"""A progress bar with loss, instance accuracy, lr and images per second."""

import keras


class ProgressLogger(keras.callbacks.Callback):
    def __init__(self, state, verbose: int = 1):
        super().__init__()
        self.state = state
        self.verbose = verbose
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.state.epochs}", flush=True)
            self.bar = keras.utils.Progbar(self.state.steps_per_epoch, verbose=self.verbose,
                                           stateful_metrics=["lr", "images_per_sec"])
            done = self.state.step - epoch * self.state.steps_per_epoch
            if done:
                self.bar.update(done)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            keys = ("loss", "instance_acc", "lr", "images_per_sec")
            self.bar.update(batch + 1, [(k, logs[k]) for k in keys if k in logs])

    def on_epoch_end(self, epoch, logs=None):
        if self.verbose and logs:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in logs.items()
                              if isinstance(v, float))
            print(f"epoch {epoch + 1}: {shown}", flush=True)

"""A progress bar with loss, instance accuracy, lr and images per second."""

import keras


class ProgressLogger(keras.callbacks.Callback):
    def __init__(self, *, epochs, steps_per_epoch: int, batch_size: int, step,
                 results: dict, verbose: int = 1):
        """``epochs()``: the run's length (a time budget's plan may change it);
        ``step()``: the global step; ``results``: the loop's dict of this epoch's
        results (e.g. its kNN accuracy), shown in the epoch's line."""
        super().__init__()
        self.epochs, self.steps_per_epoch, self.batch_size = epochs, steps_per_epoch, batch_size
        self.step, self.results, self.verbose = step, results, verbose
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.start_step = self.step()
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.epochs()}", flush=True)
            self.bar = keras.utils.Progbar(self.steps_per_epoch, verbose=self.verbose,
                                           stateful_metrics=["lr", "images_per_sec"])
            done = self.start_step - epoch * self.steps_per_epoch
            if done:
                self.bar.update(done)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            keys = ("loss", "instance_acc", "lr", "images_per_sec")
            self.bar.update(batch + 1, [(k, logs[k]) for k in keys if k in logs])

    def on_train_end(self, logs=None):
        if self.bar is not None:  # a run stopped mid-epoch (a signal, max_steps): the
            print(flush=True)  # bar's line ends here, and the stop's line starts anew
            self.bar = None

    def on_epoch_end(self, epoch, logs=None):
        self.bar = None  # the epoch's bar is complete
        if self.verbose and logs:
            logs = {**logs, **self.results}  # e.g. this epoch's kNN
            print(epoch_line(epoch, self.epochs(), logs, self._images(logs)), flush=True)

    def _images(self, logs) -> int:
        steps = int(logs.get("step", self.step())) - getattr(self, "start_step", 0)
        return steps * self.batch_size


def epoch_line(epoch: int, epochs: int, logs: dict, images: int = 0) -> str:
    """One readable line per epoch: loss, instance accuracy, kNN, lr, speed, time."""
    parts = []
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    if "instance_acc" in logs:
        parts.append(f"instance acc {100 * logs['instance_acc']:.1f}%")
    if "knn_top1" in logs:
        parts.append(f"kNN top-1 {logs['knn_top1']:.2f}%")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.4g}")
    seconds = logs.get("train_seconds")
    if seconds:
        if images:
            parts.append(f"{images / seconds:.0f} images/s")
        parts.append(f"{seconds:.1f} s")
    if logs.get("mining_seconds"):
        parts.append(f"mining {logs['mining_seconds']:.2f} s")
    if logs.get("skipped_steps"):
        parts.append(f"{int(logs['skipped_steps'])} steps skipped (non-finite)")
    return f"epoch {epoch + 1}/{epochs}: " + ", ".join(parts)

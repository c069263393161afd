"""Momentum SGD with weight decay whose slots keep each variable's DTensor layout.

The paper trains with SGD, momentum 0.9, weight decay 1e-4 (PyTorch semantics: the
decay is added to the gradient before the momentum buffer). Keras' SGD creates its
momentum slots on the default mesh, replicated: a row-sharded W would get a replicated
[N, D] slot, exactly the memory the sharding saves. Here every slot is created with its
variable's own layout (sharded W -> sharded slot), per device, never materialised whole.
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.parallel import layouts
from tf_instcls.parallel.layouts import keep_or_replace, masked


class MomentumSGD(tf.Module):
    """``buf = momentum * buf + (g + weight_decay * v);  v -= lr * buf``.

    Args:
      momentum: 0.9 in the paper.
      weight_decay: 1e-4 in the paper; applied to every variable passed to
        :meth:`build` except those whose name matches ``exclude_from_decay``.
      exclude_from_decay: substrings of variable names that get no weight decay
        (e.g. ``("bias", "beta", "gamma")`` for BN and biases); empty by default.
    """

    def __init__(
        self,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        exclude_from_decay: tuple[str, ...] = (),
        name: str = "momentum_sgd",
    ):
        super().__init__(name=name)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.exclude_from_decay = tuple(exclude_from_decay)
        self.slots: list[tf.Variable] = []
        self._slot_index: dict[int, int] = {}
        self._decay: list[float] = []
        self._lr_scale: list[float] = []
        self._project: list = []

    def build(self, variables, *, learning_rate_scale: float = 1.0,
              weight_decay: float | None = None, project=None) -> None:
        """Creates one momentum slot per variable, eagerly, with the variable's layout.

        ``learning_rate_scale`` multiplies the step's learning rate for these variables
        and ``weight_decay`` (None: the optimizer's) replaces their decay: call ``build``
        once per group (W gets its own in the pretraining loop). ``project`` (optional,
        a function of the updated value) is applied after each step, e.g. W's rows put
        back on the unit sphere.
        """
        if learning_rate_scale <= 0:
            raise ValueError(f"learning_rate_scale must be > 0; got {learning_rate_scale}")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        for variable in variables:
            key = id(variable)
            if key in self._slot_index:
                continue
            self._slot_index[key] = len(self.slots)
            slot_name = variable.name.split(":")[0].replace("/", "_") + "_momentum"
            self.slots.append(layouts.zeros_like_variable(variable, slot_name))
            excluded = any(part in variable.name for part in self.exclude_from_decay)
            decay = self.weight_decay if weight_decay is None else float(weight_decay)
            self._decay.append(0.0 if excluded else decay)
            self._lr_scale.append(float(learning_rate_scale))
            self._project.append(project)

    def has_slot(self, variable) -> bool:
        return id(variable) in self._slot_index

    def slot_for(self, variable) -> tf.Variable:
        return self.slots[self._slot_index[id(variable)]]

    def apply_gradients(self, grads_and_vars, learning_rate, apply=None) -> None:
        """One update; call inside the train step's tf.function, after :meth:`build`.

        ``apply`` (a scalar bool tensor, optional) masks the whole update: where it is
        False neither the variables nor the momentum slots change (the non-finite
        guard's skip), even if a gradient holds NaN or Inf.
        """
        for grad, variable in grads_and_vars:
            if grad is None:
                continue
            index = self._slot_index.get(id(variable))
            if index is None:
                raise ValueError(
                    f"variable {variable.name} was not passed to MomentumSGD.build()"
                )
            slot = self.slots[index]
            dtype = variable.dtype
            grad = tf.convert_to_tensor(grad, dtype)
            # Every [N, D] op below consumes the gradient, so none can run before the
            # loss is done. ``decay * v`` or ``momentum * buf`` need only state read at
            # the step's start, and the executor computed them there and held them
            # through the loss's memory peak (one [N, D] buffer each, seen in the
            # allocation trace). The same holds for ResourceApplyMomentum under
            # DTensor, whose MLIR passes decompose it into reads, ``buf * momentum``
            # and assigns. Written this way each op can reuse the gradient's buffer.
            decay = self._decay[index]
            if decay:
                grad = (grad * (1.0 / decay) + variable) * decay  # g + decay * v
            keep = tf.constant(1.0, dtype) if apply is None else tf.cast(apply, dtype)
            if apply is not None:
                grad = masked(grad, apply)  # exactly 0 where skipped, even for NaN / Inf
            if self.momentum > 0:
                # buf' = momentum * buf + g. Where skipped: momentum' = 1, g = 0, buf' = buf.
                momentum = self.momentum * keep + (1.0 - keep)
                buffer = (grad * (1.0 / momentum) + slot) * momentum
            else:
                buffer = grad if apply is None else keep_or_replace(apply, grad, slot)
            # The new buffer is used as a tensor, not re-read: on a sharded DVariable a
            # re-read of the slot was not ordered after its assign (4 devices, TF 2.21).
            slot.assign(buffer)
            scale = self._lr_scale[index]
            step_size = tf.cast(learning_rate, dtype) * (keep if scale == 1.0 else keep * scale)
            project = self._project[index]
            if project is None:
                variable.assign_sub(buffer * step_size)
            else:  # from the value read above: a re-read may not follow the assign
                variable.assign(project(tf.convert_to_tensor(variable) - buffer * step_size))

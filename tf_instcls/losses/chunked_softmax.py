"""The cosine softmax over chunks of the batch (``chunk_size``): one loop for the forward
pass, keeping only [c]-sized results per row, and one for the backward pass, which
recomputes each chunk's logits and sums dW (``losses/chunks.py``: the sequential loop)."""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.losses.cosine_softmax import CosineSoftmax, zero_after
from tf_instcls.parallel import layouts


class ChunkedCosineSoftmax(CosineSoftmax):
    """``CosineSoftmax`` in chunks of rows: at most one chunk's [c, N/S] buffers alive."""

    def _loss(self, x_unit, w_unit, shard_ids, valid):
        @tf.custom_gradient
        def cosine_softmax(x_unit, w_unit):
            grids = (self.chunks.grid(x_unit), self.chunks.grid(self.targets))
            outputs, saved = self._chunked_forward(grids, w_unit, shard_ids, valid)

            def grad(upstream, *unused_hit_grad):
                return self._chunked_backward(upstream, saved, grids, w_unit, shard_ids,
                                              valid)

            return outputs, grad

        return cosine_softmax(x_unit, w_unit)

    def _pin_dw(self, value):
        """The [D, N] dW accumulator: N sharded like W's rows (DHP), else replicated."""
        return layouts.pin_columns(value, self.placement)

    def _chunked_forward(self, grids, w_unit, shard_ids, valid):
        x_grid, t_grid = grids  # [P, n, c, D], [P, n, c, K']
        chunks = self.chunks
        p, n, c, k = (chunks.batch_shards, chunks.num_chunks, chunks.chunk,
                      self.targets.shape[1])
        rows = chunks.pin(tf.zeros([p, n, c]))
        outputs = [rows, rows] if self.with_accuracy else [rows]  # loss [, hit]
        saved = [rows, rows, chunks.pin(tf.zeros([p, n, c, k]))]  # shift, denom, posterior

        def body(i, *grids):
            out, _, (shift, denom, posterior) = self._forward_chunk(
                chunks.take(x_grid, i), chunks.take(t_grid, i), w_unit, shard_ids, valid
            )
            values = list(out) if self.with_accuracy else [out]
            values += [tf.reshape(shift, [-1]), tf.reshape(denom, [-1]), posterior]
            return [i + 1] + [chunks.put(g, i, v) for g, v in zip(grids, values)]

        grids = chunks.loop(body, outputs + saved)
        outputs = [chunks.ungrid(g) for g in grids[: len(outputs)]]
        saved = grids[len(outputs):]  # [P, n, c] / [P, n, c, K'] for every row
        return (tuple(outputs) if self.with_accuracy else outputs[0]), saved

    def _chunked_backward(self, upstream, saved, grids, w_unit, shard_ids, valid):
        x_grid, t_grid = grids
        chunks = self.chunks
        # Padded rows get a zero upstream gradient, so they add nothing to dW.
        g_grid = chunks.grid(upstream)

        def body(i, grad_x_grid, grad_w_t):
            x_chunk = chunks.take(x_grid, i)
            shift, denom, posterior = (chunks.take(g, i) for g in saved)
            parts = self._recompute_chunk(
                x_chunk, chunks.take(t_grid, i), w_unit, shard_ids, valid,
                (tf.reshape(shift, [-1, 1, 1]), tf.reshape(denom, [-1, 1, 1]), posterior),
            )
            g_x, g_w_t = self._chunk_gradient(parts, chunks.take(g_grid, i), x_chunk, w_unit)
            # dW is summed as [D, N] (the matmul's own output) and transposed once.
            return i + 1, chunks.put(grad_x_grid, i, g_x), self._pin_dw(grad_w_t + g_w_t)

        # The sums start at a zero that depends on the forward pass's result: a plain
        # tf.zeros([D, N]) is folded by DTensor's MLIR passes into a constant that the
        # function then keeps alive for good (one more [N, D] buffer per device).
        zero = zero_after(saved[1])
        dim, num = self.spec.dim, self.spec.num_classes
        grad_x_grid, grad_w_t = chunks.loop(body, [
            chunks.pin(tf.broadcast_to(zero, x_grid.shape)),
            self._pin_dw(tf.broadcast_to(zero, [dim, num])),
        ])
        return chunks.ungrid(grad_x_grid), tf.transpose(grad_w_t)

"""The mean of the cosine softmax in chunks, in one pass: each chunk's loss and gradient
together (``reduction="mean"``, what training uses)."""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.losses.chunked_softmax import ChunkedCosineSoftmax
from tf_instcls.losses.cosine_softmax import zero_after


class FusedMeanCosineSoftmax(ChunkedCosineSoftmax):
    """The chunked mean: the upstream gradient of a mean is one scalar, so each chunk's
    gradient is taken in the forward loop and only scaled in the backward pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # W whole and the batch in one piece: the label term stays sparse, so a chunk
        # holds one [c, N] buffer; elsewhere the label matrix Q is a second one.
        self.fused_sparse = self.one_piece and self.fixed_shift

    def _reduce(self, outputs):
        return outputs  # already the mean

    def _loss(self, x_unit, w_unit, shard_ids, valid):
        return self._fused_mean(x_unit, w_unit, shard_ids, valid)

    def _fused_mean(self, x_unit, w_unit, shard_ids, valid):
        """The mean loss (and the [B] hits) with chunks, the gradient taken chunk by chunk
        in the forward loop and kept: dJ/dx [B, D] and dW^T [D, N], scaled by the scalar
        upstream gradient in the backward pass.

        The upstream gradient of a mean is the same for every row, which is what lets a
        chunk's dW be summed in the pass that computes its logits: no second loop and no
        recomputed logits (one [c, D] x [D, N] matmul and one exp per chunk fewer than the
        per-row loss's two loops), at the cost of holding the [D, N] sum from the start.
        With W whole and the batch in one piece (``fused_sparse``) the label term
        stays sparse, as in :meth:`_sparse_label_gradient`: each chunk keeps its [c, K']
        label weights, and one sorted row scatter after the loop takes them off dW.
        """
        chunks = self.chunks
        b, dim, num = self.spec.batch, self.spec.dim, self.spec.num_classes
        x_grid, t_grid = chunks.grid(x_unit), chunks.grid(self.targets)
        # Each real row's share of the mean; the grid's padding rows get 0.
        share = chunks.grid(tf.fill([b], 1.0 / b))
        sparse = self.fused_sparse

        @tf.custom_gradient
        def cosine_softmax_mean(x_unit, w_unit):
            p, n, c = chunks.batch_shards, chunks.num_chunks, chunks.chunk
            rows = chunks.pin(tf.zeros([p, n, c]))
            first = [rows, rows] if self.with_accuracy else [rows]  # loss [, hit]
            if sparse:  # the label weights g [c, K'] of every chunk
                first.append(chunks.pin(tf.zeros(t_grid.shape)))
            # A zero that depends on the input: a plain tf.zeros([D, N]) is folded by
            # DTensor's MLIR passes into a constant kept alive for good (_chunked_backward).
            zero = zero_after(x_grid)
            sums = [chunks.pin(tf.broadcast_to(zero, x_grid.shape)),
                    self._pin_dw(tf.broadcast_to(zero, [dim, num]))]

            def body(i, *state):
                x_chunk = chunks.take(x_grid, i)
                values, g_x, g_w_t = self._fused_chunk(
                    x_chunk, chunks.take(t_grid, i), chunks.take(share, i), w_unit,
                    shard_ids, valid)
                grids = [chunks.put(g, i, v) for g, v in zip(state, values + [g_x])]
                return [i + 1] + grids + [self._pin_dw(state[-1] + g_w_t)]

            state = chunks.loop(body, first + sums)
            loss = tf.reduce_mean(chunks.ungrid(state[0]))
            outputs = (loss, chunks.ungrid(state[1])) if self.with_accuracy else loss
            grad_x, grad_w = chunks.ungrid(state[-2]), tf.transpose(state[-1])
            if sparse:  # g_bk x_b off row t_bk of dW, here: the backward pass only scales
                grad_w = self._minus_label_rows(
                    grad_w, chunks.ungrid(state[-3]), self.targets, x_unit)

            def grad(upstream, *unused_hit_grad):
                return grad_x * upstream, grad_w * upstream

            return outputs, grad

        return cosine_softmax_mean(x_unit, w_unit)

    def _fused_chunk(self, x_chunk, t_chunk, share, w_unit, shard_ids, valid):
        """([loss [c], (hit [c]), (g [c, K'])], dJ/dx [c, D], dW^T [D, N]) of one chunk
        for the row weights ``share`` [c] (1 / B, 0 on padding rows). With
        ``fused_sparse`` dW^T leaves out the label term, -g_bk at row t_bk."""
        if not self.fused_sparse:
            out, parts, _ = self._forward_chunk(x_chunk, t_chunk, w_unit, shard_ids, valid)
            values = list(out) if self.with_accuracy else [out]
            return (values, *self._chunk_gradient(parts, share, x_chunk, w_unit))
        values, expo, denom, posterior = self._forward_from_exp(
            x_chunk, t_chunk, w_unit, valid)
        row = share * self.spec.inv_temperature / denom  # [c]
        # dJ/dz = row_b exp(z) - g_bk at the targets, g_bk = row_b denom_b q_bk.
        g = posterior * tf.expand_dims(row * denom, 1)  # [c, K']
        values.append(g)
        return (values, *self._sparse_gradient(expo, row, g, x_chunk, w_unit, t_chunk))

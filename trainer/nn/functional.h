// The small float32 layers of training that are not convolutions or batch norm: max / average /
// global average pooling, linear, ReLU, softmax cross-entropy and the residual add, forward and
// backward. Plain single-threaded loops: these layers are a small share of a step, and a fixed
// summation order makes a run repeatable bit for bit. Activations are NCHW; every tensor must be
// contiguous. Wrong shapes, bad kernel sizes and out-of-range labels throw std::invalid_argument
// naming the offending value. Nothing is allocated beyond the tensors returned (and the argmax
// vector, which is resized).
#pragma once

#include "tensor.h"

#include <cstdint>
#include <vector>

namespace lowbit::nn {

// Pooling over kernel x kernel windows at `stride`, no padding; output extent
// floor((H - kernel) / stride) + 1 per spatial axis, so trailing rows / columns may go unused.
//
// argmax receives, per output element, the flat index into x of its window's maximum; on ties the
// first in row-major window order (as the reference does). The backward needs only these indices.
Tensor max_pool2d_forward(const Tensor &x, int kernel, int stride, std::vector<int32_t> &argmax);
// dx: each dy goes to its argmax, summed where overlapping windows share a maximum.
Tensor max_pool2d_backward(const Tensor &dy, const std::vector<int32_t> &argmax, const Shape &input_shape);
Tensor avg_pool2d_forward(const Tensor &x, int kernel, int stride);
Tensor avg_pool2d_backward(const Tensor &dy, const Shape &input_shape, int kernel, int stride);

// (N, C, H, W) -> (N, C), the mean of each plane (summed in double: planes can be large).
Tensor global_avg_pool_forward(const Tensor &x);
// (N, C) -> (N, C, H, W), dy / (H W) everywhere.
Tensor global_avg_pool_backward(const Tensor &dy, const Shape &input_shape);

// y = x W^T + b: x (N, I), or (N, C, H, W) taken as (N, C H W); weight (O, I); bias (O); y (N, O).
// Each y[n, o] is summed in float in an order that depends on I alone, so a sample's output does
// not depend on the batch it is in.
Tensor linear_forward(const Tensor &x, const Tensor &weight, const Tensor &bias);
// Overwrites dweight (O, I) = dy^T x and dbias (O) = sum_n dy, both passed in already shaped
// (typically views into the parameter store's gradient buffer); returns dx = dy W shaped like x,
// or an empty Tensor when !want_dx (the first layer needs no input gradient).
Tensor linear_backward(const Tensor &dy, const Tensor &x, const Tensor &weight, Tensor &dweight, Tensor &dbias,
                       bool want_dx);

// y = max(x, 0); NaN gives 0.
Tensor relu_forward(const Tensor &x);
// dx = dy where y > 0, else 0 (y > 0 exactly where x > 0, so the output suffices).
Tensor relu_backward(const Tensor &dy, const Tensor &y);

struct LossResult {
    double loss = 0;      // mean over the batch
    int64_t correct = 0;  // samples whose first maximal logit is the label
};
// Cross-entropy of softmax(logits) (N, classes) against integer labels, averaged over N >= 1,
// computed in double with each row's max subtracted (finite for any finite logits). When dlogits
// is non-null it receives (softmax - onehot(label)) / N: it must be shaped like logits, or be a
// default-constructed Tensor, which is then allocated. Labels are checked before anything is
// written.
LossResult softmax_cross_entropy(const Tensor &logits, const std::vector<int32_t> &labels, Tensor *dlogits);

// Element-wise a + b (the residual add; its backward is the identity to both inputs).
Tensor add(const Tensor &a, const Tensor &b);

}  // namespace lowbit::nn

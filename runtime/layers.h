// The float32 layers around the convolutions that run on ahead-of-time kernels
// (generators/batch_norm.cpp): batch normalization with its ReLU and residual add fused in.
// Tensors are NCHW (or NC, taken as H = W = 1) and contiguous; per-channel tensors have shape
// (C). Outputs are passed in, already shaped, so that a training step allocates nothing and
// gradients land straight in their slot of the parameter store.
#pragma once

#include <cstdint>
#include <vector>

#include "quantize.h"
#include "tensor.h"

namespace lowbit {

// Mean and biased variance of each channel over (N, H, W), summed in double in a fixed order.
void batch_norm_statistics(const Tensor &x, Tensor &mean, Tensor &variance);

// y = scale * x + shift per channel, then ReLU when `relu`.
void batch_norm_forward(const Tensor &x, const Tensor &scale, const Tensor &shift, bool relu, Tensor &y);
// The ReLU mask of a residual block's output, y > 0, one byte per element: all its backward
// needs of y, a quarter of y's memory.
using ReluMask = std::vector<uint8_t>;

// y = ReLU(scale * x + shift + residual): the end of a residual block. Also writes its ReLU
// mask (resized to y's size).
void batch_norm_add_relu(const Tensor &x, const Tensor &scale, const Tensor &shift, const Tensor &residual, Tensor &y,
                         ReluMask &mask);

// quantize(ReLU(scale * x + shift)) as an activation, bit for bit, without writing the float32
// ReLU output: one pass for the group maxima, one for the values. Formats grouped per sample,
// per channel or not at all (fused_quantize_supports); throws std::invalid_argument otherwise,
// and for NaN/Inf outputs, as quantize does.
bool fused_quantize_supports(const Format &format);
void batch_norm_relu_quantize_into(QuantizedTensor &q, const Tensor &x, const Tensor &scale, const Tensor &shift,
                                   const Format &format, Rounding rounding, uint64_t seed, uint64_t step,
                                   uint32_t tensor_id);

// Training-mode backward through y = [ReLU](scale * x + shift) with scale = gamma * inv_std and
// shift = beta - mean * scale from the batch statistics (mean, inv_std). The ReLU mask is
// recomputed from x, scale and shift. Writes dx, dgamma and dbeta, and dx's row maxima into
// `dx_rows` where given (the scales of dx's quantization, computed in the same pass: see
// quantize_into with RowMaxima).
void batch_norm_backward(const Tensor &dy, const Tensor &x, const Tensor &mean, const Tensor &inv_std,
                         const Tensor &scale, const Tensor &shift, bool relu, Tensor &dx, Tensor &dgamma, Tensor &dbeta,
                         RowMaxima *dx_rows = nullptr);

// Backward through y = ReLU(scale * x + shift + residual) (training mode), given the forward's
// ReLU mask; writes dx, dgamma, dbeta and d(residual), and dx's row maxima where given (as
// batch_norm_backward).
void batch_norm_add_relu_backward(const Tensor &dy, const Tensor &x, const ReluMask &mask, const Tensor &mean,
                                  const Tensor &inv_std, const Tensor &scale, Tensor &dx, Tensor &dgamma, Tensor &dbeta,
                                  Tensor &dresidual, RowMaxima *dx_rows = nullptr);

}  // namespace lowbit

// The three convolutions of training (method.md sections 1 and 4) over the ahead-of-time
// kernels, in float32 and on quantized operands. Activations and errors are NCHW, weights
// OIHW with odd square kernels; zero padding `pad`, stride 1 or 2.
#pragma once

#include "quantize.h"
#include "tensor.h"

namespace lowbit {

struct ConvGeometry {
    int stride = 1;
    int pad = 0;
};

// Output shape of a forward convolution; throws std::invalid_argument naming the bad value.
Shape conv_output_shape(const Shape &input, const Shape &weights, const ConvGeometry &g);

// float32 (the baseline mode): Y = conv(A, W), dA = conv_transpose(E, W), dW = correlate(E, A).
Tensor conv_forward(const Tensor &input, const Tensor &weights, const ConvGeometry &g);
Tensor conv_backward_data(const Tensor &errors, const Tensor &weights, const Shape &input_shape, const ConvGeometry &g);
Tensor conv_backward_weight(const Tensor &errors, const Tensor &input, int kernel, const ConvGeometry &g);
// dA added into `into` (contiguous, the input's shape): into + conv_backward_data(...) bit for
// bit, in the kernel's store instead of a pass of its own (a residual block's two paths).
void conv_backward_data_add(const Tensor &errors, const Tensor &weights, const ConvGeometry &g, Tensor &into);

// Integer: products of int8 element values summed exactly in int32, scaled back once per
// output (the weight gradient's reduction over samples is split per sample so that it cannot
// overflow; the samples' sums are shifted by their group exponents and added in int32 over
// runs of samples that cannot overflow either, each run scaled back once). Group exponents
// that vary along a pass's reduction are applied as
// left shifts before accumulating where the kernel has room (channel groups of activations in
// the forward pass, output-channel groups of weights in backward-data: shifts of the
// weights), else to partial sums: the operand is split into its exponent classes, each class
// convolved on the integer kernel with one power-of-two scale, and the partial results added.
// Roles are checked: activations and errors quantized as such, weights as weights.
Tensor conv_forward(const QuantizedTensor &input, const QuantizedTensor &weights, const ConvGeometry &g);
Tensor conv_backward_data(const QuantizedTensor &errors, const QuantizedTensor &weights, const Shape &input_shape,
                          const ConvGeometry &g);
Tensor conv_backward_weight(const QuantizedTensor &errors, const QuantizedTensor &input, int kernel,
                            const ConvGeometry &g);
void conv_backward_data_add(const QuantizedTensor &errors, const QuantizedTensor &weights, const ConvGeometry &g,
                            Tensor &into);

}  // namespace lowbit

// Quantize float32 tensors to an LB format and back (method.md sections 2 and 3), on the
// ahead-of-time Halide kernels of generators/quantize.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "format.h"
#include "memory.h"
#include "tensor.h"

namespace lowbit {

// What a tensor is to a convolution. It decides which axis `channel` groups run along:
// axis 1 for activations and errors (NCHW), axis 0 (the output channel) for weights (OIHW).
enum class TensorRole : uint8_t { activation, weight, error };

// The 3-d view (i, g, o) of a row-major tensor that the kernels work on (see
// generators/quantize.cpp): grouped formats have one group per g; block formats one group per
// (i, g / block, o).
struct GroupView {
    int64_t inner = 1, groups = 1, outer = 1;
    bool blocked = false;
    int block = 0;
    // Number of group exponents and their grid: (groups) or (inner, ceil(groups / block), outer).
    int64_t group_count() const;
    // The group of the element at flat index `index`.
    int64_t group_of(int64_t index) const;
};
// Throws std::invalid_argument when the tensor has no such axis (e.g. channel groups on a
// rank-1 activation).
GroupView group_view(const Shape &shape, const Format &format, TensorRole role);

struct QuantizedTensor {
    Format format;
    TensorRole role = TensorRole::activation;
    Shape shape;
    GroupView view;
    KernelBytes values;                    // q, row-major like the source tensor (set by the kernels)
    std::vector<uint8_t> group_exponents;  // e_g, in the order of GroupView's grid
    float scale = 0.0f;                    // S = max |x|

    int64_t numel() const { return int64_t(values.size()); }
    // S * 2^-e_g: element q of that group stands for q * group_scale / qmax.
    double group_scale(int64_t group) const;
};

// Quantizes `tensor` (any strides; copied when not contiguous) with the given rounding.
// Stochastic rounding draws from a hash of (seed, step, tensor_id, element index), so the
// result depends on nothing else. Throws std::invalid_argument for a format the int8 kernels
// cannot hold (qmax > 127), a tensor without the format's group axis, or NaN/Inf input.
QuantizedTensor quantize(const Tensor &tensor, const Format &format, Rounding rounding = Rounding::nearest,
                         uint64_t seed = 0, uint64_t step = 0, uint32_t tensor_id = 0,
                         TensorRole role = TensorRole::activation);

// The same into `out`, reusing its storage when the sizes match (no allocation in a loop).
void quantize_into(QuantizedTensor &out, const Tensor &tensor, const Format &format, Rounding rounding, uint64_t seed,
                   uint64_t step, uint32_t tensor_id, TensorRole role);

// The row maxima of an (N, C, ...) tensor as the kernel that wrote it reports them
// (batch_norm_backward): the bits of max |x| over each (c, n) row in kRowMaxLanes lanes,
// lane_bits[(n * channels + c) * kRowMaxLanes + lane]; >= 0x7f800000 where a row holds Inf or
// NaN. Max-abs bits order like the magnitudes.
struct RowMaxima {
    std::vector<uint32_t> lane_bits;
    int channels = 0, samples = 0;
};

// Whether quantize_into can take a format's scales from row maxima: every group but block
// groups (which cut rows) is a union of (c, n) rows.
bool row_maxima_serve(const Format &format);

// quantize_into, with the tensor scale and the group exponents taken from the tensor's row
// maxima (a kernel wrote them with the tensor) instead of quantize_scales' pass over it: the
// same result, bit for bit. For activations and errors in a format row_maxima_serve; throws
// std::invalid_argument otherwise, or where the maxima are not the tensor's (N, C).
void quantize_into(QuantizedTensor &out, const Tensor &tensor, const RowMaxima &rows, const Format &format,
                   Rounding rounding, uint64_t seed, uint64_t step, uint32_t tensor_id, TensorRole role);

// q's format, role, shape, group view and storage for `tensor` (values unset, group exponents
// at the format's maximum, scale 0), for a kernel to fill. Validates the format (int8 only).
void prepare_quantized(QuantizedTensor &q, const Tensor &tensor, const Format &format, TensorRole role);

// The group of row (c, n) of an activation or error in a format row_maxima_serve: the sample,
// the channel or the one group.
inline size_t row_group(const Format &format, int n, int c) {
    return format.axis == GroupAxis::sample ? size_t(n) : format.axis == GroupAxis::channel ? size_t(c) : 0;
}

// Sets q.scale and q.group_exponents (q.format, q.view and their sizes already set, for an
// activation or error) from the max-abs bits of each (c, n) row, rows[n * channels + c], as
// quantize_scales computes them. Returns false, leaving the scales unset, where a row holds
// Inf or NaN.
bool scales_from_row_maxima(QuantizedTensor &q, const uint32_t *rows, int channels, int samples);

// x = q * S * 2^-e_g / qmax, rounded once to float32.
Tensor dequantize(const QuantizedTensor &quantized);
// The same into `out`, a contiguous tensor of the quantized tensor's shape (checked).
void dequantize_into(Tensor &out, const QuantizedTensor &quantized);

// Error statistics of a quantization against its source, for `lowbit formats` and sweeps.
struct QuantizationError {
    double relative_l2 = 0;       // ||x - x̂|| / ||x||  (0 for an all-zero x)
    double max_abs = 0;           // max |x - x̂|
    double fraction_zero = 0;     // fraction of nonzero x that became 0
    double fraction_at_qmax = 0;  // fraction with |q| = qmax
};
QuantizationError quantization_error(const Tensor &source, const QuantizedTensor &quantized);

}  // namespace lowbit

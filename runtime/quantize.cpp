#include "quantize.h"

#include <HalideBuffer.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "dequantize_block_variants.h"
#include "dequantize_variants.h"
#include "quantize_scales_block_variants.h"
#include "quantize_scales_variants.h"
#include "quantize_values_block_variants.h"
#include "quantize_values_variants.h"

namespace lowbit {

namespace {

using Halide::Runtime::Buffer;

int halide_extent(int64_t extent, const char *what) {
    if (extent > std::numeric_limits<int32_t>::max())
        throw std::invalid_argument(fmt::format("quantize: {} extent {} exceeds 2^31 - 1", what, extent));
    return int(extent);
}

// The (i, g, o) view of a contiguous buffer, as Halide sees it (innermost first).
template <class T>
Buffer<T> view_3d(T *data, const GroupView &v) {
    return Buffer<T>(data, {halide_extent(v.inner, "inner"), halide_extent(v.groups, "group axis"),
                            halide_extent(v.outer, "outer")});
}

template <class T>
Buffer<T> exponent_buffer(T *e, const GroupView &v) {
    if (!v.blocked) return Buffer<T>(e, {halide_extent(v.groups, "group axis")});
    const int blocks = int((v.groups + v.block - 1) / v.block);
    return Buffer<T>(e, {int(v.inner), blocks, int(v.outer)});
}

void require_int8(const Format &f) {
    if (!f.fits_int8()) {
        throw std::invalid_argument(
            fmt::format("format {} has qmax {} > 127: the int8 kernels cannot hold it, and there is no 16-bit path yet",
                        to_string(f), f.qmax()));
    }
}

[[noreturn]] void report_non_finite(const Tensor &t) {
    for (int64_t k = 0; k < t.numel(); k++) {
        if (!std::isfinite(t[k])) {
            throw std::invalid_argument(
                fmt::format("quantize: input of shape {} holds {} at flat index {}", shape_string(t.shape()), t[k], k));
        }
    }
    throw std::invalid_argument("quantize: input holds NaN or Inf");
}

}  // namespace

int64_t GroupView::group_count() const { return blocked ? inner * ((groups + block - 1) / block) * outer : groups; }

int64_t GroupView::group_of(int64_t index) const {
    const int64_t i = index % inner, g = (index / inner) % groups, o = index / (inner * groups);
    if (!blocked) return g;
    const int64_t blocks = (groups + block - 1) / block;
    return i + inner * (g / block + blocks * o);
}

GroupView group_view(const Shape &shape, const Format &format, TensorRole role) {
    const int64_t n = shape_numel(shape);
    const int rank = int(shape.size());
    auto need_axis = [&](int axis) {
        if (rank <= axis) {
            throw std::invalid_argument(fmt::format("format {}: a tensor of shape {} has no axis {} to group along",
                                                    to_string(format), shape_string(shape), axis));
        }
    };
    GroupView v;
    // Axis 0 as the group axis: (rest, d0, 1). Axis 1: (rest after axis 1, d1, d0).
    auto along_axis0 = [&] {
        need_axis(0);
        v.groups = shape[0];
        v.inner = shape[0] == 0 ? 0 : n / shape[0];
    };
    auto along_axis1 = [&] {
        need_axis(1);
        v.outer = shape[0];
        v.groups = shape[1];
        v.inner = shape_numel(Shape(shape.begin() + 2, shape.end()));
    };
    switch (format.axis) {
        case GroupAxis::none:
            // One group; rows along axis 0 still give the threads independent work.
            if (rank >= 2) {
                v.outer = shape[0];
                v.inner = shape[0] == 0 ? 0 : n / shape[0];
            } else {
                v.inner = n;
            }
            break;
        case GroupAxis::sample:
            along_axis0();
            break;
        case GroupAxis::channel:
            if (role == TensorRole::weight) {
                along_axis0();
            } else {
                along_axis1();
            }
            break;
        case GroupAxis::block:
            along_axis1();
            v.blocked = true;
            v.block = format.block;
            break;
    }
    return v;
}

double QuantizedTensor::group_scale(int64_t group) const {
    return lowbit::group_scale(scale, group_exponents.at(size_t(group)));
}

QuantizedTensor quantize(const Tensor &tensor, const Format &format, Rounding rounding, uint64_t seed, uint64_t step,
                         uint32_t tensor_id, TensorRole role) {
    QuantizedTensor q;
    quantize_into(q, tensor, format, rounding, seed, step, tensor_id, role);
    return q;
}

void prepare_quantized(QuantizedTensor &q, const Tensor &tensor, const Format &format, TensorRole role) {
    validate(format);
    require_int8(format);
    q.format = format;
    q.role = role;
    q.shape = tensor.shape();
    q.view = group_view(tensor.shape(), format, role);
    q.values.resize(size_t(tensor.numel()));
    q.group_exponents.assign(size_t(q.view.group_count()), uint8_t(format.max_group_exponent()));
    q.scale = 0.0f;
}

namespace {

// The values of q (its scales set) from `source`, contiguous.
void quantize_values_into(QuantizedTensor &q, const Tensor &source, Rounding rounding, uint64_t seed, uint64_t step,
                          uint32_t tensor_id) {
    const Format &format = q.format;
    Buffer<const float> input = view_3d(source.data(), q.view);
    Buffer<const uint8_t> exponents = exponent_buffer(q.group_exponents.data(), q.view);
    const RandomKey key = random_key(seed, step, tensor_id);
    const bool stochastic = rounding == Rounding::stochastic;
    const int mantissa_max = int(format.mantissa_max()), qmax = int(format.qmax());
    Buffer<int8_t> values = view_3d(q.values.data(), q.view);
    if (q.view.blocked) {
        kernels::quantize_values_block(input.raw_buffer(), exponents.raw_buffer(), q.view.block, q.scale, mantissa_max,
                                       format.exponent_steps(), format.shift, qmax, format.has_sign, stochastic, key.k0,
                                       key.k1, values.raw_buffer());
    } else {
        kernels::quantize_values(input.raw_buffer(), exponents.raw_buffer(), q.scale, mantissa_max,
                                 format.exponent_steps(), format.shift, qmax, format.has_sign, stochastic, key.k0,
                                 key.k1, values.raw_buffer());
    }
}

float float_of_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace

void quantize_into(QuantizedTensor &q, const Tensor &tensor, const Format &format, Rounding rounding, uint64_t seed,
                   uint64_t step, uint32_t tensor_id, TensorRole role) {
    prepare_quantized(q, tensor, format, role);
    if (tensor.numel() == 0) return;

    const Tensor source = tensor.contiguous();
    Buffer<const float> input = view_3d(source.data(), q.view);
    Buffer<uint8_t> exponents = exponent_buffer(q.group_exponents.data(), q.view);
    Buffer<float> scale = Buffer<float>::make_scalar();
    const int max_e = format.max_group_exponent();
    if (q.view.blocked) {
        kernels::quantize_scales_block(input.raw_buffer(), max_e, q.view.block, exponents.raw_buffer(),
                                       scale.raw_buffer());
    } else {
        kernels::quantize_scales(input.raw_buffer(), max_e, exponents.raw_buffer(), scale.raw_buffer());
    }
    q.scale = scale();
    if (!std::isfinite(q.scale)) report_non_finite(source);
    quantize_values_into(q, source, rounding, seed, step, tensor_id);
}

bool row_maxima_serve(const Format &format) { return format.axis != GroupAxis::block; }

bool scales_from_row_maxima(QuantizedTensor &q, const uint32_t *rows, int channels, int samples) {
    std::vector<uint32_t> group_bits(q.group_exponents.size(), 0);
    uint32_t tensor_bits = 0;
    for (int n = 0; n < samples; n++) {
        for (int c = 0; c < channels; c++) {
            const uint32_t r = rows[size_t(n) * size_t(channels) + size_t(c)];
            uint32_t &group = group_bits[row_group(q.format, n, c)];
            group = std::max(group, r);
            tensor_bits = std::max(tensor_bits, r);
        }
    }
    if (tensor_bits >= 0x7f800000u) return false;
    q.scale = float_of_bits(tensor_bits);
    const int max_e = q.format.max_group_exponent();
    for (size_t g = 0; g < group_bits.size(); g++) {
        q.group_exponents[g] = uint8_t(group_exponent(q.scale, float_of_bits(group_bits[g]), max_e));
    }
    return true;
}

void quantize_into(QuantizedTensor &q, const Tensor &tensor, const RowMaxima &rows, const Format &format,
                   Rounding rounding, uint64_t seed, uint64_t step, uint32_t tensor_id, TensorRole role) {
    if (!row_maxima_serve(format) || role == TensorRole::weight) {
        throw std::invalid_argument(fmt::format("quantize: format {} of a {} cannot take its scales from row maxima",
                                                to_string(format), role == TensorRole::weight ? "weight" : "tensor"));
    }
    const Shape &shape = tensor.shape();
    const int64_t samples = shape.empty() ? 0 : shape[0], channels = shape.size() < 2 ? 0 : shape[1];
    if (shape.size() < 2 || rows.samples != samples || rows.channels != channels ||
        rows.lane_bits.size() != size_t(samples) * size_t(channels) * kRowMaxLanes) {
        throw std::invalid_argument(
            fmt::format("quantize: row maxima of {} samples x {} channels ({} lane values) for a tensor of shape {}",
                        rows.samples, rows.channels, rows.lane_bits.size(), shape_string(shape)));
    }
    prepare_quantized(q, tensor, format, role);
    if (tensor.numel() == 0) return;
    std::vector<uint32_t> row_bits(size_t(samples) * size_t(channels));
    for (size_t r = 0; r < row_bits.size(); r++) {
        const uint32_t *lanes = rows.lane_bits.data() + r * kRowMaxLanes;
        row_bits[r] = *std::max_element(lanes, lanes + kRowMaxLanes);
    }
    const Tensor source = tensor.contiguous();
    if (!scales_from_row_maxima(q, row_bits.data(), int(channels), int(samples))) report_non_finite(source);
    quantize_values_into(q, source, rounding, seed, step, tensor_id);
}

Tensor dequantize(const QuantizedTensor &q) {
    Tensor out = Tensor::uninitialized(q.shape);
    dequantize_into(out, q);
    return out;
}

void dequantize_into(Tensor &out, const QuantizedTensor &q) {
    if (out.shape() != q.shape || !out.is_contiguous())
        throw std::invalid_argument(fmt::format("dequantize: output of shape {} for a quantized tensor of shape {}",
                                                shape_string(out.shape()), shape_string(q.shape)));
    if (out.numel() == 0) return;
    if (int64_t(q.values.size()) != out.numel() || int64_t(q.group_exponents.size()) != q.view.group_count())
        throw std::invalid_argument("dequantize: inconsistent QuantizedTensor");
    Buffer<const int8_t> values = view_3d(q.values.data(), q.view);
    Buffer<const uint8_t> exponents = exponent_buffer(q.group_exponents.data(), q.view);
    Buffer<float> output = view_3d(out.data(), q.view);
    const int qmax = int(q.format.qmax());
    if (q.view.blocked) {
        kernels::dequantize_block(values.raw_buffer(), exponents.raw_buffer(), q.view.block, q.scale, qmax,
                                  output.raw_buffer());
    } else {
        kernels::dequantize(values.raw_buffer(), exponents.raw_buffer(), q.scale, qmax, output.raw_buffer());
    }
}

QuantizationError quantization_error(const Tensor &source, const QuantizedTensor &quantized) {
    const Tensor x = source.contiguous();
    const Tensor y = dequantize(quantized);
    QuantizationError err;
    double diff2 = 0, norm2 = 0;
    int64_t nonzero = 0, zeroed = 0, at_qmax = 0;
    const int qmax = int(quantized.format.qmax());
    for (int64_t k = 0; k < x.numel(); k++) {
        const double d = double(x[k]) - double(y[k]);
        diff2 += d * d;
        norm2 += double(x[k]) * double(x[k]);
        err.max_abs = std::max(err.max_abs, std::fabs(d));
        if (x[k] != 0.0f) {
            nonzero++;
            if (quantized.values[size_t(k)] == 0) zeroed++;
        }
        if (std::abs(int(quantized.values[size_t(k)])) == qmax) at_qmax++;
    }
    err.relative_l2 = norm2 > 0 ? std::sqrt(diff2 / norm2) : 0.0;
    err.fraction_zero = nonzero > 0 ? double(zeroed) / double(nonzero) : 0.0;
    err.fraction_at_qmax = x.numel() > 0 ? double(at_qmax) / double(x.numel()) : 0.0;
    return err;
}

}  // namespace lowbit

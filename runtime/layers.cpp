#include "layers.h"

#include <HalideBuffer.h>
#include <fmt/format.h>

#include <cstring>
#include <limits>
#include <stdexcept>

#include "batch_norm_add_relu_backward_variants.h"
#include "batch_norm_add_relu_variants.h"
#include "batch_norm_backward_variants.h"
#include "batch_norm_forward_variants.h"
#include "batch_norm_relu_backward_variants.h"
#include "batch_norm_relu_forward_variants.h"
#include "batch_norm_relu_quantize_variants.h"
#include "batch_norm_relu_row_max_variants.h"
#include "batch_norm_statistics_variants.h"

namespace lowbit {

namespace {

using Halide::Runtime::Buffer;

struct View {
    int plane = 1, channels = 1, samples = 1;
};

// The (i, c, n) view of an NCHW or NC activation.
View activation_view(const char *what, const Tensor &t) {
    if ((t.rank() != 4 && t.rank() != 2) || !t.is_contiguous()) {
        throw std::invalid_argument(
            fmt::format("{}: expected a contiguous NCHW or NC tensor, got shape {}", what, shape_string(t.shape())));
    }
    const int64_t plane = t.rank() == 4 ? t.size(2) * t.size(3) : 1;
    if (plane > std::numeric_limits<int32_t>::max() || t.size(0) > std::numeric_limits<int32_t>::max()) {
        throw std::invalid_argument(fmt::format("{}: shape {} too large", what, shape_string(t.shape())));
    }
    return View{int(plane), int(t.size(1)), int(t.size(0))};
}

void require_same_shape(const char *what, const char *name, const Tensor &t, const Tensor &like) {
    if (t.shape() != like.shape() || !t.is_contiguous()) {
        throw std::invalid_argument(fmt::format("{}: {} has shape {}, expected contiguous {}", what, name,
                                                shape_string(t.shape()), shape_string(like.shape())));
    }
}

void require_channels(const char *what, const char *name, const Tensor &t, int channels) {
    if (t.rank() != 1 || t.size(0) != channels || !t.is_contiguous()) {
        throw std::invalid_argument(
            fmt::format("{}: {} has shape {}, expected [{}]", what, name, shape_string(t.shape()), channels));
    }
}

Buffer<float> view_buffer(const Tensor &t, const View &v) {
    return Buffer<float>(const_cast<float *>(t.data()), {v.plane, v.channels, v.samples});
}

Buffer<uint8_t> mask_buffer(ReluMask &mask, const View &v) {
    return Buffer<uint8_t>(mask.data(), {v.plane, v.channels, v.samples});
}
Buffer<const uint8_t> mask_buffer(const ReluMask &mask, const View &v) {
    return Buffer<const uint8_t>(mask.data(), {v.plane, v.channels, v.samples});
}

// The kernels' (lane, c, n) row maxima of their grad_input: into `rows` (sized here), or into
// scratch where the caller does not want them.
Buffer<uint32_t> row_maxima_buffer(RowMaxima *rows, const View &v) {
    thread_local RowMaxima scratch;
    RowMaxima &r = rows != nullptr ? *rows : scratch;
    r.channels = v.channels;
    r.samples = v.samples;
    r.lane_bits.resize(size_t(kRowMaxLanes) * size_t(v.channels) * size_t(v.samples));
    return Buffer<uint32_t>(r.lane_bits.data(), {kRowMaxLanes, v.channels, v.samples});
}

Buffer<float> channel_buffer(const Tensor &t) { return Buffer<float>(const_cast<float *>(t.data()), {int(t.size(0))}); }

}  // namespace

void batch_norm_statistics(const Tensor &x, Tensor &mean, Tensor &variance) {
    const char *what = "batch_norm_statistics";
    const View v = activation_view(what, x);
    require_channels(what, "mean", mean, v.channels);
    require_channels(what, "variance", variance, v.channels);
    auto in = view_buffer(x, v);
    auto m = channel_buffer(mean), var = channel_buffer(variance);
    kernels::batch_norm_statistics(in, m, var);
}

void batch_norm_forward(const Tensor &x, const Tensor &scale, const Tensor &shift, bool relu, Tensor &y) {
    const char *what = "batch_norm_forward";
    const View v = activation_view(what, x);
    require_channels(what, "scale", scale, v.channels);
    require_channels(what, "shift", shift, v.channels);
    require_same_shape(what, "output", y, x);
    auto in = view_buffer(x, v), out = view_buffer(y, v);
    auto a = channel_buffer(scale), b = channel_buffer(shift);
    if (relu) {
        kernels::batch_norm_relu_forward(in, a, b, out);
    } else {
        kernels::batch_norm_forward(in, a, b, out);
    }
}

void batch_norm_add_relu(const Tensor &x, const Tensor &scale, const Tensor &shift, const Tensor &residual, Tensor &y,
                         ReluMask &mask) {
    const char *what = "batch_norm_add_relu";
    const View v = activation_view(what, x);
    require_channels(what, "scale", scale, v.channels);
    require_channels(what, "shift", shift, v.channels);
    require_same_shape(what, "residual", residual, x);
    require_same_shape(what, "output", y, x);
    mask.resize(size_t(x.numel()));
    auto in = view_buffer(x, v), res = view_buffer(residual, v), out = view_buffer(y, v);
    auto out_mask = mask_buffer(mask, v);
    auto a = channel_buffer(scale), b = channel_buffer(shift);
    kernels::batch_norm_add_relu(in, a, b, res, out, out_mask);
}

bool fused_quantize_supports(const Format &format) { return row_maxima_serve(format); }

void batch_norm_relu_quantize_into(QuantizedTensor &q, const Tensor &x, const Tensor &scale, const Tensor &shift,
                                   const Format &format, Rounding rounding, uint64_t seed, uint64_t step,
                                   uint32_t tensor_id) {
    const char *what = "batch_norm_relu_quantize";
    validate(format);
    if (!format.fits_int8() || !fused_quantize_supports(format)) {
        throw std::invalid_argument(
            fmt::format("{}: format {} not supported (int8, no block groups)", what, to_string(format)));
    }
    const View v = activation_view(what, x);
    require_channels(what, "scale", scale, v.channels);
    require_channels(what, "shift", shift, v.channels);
    prepare_quantized(q, x, format, TensorRole::activation);
    if (x.numel() == 0) return;

    auto in = view_buffer(x, v);
    auto a = channel_buffer(scale), b = channel_buffer(shift);
    std::vector<uint32_t> rows(size_t(v.channels) * size_t(v.samples));
    Buffer<uint32_t> row_max(rows.data(), {v.channels, v.samples});
    kernels::batch_norm_relu_row_max(in, a, b, row_max);

    if (!scales_from_row_maxima(q, rows.data(), v.channels, v.samples))
        throw std::invalid_argument(
            fmt::format("{}: the batch-norm output of shape {} holds NaN or Inf", what, shape_string(x.shape())));
    // The exponent of each (c, n) row, from its group's.
    std::vector<uint8_t> exponents(rows.size());
    for (int n = 0; n < v.samples; n++) {
        for (int c = 0; c < v.channels; c++) {
            exponents[size_t(n) * size_t(v.channels) + size_t(c)] = q.group_exponents[row_group(format, n, c)];
        }
    }
    Buffer<uint8_t> exponent_grid(exponents.data(), {v.channels, v.samples});
    Buffer<int8_t> values(q.values.data(), {v.plane, v.channels, v.samples});
    const RandomKey key = random_key(seed, step, tensor_id);
    kernels::batch_norm_relu_quantize(in, a, b, exponent_grid, q.scale, int(format.mantissa_max()),
                                      format.exponent_steps(), format.shift, int(format.qmax()), format.has_sign,
                                      rounding == Rounding::stochastic, key.k0, key.k1, values);
}

void batch_norm_backward(const Tensor &dy, const Tensor &x, const Tensor &mean, const Tensor &inv_std,
                         const Tensor &scale, const Tensor &shift, bool relu, Tensor &dx, Tensor &dgamma, Tensor &dbeta,
                         RowMaxima *dx_rows) {
    const char *what = "batch_norm_backward";
    const View v = activation_view(what, x);
    require_same_shape(what, "grad_output", dy, x);
    require_same_shape(what, "grad_input", dx, x);
    for (auto [name, t] : {std::pair<const char *, const Tensor *>{"mean", &mean},
                           {"inv_std", &inv_std},
                           {"scale", &scale},
                           {"shift", &shift},
                           {"grad_gamma", &dgamma},
                           {"grad_beta", &dbeta}}) {
        require_channels(what, name, *t, v.channels);
    }
    auto g = view_buffer(dy, v), in = view_buffer(x, v), out = view_buffer(dx, v);
    auto m = channel_buffer(mean), s = channel_buffer(inv_std), a = channel_buffer(scale), b = channel_buffer(shift);
    auto dg = channel_buffer(dgamma), db = channel_buffer(dbeta);
    auto rows = row_maxima_buffer(dx_rows, v);
    if (relu) {
        kernels::batch_norm_relu_backward(g, in, m, s, a, b, out, dg, db, rows);
    } else {
        kernels::batch_norm_backward(g, in, m, s, a, b, out, dg, db, rows);
    }
}

void batch_norm_add_relu_backward(const Tensor &dy, const Tensor &x, const ReluMask &mask, const Tensor &mean,
                                  const Tensor &inv_std, const Tensor &scale, Tensor &dx, Tensor &dgamma, Tensor &dbeta,
                                  Tensor &dresidual, RowMaxima *dx_rows) {
    const char *what = "batch_norm_add_relu_backward";
    const View v = activation_view(what, x);
    require_same_shape(what, "grad_output", dy, x);
    if (int64_t(mask.size()) != x.numel())
        throw std::invalid_argument(
            fmt::format("{}: the ReLU mask has {} elements, x {}", what, mask.size(), x.numel()));
    require_same_shape(what, "grad_input", dx, x);
    require_same_shape(what, "grad_residual", dresidual, x);
    for (auto [name, t] : {std::pair<const char *, const Tensor *>{"mean", &mean},
                           {"inv_std", &inv_std},
                           {"scale", &scale},
                           {"grad_gamma", &dgamma},
                           {"grad_beta", &dbeta}}) {
        require_channels(what, name, *t, v.channels);
    }
    auto g = view_buffer(dy, v), in = view_buffer(x, v);
    auto out = mask_buffer(mask, v);
    auto m = channel_buffer(mean), s = channel_buffer(inv_std), a = channel_buffer(scale);
    auto di = view_buffer(dx, v), dr = view_buffer(dresidual, v);
    auto dg = channel_buffer(dgamma), db = channel_buffer(dbeta);
    auto rows = row_maxima_buffer(dx_rows, v);
    kernels::batch_norm_add_relu_backward(g, in, out, m, s, a, di, dg, db, dr, rows);
}

}  // namespace lowbit

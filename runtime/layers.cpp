#include "layers.h"

#include <HalideBuffer.h>
#include <fmt/format.h>

#include <limits>
#include <stdexcept>

#include "batch_norm_add_relu_backward_variants.h"
#include "batch_norm_add_relu_variants.h"
#include "batch_norm_backward_variants.h"
#include "batch_norm_forward_variants.h"
#include "batch_norm_relu_backward_variants.h"
#include "batch_norm_relu_forward_variants.h"
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

void batch_norm_add_relu(const Tensor &x, const Tensor &scale, const Tensor &shift, const Tensor &residual, Tensor &y) {
    const char *what = "batch_norm_add_relu";
    const View v = activation_view(what, x);
    require_channels(what, "scale", scale, v.channels);
    require_channels(what, "shift", shift, v.channels);
    require_same_shape(what, "residual", residual, x);
    require_same_shape(what, "output", y, x);
    auto in = view_buffer(x, v), res = view_buffer(residual, v), out = view_buffer(y, v);
    auto a = channel_buffer(scale), b = channel_buffer(shift);
    kernels::batch_norm_add_relu(in, a, b, res, out);
}

void batch_norm_backward(const Tensor &dy, const Tensor &x, const Tensor &mean, const Tensor &inv_std,
                         const Tensor &scale, const Tensor &shift, bool relu, Tensor &dx, Tensor &dgamma,
                         Tensor &dbeta) {
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
    if (relu) {
        kernels::batch_norm_relu_backward(g, in, m, s, a, b, out, dg, db);
    } else {
        kernels::batch_norm_backward(g, in, m, s, a, b, out, dg, db);
    }
}

void batch_norm_add_relu_backward(const Tensor &dy, const Tensor &x, const Tensor &y, const Tensor &mean,
                                  const Tensor &inv_std, const Tensor &scale, Tensor &dx, Tensor &dgamma, Tensor &dbeta,
                                  Tensor &dresidual) {
    const char *what = "batch_norm_add_relu_backward";
    const View v = activation_view(what, x);
    require_same_shape(what, "grad_output", dy, x);
    require_same_shape(what, "output", y, x);
    require_same_shape(what, "grad_input", dx, x);
    require_same_shape(what, "grad_residual", dresidual, x);
    for (auto [name, t] : {std::pair<const char *, const Tensor *>{"mean", &mean},
                           {"inv_std", &inv_std},
                           {"scale", &scale},
                           {"grad_gamma", &dgamma},
                           {"grad_beta", &dbeta}}) {
        require_channels(what, name, *t, v.channels);
    }
    auto g = view_buffer(dy, v), in = view_buffer(x, v), out = view_buffer(y, v);
    auto m = channel_buffer(mean), s = channel_buffer(inv_std), a = channel_buffer(scale);
    auto di = view_buffer(dx, v), dr = view_buffer(dresidual, v);
    auto dg = channel_buffer(dgamma), db = channel_buffer(dbeta);
    kernels::batch_norm_add_relu_backward(g, in, out, m, s, a, di, dg, db, dr);
}

}  // namespace lowbit

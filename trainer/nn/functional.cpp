#include "nn/functional.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace lowbit::nn {

namespace {

void require_contiguous(const Tensor &t, const char *what, const char *name) {
    if (!t.is_contiguous())
        throw std::invalid_argument(fmt::format("{}: {} {} is not contiguous", what, name, shape_string(t.shape())));
}

void require_shape(const Tensor &t, const Shape &shape, const char *what, const char *name) {
    if (t.shape() != shape)
        throw std::invalid_argument(
            fmt::format("{}: {} has shape {}, expected {}", what, name, shape_string(t.shape()), shape_string(shape)));
    require_contiguous(t, what, name);
}

void require_rank4(const Shape &shape, const char *what, const char *name) {
    if (shape.size() != 4)
        throw std::invalid_argument(fmt::format("{}: {} must be NCHW, got shape {}", what, name, shape_string(shape)));
}

// Input (N, C, H, W) and output extents of a pooling, validated.
struct Pool {
    int64_t N, C, H, W, OH, OW, K, S;
};

Pool pool_geometry(const Shape &input, int kernel, int stride, const char *what) {
    require_rank4(input, what, "input");
    if (kernel < 1) throw std::invalid_argument(fmt::format("{}: kernel {} must be >= 1", what, kernel));
    if (stride < 1) throw std::invalid_argument(fmt::format("{}: stride {} must be >= 1", what, stride));
    Pool p{input[0], input[1], input[2], input[3], 0, 0, kernel, stride};
    if (p.H < p.K || p.W < p.K)
        throw std::invalid_argument(
            fmt::format("{}: kernel {} larger than the input {}", what, kernel, shape_string(input)));
    p.OH = (p.H - p.K) / p.S + 1;
    p.OW = (p.W - p.K) / p.S + 1;
    return p;
}

// Dot products of R rows of x with one row w, each summed in kLanes independent partial sums
// (so the compiler can keep them in vector registers without reassociating anything) and then
// reduced pairwise. Every row goes through the same code with the same order, whatever its
// position in the tile, which is what makes a sample's output independent of its batch.
constexpr int kLanes = 16;

template <int R>
void dot_rows(const float *const (&rows)[R], const float *w, int64_t I, float (&sums)[R]) {
    float acc[R][kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= I; i += kLanes)
        for (int r = 0; r < R; r++)
            for (int j = 0; j < kLanes; j++) acc[r][j] += rows[r][i + j] * w[i + j];
    for (int j = 0; i + j < I; j++)
        for (int r = 0; r < R; r++) acc[r][j] += rows[r][i + j] * w[i + j];
    for (int r = 0; r < R; r++) {
        for (int width = kLanes / 2; width >= 1; width /= 2)
            for (int j = 0; j < width; j++) acc[r][j] += acc[r][j + width];
        sums[r] = acc[r][0];
    }
}

// y[0, len) += g x[0, len), in fixed chunks of kLanes so that even -O2 (whose cost model will not
// vectorize a loop of unknown count) turns each chunk into vector instructions.
void axpy(float *__restrict y, const float *__restrict x, float g, int64_t len) {
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
        for (int j = 0; j < kLanes; j++) y[i + j] += g * x[i + j];
    for (; i < len; i++) y[i] += g * x[i];
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Pooling

Tensor max_pool2d_forward(const Tensor &x, int kernel, int stride, std::vector<int32_t> &argmax) {
    const char *what = "max_pool2d_forward";
    const Pool p = pool_geometry(x.shape(), kernel, stride, what);
    require_contiguous(x, what, "x");
    if (x.numel() > std::numeric_limits<int32_t>::max())
        throw std::invalid_argument(
            fmt::format("{}: input {} too large for int32 argmax", what, shape_string(x.shape())));
    Tensor y = Tensor::uninitialized({p.N, p.C, p.OH, p.OW});
    argmax.resize(size_t(y.numel()));
    const float *xd = x.data();
    float *yd = y.data();
    int64_t o = 0;
    for (int64_t plane = 0; plane < p.N * p.C; plane++) {
        const int64_t base = plane * p.H * p.W;
        for (int64_t oy = 0; oy < p.OH; oy++)
            for (int64_t ox = 0; ox < p.OW; ox++, o++) {
                const int64_t first = base + oy * p.S * p.W + ox * p.S;
                int64_t best = first;
                float best_value = xd[first];
                for (int64_t ky = 0; ky < p.K; ky++)
                    for (int64_t kx = 0; kx < p.K; kx++) {
                        const int64_t a = first + ky * p.W + kx;
                        if (xd[a] > best_value) {  // strict: ties keep the first, as the reference
                            best = a;
                            best_value = xd[a];
                        }
                    }
                yd[o] = best_value;
                argmax[size_t(o)] = int32_t(best);
            }
    }
    return y;
}

Tensor max_pool2d_backward(const Tensor &dy, const std::vector<int32_t> &argmax, const Shape &input_shape) {
    const char *what = "max_pool2d_backward";
    require_rank4(input_shape, what, "input_shape");
    require_rank4(dy.shape(), what, "dy");
    require_contiguous(dy, what, "dy");
    if (dy.size(0) != input_shape[0] || dy.size(1) != input_shape[1])
        throw std::invalid_argument(fmt::format("{}: dy {} does not match input {}", what, shape_string(dy.shape()),
                                                shape_string(input_shape)));
    if (int64_t(argmax.size()) != dy.numel())
        throw std::invalid_argument(
            fmt::format("{}: {} argmax indices for dy {}", what, argmax.size(), shape_string(dy.shape())));
    Tensor dx(input_shape);
    const int64_t in_plane = input_shape[2] * input_shape[3], out_plane = dy.size(2) * dy.size(3);
    const float *dyd = dy.data();
    float *dxd = dx.data();
    int64_t o = 0;
    for (int64_t plane = 0; plane < dy.size(0) * dy.size(1); plane++) {
        const int64_t lo = plane * in_plane, hi = lo + in_plane;
        for (int64_t k = 0; k < out_plane; k++, o++) {
            const int64_t a = argmax[size_t(o)];
            // Also catches an argmax vector from a different input shape before it writes out of bounds.
            if (a < lo || a >= hi)
                throw std::invalid_argument(
                    fmt::format("{}: argmax[{}] = {} outside its plane [{}, {})", what, o, a, lo, hi));
            dxd[a] += dyd[o];
        }
    }
    return dx;
}

Tensor avg_pool2d_forward(const Tensor &x, int kernel, int stride) {
    const char *what = "avg_pool2d_forward";
    const Pool p = pool_geometry(x.shape(), kernel, stride, what);
    require_contiguous(x, what, "x");
    Tensor y = Tensor::uninitialized({p.N, p.C, p.OH, p.OW});
    const float area = float(p.K * p.K);
    const float *xd = x.data();
    float *yd = y.data();
    int64_t o = 0;
    for (int64_t plane = 0; plane < p.N * p.C; plane++) {
        const float *xp = xd + plane * p.H * p.W;
        for (int64_t oy = 0; oy < p.OH; oy++)
            for (int64_t ox = 0; ox < p.OW; ox++, o++) {
                const float *window = xp + oy * p.S * p.W + ox * p.S;
                float sum = 0.0f;
                for (int64_t ky = 0; ky < p.K; ky++)
                    for (int64_t kx = 0; kx < p.K; kx++) sum += window[ky * p.W + kx];
                yd[o] = sum / area;
            }
    }
    return y;
}

Tensor avg_pool2d_backward(const Tensor &dy, const Shape &input_shape, int kernel, int stride) {
    const char *what = "avg_pool2d_backward";
    const Pool p = pool_geometry(input_shape, kernel, stride, what);
    require_shape(dy, {p.N, p.C, p.OH, p.OW}, what, "dy");
    Tensor dx(input_shape);
    const float area = float(p.K * p.K);
    const float *dyd = dy.data();
    float *dxd = dx.data();
    int64_t o = 0;
    for (int64_t plane = 0; plane < p.N * p.C; plane++) {
        float *dxp = dxd + plane * p.H * p.W;
        for (int64_t oy = 0; oy < p.OH; oy++)
            for (int64_t ox = 0; ox < p.OW; ox++, o++) {
                const float g = dyd[o] / area;
                float *window = dxp + oy * p.S * p.W + ox * p.S;
                for (int64_t ky = 0; ky < p.K; ky++)
                    for (int64_t kx = 0; kx < p.K; kx++) window[ky * p.W + kx] += g;
            }
    }
    return dx;
}

Tensor global_avg_pool_forward(const Tensor &x) {
    const char *what = "global_avg_pool_forward";
    require_rank4(x.shape(), what, "x");
    require_contiguous(x, what, "x");
    const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
    if (HW == 0) throw std::invalid_argument(fmt::format("{}: empty planes in {}", what, shape_string(x.shape())));
    Tensor y = Tensor::uninitialized({N, C});
    const float *xd = x.data();
    float *yd = y.data();
    for (int64_t plane = 0; plane < N * C; plane++) {
        const float *xp = xd + plane * HW;
        double sum = 0.0;
        for (int64_t i = 0; i < HW; i++) sum += xp[i];
        yd[plane] = float(sum / double(HW));
    }
    return y;
}

Tensor global_avg_pool_backward(const Tensor &dy, const Shape &input_shape) {
    const char *what = "global_avg_pool_backward";
    require_rank4(input_shape, what, "input_shape");
    require_shape(dy, {input_shape[0], input_shape[1]}, what, "dy");
    const int64_t HW = input_shape[2] * input_shape[3];
    Tensor dx = Tensor::uninitialized(input_shape);
    const float *dyd = dy.data();
    float *dxd = dx.data();
    for (int64_t plane = 0; plane < dy.numel(); plane++) {
        const float g = float(double(dyd[plane]) / double(HW));
        float *dxp = dxd + plane * HW;
        for (int64_t i = 0; i < HW; i++) dxp[i] = g;
    }
    return dx;
}

// ---------------------------------------------------------------------------------------------
// Linear

namespace {

struct LinearDims {
    int64_t N, I, O;
};

LinearDims linear_dims(const Tensor &x, const Tensor &weight, const char *what) {
    if (x.rank() != 2 && x.rank() != 4)
        throw std::invalid_argument(
            fmt::format("{}: x must be (N, I) or (N, C, H, W), got shape {}", what, shape_string(x.shape())));
    require_contiguous(x, what, "x");
    if (weight.rank() != 2)
        throw std::invalid_argument(
            fmt::format("{}: weight must be (O, I), got shape {}", what, shape_string(weight.shape())));
    require_contiguous(weight, what, "weight");
    const int64_t features = shape_numel(Shape(x.shape().begin() + 1, x.shape().end()));
    if (features != weight.size(1))
        throw std::invalid_argument(fmt::format("{}: x {} has {} features per sample, weight {} expects {}", what,
                                                shape_string(x.shape()), features, shape_string(weight.shape()),
                                                weight.size(1)));
    return LinearDims{x.size(0), features, weight.size(0)};
}

// Tile sizes: kRows samples share each load of a weight row; a block of kWeightBlock weight rows
// (up to 1024 x 4096 floats would be 16 MB) stays in L2 while all samples pass over it.
constexpr int kRows = 4;
constexpr int64_t kWeightBlock = 32;
// Feature columns per block of the backward, so that the rows they touch stay in L1 / L2.
constexpr int64_t kColumnBlock = 256;

}  // namespace

Tensor linear_forward(const Tensor &x, const Tensor &weight, const Tensor &bias) {
    const char *what = "linear_forward";
    const LinearDims d = linear_dims(x, weight, what);
    require_shape(bias, {d.O}, what, "bias");
    Tensor y = Tensor::uninitialized({d.N, d.O});
    const float *xd = x.data(), *wd = weight.data(), *bd = bias.data();
    float *yd = y.data();
    for (int64_t o0 = 0; o0 < d.O; o0 += kWeightBlock) {
        const int64_t o1 = std::min(d.O, o0 + kWeightBlock);
        for (int64_t n0 = 0; n0 < d.N; n0 += kRows) {
            // A short last tile repeats its last row, so that every row goes through the same kernel.
            const float *rows[kRows];
            for (int r = 0; r < kRows; r++) rows[r] = xd + std::min(n0 + r, d.N - 1) * d.I;
            const int valid = int(std::min<int64_t>(kRows, d.N - n0));
            for (int64_t o = o0; o < o1; o++) {
                float sums[kRows];
                dot_rows<kRows>(rows, wd + o * d.I, d.I, sums);
                for (int r = 0; r < valid; r++) yd[(n0 + r) * d.O + o] = bd[o] + sums[r];
            }
        }
    }
    return y;
}

Tensor linear_backward(const Tensor &dy, const Tensor &x, const Tensor &weight, Tensor &dweight, Tensor &dbias,
                       bool want_dx) {
    const char *what = "linear_backward";
    const LinearDims d = linear_dims(x, weight, what);
    require_shape(dy, {d.N, d.O}, what, "dy");
    require_shape(dweight, weight.shape(), what, "dweight");
    require_shape(dbias, {d.O}, what, "dbias");
    const float *dyd = dy.data(), *xd = x.data(), *wd = weight.data();
    float *dwd = dweight.data(), *dbd = dbias.data();

    // dbias = sum_n dy[n, :], samples in order.
    std::fill(dbd, dbd + d.O, 0.0f);
    for (int64_t n = 0; n < d.N; n++)
        for (int64_t o = 0; o < d.O; o++) dbd[o] += dyd[n * d.O + o];

    // dweight[o, :] = sum_n dy[n, o] x[n, :], samples in order; by column blocks so that the
    // x columns of all samples stay in cache while every weight row takes them.
    for (int64_t i0 = 0; i0 < d.I; i0 += kColumnBlock) {
        const int64_t len = std::min(kColumnBlock, d.I - i0);
        for (int64_t o = 0; o < d.O; o++) {
            float *dw = dwd + o * d.I + i0;
            std::fill(dw, dw + len, 0.0f);
            for (int64_t n = 0; n < d.N; n++) {
                const float g = dyd[n * d.O + o];
                axpy(dw, xd + n * d.I + i0, g, len);
            }
        }
    }
    if (!want_dx) return Tensor();

    // dx[n, :] = sum_o dy[n, o] W[o, :], outputs in order; by column blocks so that the weight
    // columns stay in cache across samples.
    Tensor dx = Tensor::uninitialized(x.shape());
    float *dxd = dx.data();
    for (int64_t i0 = 0; i0 < d.I; i0 += kColumnBlock) {
        const int64_t len = std::min(kColumnBlock, d.I - i0);
        for (int64_t n = 0; n < d.N; n++) {
            float *dxr = dxd + n * d.I + i0;
            std::fill(dxr, dxr + len, 0.0f);
            for (int64_t o = 0; o < d.O; o++) {
                const float g = dyd[n * d.O + o];
                axpy(dxr, wd + o * d.I + i0, g, len);
            }
        }
    }
    return dx;
}

// ---------------------------------------------------------------------------------------------
// ReLU, loss, add

Tensor relu_forward(const Tensor &x) {
    require_contiguous(x, "relu_forward", "x");
    Tensor y = Tensor::uninitialized(x.shape());
    const float *xd = x.data();
    float *yd = y.data();
    for (int64_t i = 0; i < x.numel(); i++) yd[i] = xd[i] > 0.0f ? xd[i] : 0.0f;
    return y;
}

Tensor relu_backward(const Tensor &dy, const Tensor &y) {
    const char *what = "relu_backward";
    require_contiguous(y, what, "y");
    require_shape(dy, y.shape(), what, "dy");
    Tensor dx = Tensor::uninitialized(y.shape());
    const float *dyd = dy.data(), *yd = y.data();
    float *dxd = dx.data();
    for (int64_t i = 0; i < y.numel(); i++) dxd[i] = yd[i] > 0.0f ? dyd[i] : 0.0f;
    return dx;
}

LossResult softmax_cross_entropy(const Tensor &logits, const std::vector<int32_t> &labels, Tensor *dlogits) {
    const char *what = "softmax_cross_entropy";
    if (logits.rank() != 2 || logits.size(0) < 1 || logits.size(1) < 1)
        throw std::invalid_argument(
            fmt::format("{}: logits must be (N >= 1, classes >= 1), got shape {}", what, shape_string(logits.shape())));
    require_contiguous(logits, what, "logits");
    const int64_t N = logits.size(0), classes = logits.size(1);
    if (int64_t(labels.size()) != N)
        throw std::invalid_argument(
            fmt::format("{}: {} labels for logits {}", what, labels.size(), shape_string(logits.shape())));
    for (size_t n = 0; n < labels.size(); n++)
        if (labels[n] < 0 || labels[n] >= classes)
            throw std::invalid_argument(
                fmt::format("{}: label {} of sample {} outside [0, {})", what, labels[n], n, classes));
    float *dd = nullptr;
    if (dlogits != nullptr) {
        if (dlogits->rank() == 0 && dlogits->data() == nullptr) *dlogits = Tensor::uninitialized(logits.shape());
        require_shape(*dlogits, logits.shape(), what, "dlogits");
        dd = dlogits->data();
    }

    LossResult result;
    double loss_sum = 0.0;
    const double inv_n = 1.0 / double(N);
    for (int64_t n = 0; n < N; n++) {
        const float *z = logits.data() + n * classes;
        int64_t best = 0;
        for (int64_t k = 1; k < classes; k++)
            if (z[k] > z[best]) best = k;  // strict: ties keep the first
        const int64_t label = labels[size_t(n)];
        if (best == label) result.correct++;
        const double zmax = z[best];
        double sum = 0.0;
        for (int64_t k = 0; k < classes; k++) sum += std::exp(double(z[k]) - zmax);
        loss_sum += std::log(sum) - (double(z[label]) - zmax);
        if (dd != nullptr) {
            float *d = dd + n * classes;
            for (int64_t k = 0; k < classes; k++) {
                const double p = std::exp(double(z[k]) - zmax) / sum;
                d[k] = float((p - (k == label ? 1.0 : 0.0)) * inv_n);
            }
        }
    }
    result.loss = loss_sum * inv_n;
    return result;
}

Tensor add(const Tensor &a, const Tensor &b) {
    const char *what = "add";
    require_contiguous(a, what, "a");
    require_shape(b, a.shape(), what, "b");
    Tensor y = Tensor::uninitialized(a.shape());
    const float *ad = a.data(), *bd = b.data();
    float *yd = y.data();
    for (int64_t i = 0; i < a.numel(); i++) yd[i] = ad[i] + bd[i];
    return y;
}

}  // namespace lowbit::nn

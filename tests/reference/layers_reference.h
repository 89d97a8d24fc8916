// Plain float64 references of the non-convolution layers of training, forward and backward:
// batch norm (training and inference), ReLU, max / average pooling, global average pooling,
// linear, softmax cross-entropy, residual add. Activations are NCHW. Every backward takes the
// upstream gradient dy = dL/dy and returns dL/d(input) and dL/d(parameters). Obviously right,
// slow; tests and benchmarks only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace lowbit::reference {

// An NCHW activation.
struct ActShape {
    int64_t N, C, H, W;
    int64_t size() const { return N * C * H * W; }
};

// Calls f(i, n, c) for every element of an NCHW activation, i its flat index, in memory order.
template <class F>
void for_each_element(const ActShape &s, F f) {
    size_t i = 0;
    for (int64_t n = 0; n < s.N; n++)
        for (int64_t c = 0; c < s.C; c++)
            for (int64_t hw = 0; hw < s.H * s.W; hw++) f(i++, n, size_t(c));
}

// ---------------------------------------------------------------------------------------------
// Batch norm, per channel c over the M = N H W values x[n,c,h,w]:
//   y = gamma[c] xhat + beta[c],  xhat = (x - mean[c]) / sqrt(var[c] + eps).

struct BatchNormForward {
    std::vector<double> y;
    std::vector<double> mean, var;  // batch statistics, per channel; var is biased (divides by M)
};

struct BatchNormGrads {
    std::vector<double> dx, dgamma, dbeta;
};

// Per-channel mean and biased variance of x over N, H, W.
inline void batch_statistics(const ActShape &s, const std::vector<double> &x, std::vector<double> &mean,
                             std::vector<double> &var) {
    const double M = double(s.N * s.H * s.W);
    mean.assign(size_t(s.C), 0.0);
    var.assign(size_t(s.C), 0.0);
    for_each_element(s, [&](size_t i, int64_t, size_t c) { mean[c] += x[i] / M; });
    for_each_element(s, [&](size_t i, int64_t, size_t c) {
        const double d = x[i] - mean[c];
        var[c] += d * d / M;
    });
}

// Inference mode: y = gamma (x - mean) / sqrt(var + eps) + beta with the given (running) statistics.
inline std::vector<double> batch_norm_inference_forward(const ActShape &s, const std::vector<double> &x,
                                                        const std::vector<double> &gamma,
                                                        const std::vector<double> &beta,
                                                        const std::vector<double> &mean, const std::vector<double> &var,
                                                        double eps) {
    std::vector<double> y(size_t(s.size()));
    for_each_element(s, [&](size_t i, int64_t, size_t k) {
        y[i] = gamma[k] * (x[i] - mean[k]) / std::sqrt(var[k] + eps) + beta[k];
    });
    return y;
}

// Training mode: normalizes with the batch statistics of x, and returns them (for running statistics).
inline BatchNormForward batch_norm_train_forward(const ActShape &s, const std::vector<double> &x,
                                                 const std::vector<double> &gamma, const std::vector<double> &beta,
                                                 double eps) {
    BatchNormForward out;
    batch_statistics(s, x, out.mean, out.var);
    out.y = batch_norm_inference_forward(s, x, gamma, beta, out.mean, out.var, eps);
    return out;
}

// Inference-mode backward: mean and var are constants, so y is affine in x.
//   dbeta = sum dy,  dgamma = sum dy xhat,  dx = dy gamma / sqrt(var + eps).
inline BatchNormGrads batch_norm_inference_backward(const ActShape &s, const std::vector<double> &dy,
                                                    const std::vector<double> &x, const std::vector<double> &gamma,
                                                    const std::vector<double> &mean, const std::vector<double> &var,
                                                    double eps) {
    BatchNormGrads g{std::vector<double>(size_t(s.size())), std::vector<double>(size_t(s.C), 0.0),
                     std::vector<double>(size_t(s.C), 0.0)};
    for_each_element(s, [&](size_t i, int64_t, size_t k) {
        const double inv_std = 1.0 / std::sqrt(var[k] + eps);
        g.dbeta[k] += dy[i];
        g.dgamma[k] += dy[i] * (x[i] - mean[k]) * inv_std;
        g.dx[i] = dy[i] * gamma[k] * inv_std;
    });
    return g;
}

// Training-mode backward: mean and var depend on x too. Per channel, with M = N H W:
//   dbeta = sum dy,  dgamma = sum dy xhat,
//   dx = gamma / sqrt(var + eps) (dy - dbeta / M - xhat dgamma / M).
inline BatchNormGrads batch_norm_train_backward(const ActShape &s, const std::vector<double> &dy,
                                                const std::vector<double> &x, const std::vector<double> &gamma,
                                                double eps) {
    std::vector<double> mean, var;
    batch_statistics(s, x, mean, var);
    BatchNormGrads g = batch_norm_inference_backward(s, dy, x, gamma, mean, var, eps);  // dgamma, dbeta
    const double M = double(s.N * s.H * s.W);
    for_each_element(s, [&](size_t i, int64_t, size_t k) {
        const double inv_std = 1.0 / std::sqrt(var[k] + eps);
        const double xhat = (x[i] - mean[k]) * inv_std;
        g.dx[i] = gamma[k] * inv_std * (dy[i] - g.dbeta[k] / M - xhat * g.dgamma[k] / M);
    });
    return g;
}

// ---------------------------------------------------------------------------------------------
// ReLU: y = max(x, 0); dx = dy where x > 0, else 0 (the gradient at x = 0 is taken as 0).

inline std::vector<double> relu_forward(const std::vector<double> &x) {
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = x[i] > 0.0 ? x[i] : 0.0;
    return y;
}

inline std::vector<double> relu_backward(const std::vector<double> &dy, const std::vector<double> &x) {
    std::vector<double> dx(x.size());
    for (size_t i = 0; i < x.size(); i++) dx[i] = x[i] > 0.0 ? dy[i] : 0.0;
    return dx;
}

// ---------------------------------------------------------------------------------------------
// Pooling over K x K windows at stride `stride`, no padding, per (n, c).

struct PoolShape {
    int64_t N, C, H, W;  // input
    int64_t K, stride;
    int64_t out_h() const { return (H - K) / stride + 1; }
    int64_t out_w() const { return (W - K) / stride + 1; }
    int64_t input_size() const { return N * C * H * W; }
    int64_t output_size() const { return N * C * out_h() * out_w(); }
};

// Calls f(y, a) for every output element y and every input element a of its window, both flat
// NCHW indices, the window in row-major order.
template <class F>
void for_each_window_element(const PoolShape &s, F f) {
    const int64_t OH = s.out_h(), OW = s.out_w();
    for (int64_t n = 0; n < s.N; n++)
        for (int64_t c = 0; c < s.C; c++)
            for (int64_t y = 0; y < OH; y++)
                for (int64_t x = 0; x < OW; x++)
                    for (int64_t ky = 0; ky < s.K; ky++)
                        for (int64_t kx = 0; kx < s.K; kx++)
                            f(size_t(((n * s.C + c) * OH + y) * OW + x),
                              size_t(((n * s.C + c) * s.H + y * s.stride + ky) * s.W + x * s.stride + kx));
}

// For every output element, the flat input index of the first maximum of its window (row-major).
inline std::vector<size_t> max_pool_argmax(const PoolShape &s, const std::vector<double> &x) {
    std::vector<size_t> arg(size_t(s.output_size()), SIZE_MAX);
    for_each_window_element(s, [&](size_t y, size_t a) {
        if (arg[y] == SIZE_MAX || x[a] > x[arg[y]]) arg[y] = a;  // strict >: ties keep the first
    });
    return arg;
}

// Y[n,c,y,x] = max_{ky,kx} X[n,c,y s + ky, x s + kx]
inline std::vector<double> max_pool_forward(const PoolShape &s, const std::vector<double> &x) {
    const std::vector<size_t> arg = max_pool_argmax(s, x);
    std::vector<double> y(arg.size());
    for (size_t i = 0; i < arg.size(); i++) y[i] = x[arg[i]];
    return y;
}

// dX: each dY goes to the first maximum of its window (summed where windows overlap).
inline std::vector<double> max_pool_backward(const PoolShape &s, const std::vector<double> &dy,
                                             const std::vector<double> &x) {
    const std::vector<size_t> arg = max_pool_argmax(s, x);
    std::vector<double> dx(size_t(s.input_size()), 0.0);
    for (size_t i = 0; i < arg.size(); i++) dx[arg[i]] += dy[i];
    return dx;
}

// Y[n,c,y,x] = (1 / K^2) sum_{ky,kx} X[n,c,y s + ky, x s + kx]
inline std::vector<double> avg_pool_forward(const PoolShape &s, const std::vector<double> &x) {
    std::vector<double> y(size_t(s.output_size()), 0.0);
    const double area = double(s.K * s.K);
    for_each_window_element(s, [&](size_t o, size_t a) { y[o] += x[a] / area; });
    return y;
}

// dX: each dY is shared equally, dY / K^2, by its window's elements.
inline std::vector<double> avg_pool_backward(const PoolShape &s, const std::vector<double> &dy) {
    std::vector<double> dx(size_t(s.input_size()), 0.0);
    const double area = double(s.K * s.K);
    for_each_window_element(s, [&](size_t o, size_t a) { dx[a] += dy[o] / area; });
    return dx;
}

// ---------------------------------------------------------------------------------------------
// Global average pooling: Y[n,c] = (1 / (H W)) sum_{h,w} X[n,c,h,w]; output N x C.

inline std::vector<double> global_avg_pool_forward(const ActShape &s, const std::vector<double> &x) {
    std::vector<double> y(size_t(s.N * s.C), 0.0);
    for_each_element(s, [&](size_t i, int64_t n, size_t c) { y[size_t(n * s.C) + c] += x[i] / double(s.H * s.W); });
    return y;
}

// dX[n,c,h,w] = dY[n,c] / (H W)
inline std::vector<double> global_avg_pool_backward(const ActShape &s, const std::vector<double> &dy) {
    std::vector<double> dx(size_t(s.size()));
    for_each_element(s, [&](size_t i, int64_t n, size_t c) { dx[i] = dy[size_t(n * s.C) + c] / double(s.H * s.W); });
    return dx;
}

// ---------------------------------------------------------------------------------------------
// Linear layer y = x W^T + b; x: N x In, W: Out x In, b: Out, y: N x Out, all row-major.

struct LinearShape {
    int64_t N, In, Out;
};

struct LinearGrads {
    std::vector<double> dx, dW, db;
};

// y[n,o] = sum_i x[n,i] W[o,i] + b[o]
inline std::vector<double> linear_forward(const LinearShape &s, const std::vector<double> &x,
                                          const std::vector<double> &W, const std::vector<double> &b) {
    std::vector<double> y(size_t(s.N * s.Out));
    for (int64_t n = 0; n < s.N; n++)
        for (int64_t o = 0; o < s.Out; o++) {
            double acc = b[size_t(o)];
            for (int64_t i = 0; i < s.In; i++) acc += x[size_t(n * s.In + i)] * W[size_t(o * s.In + i)];
            y[size_t(n * s.Out + o)] = acc;
        }
    return y;
}

// dx = dy W (N x In),  dW = dy^T x (Out x In),  db = sum_n dy (Out).
inline LinearGrads linear_backward(const LinearShape &s, const std::vector<double> &dy, const std::vector<double> &x,
                                   const std::vector<double> &W) {
    LinearGrads g{std::vector<double>(size_t(s.N * s.In), 0.0), std::vector<double>(size_t(s.Out * s.In), 0.0),
                  std::vector<double>(size_t(s.Out), 0.0)};
    for (int64_t n = 0; n < s.N; n++)
        for (int64_t o = 0; o < s.Out; o++) {
            const double e = dy[size_t(n * s.Out + o)];
            g.db[size_t(o)] += e;
            for (int64_t i = 0; i < s.In; i++) {
                g.dx[size_t(n * s.In + i)] += e * W[size_t(o * s.In + i)];
                g.dW[size_t(o * s.In + i)] += e * x[size_t(n * s.In + i)];
            }
        }
    return g;
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy with integer labels, mean over the batch. logits: N x classes.
//   loss = (1 / N) sum_n (logsumexp(z_n) - z_n[label_n]),  dlogits = (softmax(z) - onehot(label)) / N.
// Stable: the row max is subtracted before exponentiating.

struct SoftmaxCrossEntropy {
    double loss;
    std::vector<double> dlogits;
};

inline SoftmaxCrossEntropy softmax_cross_entropy(int64_t N, int64_t classes, const std::vector<double> &logits,
                                                 const std::vector<int64_t> &labels) {
    SoftmaxCrossEntropy out{0.0, std::vector<double>(size_t(N * classes))};
    for (int64_t n = 0; n < N; n++) {
        const double *z = &logits[size_t(n * classes)];
        double *d = &out.dlogits[size_t(n * classes)];
        const double zmax = *std::max_element(z, z + classes);
        double sum = 0.0;
        for (int64_t k = 0; k < classes; k++) sum += std::exp(z[k] - zmax);
        const int64_t label = labels[size_t(n)];
        out.loss += (std::log(sum) - (z[label] - zmax)) / double(N);  // logsumexp(z) - z[label]
        for (int64_t k = 0; k < classes; k++) {
            const double p = std::exp(z[k] - zmax) / sum;  // softmax
            d[k] = (p - (k == label ? 1.0 : 0.0)) / double(N);
        }
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Residual add: y = a + b; backward: da = db = dy.

struct ResidualGrads {
    std::vector<double> da, db;
};

inline std::vector<double> residual_add_forward(const std::vector<double> &a, const std::vector<double> &b) {
    std::vector<double> y(a.size());
    for (size_t i = 0; i < a.size(); i++) y[i] = a[i] + b[i];
    return y;
}

inline ResidualGrads residual_add_backward(const std::vector<double> &dy) { return ResidualGrads{dy, dy}; }

}  // namespace lowbit::reference

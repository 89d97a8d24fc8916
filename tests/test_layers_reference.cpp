// The float64 layer references of tests/reference/layers_reference.h checked on their own:
// every backward against central finite differences of its forward (through the scalar loss
// L = sum(forward(x) R) for a random R), hand-computed values on tiny cases, the max-pool tie
// rule, and batch norm's training mode against inference mode fed the batch statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "reference/layers_reference.h"

namespace lowbit {
namespace {

using namespace reference;
using Vec = std::vector<double>;

Vec random_vector(size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dist(lo, hi);
    Vec v(n);
    for (double &x : v) x = dist(rng);
    return v;
}

double dot(const Vec &a, const Vec &b) {
    double s = 0.0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// dL/dx by central differences of L(x) = sum(f(x) R).
Vec numerical_gradient(const std::function<Vec(const Vec &)> &f, const Vec &x, const Vec &R, double h = 1e-6) {
    Vec g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        Vec plus = x, minus = x;
        plus[i] += h;
        minus[i] -= h;
        g[i] = (dot(f(plus), R) - dot(f(minus), R)) / (2 * h);
    }
    return g;
}

// |analytic - numerical| <= 1e-6 (1 + |numerical|), element by element.
void expect_gradient(const Vec &analytic, const Vec &numerical, const std::string &what) {
    ASSERT_EQ(analytic.size(), numerical.size()) << what;
    for (size_t i = 0; i < analytic.size(); i++)
        EXPECT_NEAR(analytic[i], numerical[i], 1e-6 * (1.0 + std::fabs(numerical[i]))) << what << " at " << i;
}

// ---------------------------------------------------------------------------------------------
// Batch norm

TEST(BatchNormReference, TrainBackwardMatchesFiniteDifferences) {
    const ActShape s{3, 2, 2, 3};
    const double eps = 1e-5;
    const Vec x = random_vector(size_t(s.size()), 1, -2.0, 2.0);
    const Vec gamma = random_vector(size_t(s.C), 2, 0.5, 1.5), beta = random_vector(size_t(s.C), 3);
    const Vec R = random_vector(size_t(s.size()), 4);
    const BatchNormGrads g = batch_norm_train_backward(s, R, x, gamma, eps);
    expect_gradient(
        g.dx,
        numerical_gradient([&](const Vec &v) { return batch_norm_train_forward(s, v, gamma, beta, eps).y; }, x, R),
        "dx");
    expect_gradient(
        g.dgamma,
        numerical_gradient([&](const Vec &v) { return batch_norm_train_forward(s, x, v, beta, eps).y; }, gamma, R),
        "dgamma");
    expect_gradient(
        g.dbeta,
        numerical_gradient([&](const Vec &v) { return batch_norm_train_forward(s, x, gamma, v, eps).y; }, beta, R),
        "dbeta");
}

TEST(BatchNormReference, InferenceBackwardMatchesFiniteDifferences) {
    const ActShape s{2, 3, 2, 2};
    const double eps = 1e-3;
    const Vec x = random_vector(size_t(s.size()), 5, -2.0, 2.0);
    const Vec gamma = random_vector(size_t(s.C), 6, 0.5, 1.5), beta = random_vector(size_t(s.C), 7);
    const Vec mean = random_vector(size_t(s.C), 8), var = random_vector(size_t(s.C), 9, 0.2, 2.0);
    const Vec R = random_vector(size_t(s.size()), 10);
    const BatchNormGrads g = batch_norm_inference_backward(s, R, x, gamma, mean, var, eps);
    auto forward = [&](const Vec &xx, const Vec &gg, const Vec &bb) {
        return batch_norm_inference_forward(s, xx, gg, bb, mean, var, eps);
    };
    expect_gradient(g.dx, numerical_gradient([&](const Vec &v) { return forward(v, gamma, beta); }, x, R), "dx");
    expect_gradient(g.dgamma, numerical_gradient([&](const Vec &v) { return forward(x, v, beta); }, gamma, R),
                    "dgamma");
    expect_gradient(g.dbeta, numerical_gradient([&](const Vec &v) { return forward(x, gamma, v); }, beta, R), "dbeta");
}

TEST(BatchNormReference, OutputIsStandardizedPerChannel) {
    const ActShape s{4, 3, 3, 2};
    const double eps = 1e-5;
    Vec x = random_vector(size_t(s.size()), 11, 0.0, 5.0);
    const BatchNormForward f = batch_norm_train_forward(s, x, Vec(3, 1.0), Vec(3, 0.0), eps);
    Vec mean, var;
    batch_statistics(s, f.y, mean, var);
    for (int64_t c = 0; c < s.C; c++) {
        EXPECT_NEAR(mean[size_t(c)], 0.0, 1e-12) << c;
        // var(y) = var(x) / (var(x) + eps) exactly.
        EXPECT_NEAR(var[size_t(c)], f.var[size_t(c)] / (f.var[size_t(c)] + eps), 1e-12) << c;
        EXPECT_NEAR(var[size_t(c)], 1.0, 1e-4) << c;
    }
}

TEST(BatchNormReference, HandComputed) {
    // One channel, values 1 and 3 over N = 2: mean 2, biased variance 1, xhat = -1, 1.
    const ActShape s{2, 1, 1, 1};
    const BatchNormForward f = batch_norm_train_forward(s, {1.0, 3.0}, {2.0}, {0.5}, 0.0);
    EXPECT_DOUBLE_EQ(f.mean[0], 2.0);
    EXPECT_DOUBLE_EQ(f.var[0], 1.0);
    EXPECT_DOUBLE_EQ(f.y[0], -1.5);
    EXPECT_DOUBLE_EQ(f.y[1], 2.5);
    // A constant upstream gradient moves nothing: dx = 0, dgamma = sum xhat = 0, dbeta = 2.
    const BatchNormGrads g = batch_norm_train_backward(s, {1.0, 1.0}, {1.0, 3.0}, {2.0}, 0.0);
    EXPECT_NEAR(g.dx[0], 0.0, 1e-15);
    EXPECT_NEAR(g.dx[1], 0.0, 1e-15);
    EXPECT_NEAR(g.dgamma[0], 0.0, 1e-15);
    EXPECT_DOUBLE_EQ(g.dbeta[0], 2.0);
}

TEST(BatchNormReference, TrainingEqualsInferenceWithBatchStatistics) {
    const ActShape s{3, 4, 2, 3};
    const double eps = 1e-5;
    const Vec x = random_vector(size_t(s.size()), 12, -3.0, 3.0);
    const Vec gamma = random_vector(size_t(s.C), 13, 0.5, 1.5), beta = random_vector(size_t(s.C), 14);
    const BatchNormForward f = batch_norm_train_forward(s, x, gamma, beta, eps);
    const Vec y = batch_norm_inference_forward(s, x, gamma, beta, f.mean, f.var, eps);
    ASSERT_EQ(y.size(), f.y.size());
    for (size_t i = 0; i < y.size(); i++) EXPECT_EQ(y[i], f.y[i]) << i;
}

// ---------------------------------------------------------------------------------------------
// ReLU

TEST(ReluReference, BackwardMatchesFiniteDifferences) {
    const Vec x = random_vector(40, 15), R = random_vector(40, 16);
    expect_gradient(relu_backward(R, x), numerical_gradient(relu_forward, x, R), "relu");
}

TEST(ReluReference, HandComputed) {
    EXPECT_EQ(relu_forward({-1.0, 0.0, 2.0}), (Vec{0.0, 0.0, 2.0}));
    EXPECT_EQ(relu_backward({5.0, 5.0, 5.0}, {-1.0, 0.0, 2.0}), (Vec{0.0, 0.0, 5.0}));
}

// ---------------------------------------------------------------------------------------------
// Pooling

TEST(PoolReference, MaxPoolBackwardMatchesFiniteDifferences) {
    for (const PoolShape s : {PoolShape{2, 3, 4, 6, 2, 2}, PoolShape{1, 2, 7, 5, 3, 2}, PoolShape{2, 1, 5, 5, 3, 1}}) {
        const Vec x = random_vector(size_t(s.input_size()), 17), R = random_vector(size_t(s.output_size()), 18);
        expect_gradient(max_pool_backward(s, R, x),
                        numerical_gradient([&](const Vec &v) { return max_pool_forward(s, v); }, x, R),
                        "max pool K=" + std::to_string(s.K) + " stride=" + std::to_string(s.stride));
    }
}

TEST(PoolReference, AvgPoolBackwardMatchesFiniteDifferences) {
    for (const PoolShape s : {PoolShape{2, 3, 4, 6, 2, 2}, PoolShape{1, 2, 7, 5, 3, 2}, PoolShape{2, 1, 5, 5, 3, 1}}) {
        const Vec x = random_vector(size_t(s.input_size()), 19), R = random_vector(size_t(s.output_size()), 20);
        expect_gradient(avg_pool_backward(s, R),
                        numerical_gradient([&](const Vec &v) { return avg_pool_forward(s, v); }, x, R),
                        "avg pool K=" + std::to_string(s.K) + " stride=" + std::to_string(s.stride));
    }
}

TEST(PoolReference, MaxPoolTiesGoToFirstInRowMajorOrder) {
    const PoolShape s{1, 1, 2, 4, 2, 2};
    // Window 0 (columns 0-1): all four equal -> element (0,0). Window 1 (columns 2-3): the maximum 7
    // at (0,3) and (1,2) -> (0,3), which comes first in row-major order.
    const Vec x = {3.0, 3.0, 1.0, 7.0,  //
                   3.0, 3.0, 7.0, 2.0};
    EXPECT_EQ(max_pool_forward(s, x), (Vec{3.0, 7.0}));
    EXPECT_EQ(max_pool_backward(s, {10.0, 20.0}, x), (Vec{10.0, 0.0, 0.0, 20.0, 0.0, 0.0, 0.0, 0.0}));
}

TEST(PoolReference, HandComputed) {
    const PoolShape s{1, 1, 2, 2, 2, 2};
    const Vec x = {1.0, 2.0, 3.0, 4.0};
    EXPECT_EQ(max_pool_forward(s, x), (Vec{4.0}));
    EXPECT_EQ(max_pool_backward(s, {1.0}, x), (Vec{0.0, 0.0, 0.0, 1.0}));
    EXPECT_EQ(avg_pool_forward(s, x), (Vec{2.5}));
    EXPECT_EQ(avg_pool_backward(s, {4.0}), (Vec{1.0, 1.0, 1.0, 1.0}));
    // Overlapping windows (K 2, stride 1) on a 2 x 3 input: both windows hold column 1.
    const PoolShape o{1, 1, 2, 3, 2, 1};
    EXPECT_EQ(avg_pool_backward(o, {4.0, 8.0}), (Vec{1.0, 3.0, 2.0, 1.0, 3.0, 2.0}));
}

TEST(GlobalAvgPoolReference, BackwardMatchesFiniteDifferences) {
    const ActShape s{2, 3, 3, 4};
    const Vec x = random_vector(size_t(s.size()), 21), R = random_vector(size_t(s.N * s.C), 22);
    expect_gradient(global_avg_pool_backward(s, R),
                    numerical_gradient([&](const Vec &v) { return global_avg_pool_forward(s, v); }, x, R), "gap");
}

TEST(GlobalAvgPoolReference, HandComputed) {
    const ActShape s{1, 2, 1, 2};
    EXPECT_EQ(global_avg_pool_forward(s, {1.0, 3.0, 10.0, 20.0}), (Vec{2.0, 15.0}));
    EXPECT_EQ(global_avg_pool_backward(s, {2.0, 4.0}), (Vec{1.0, 1.0, 2.0, 2.0}));
}

// ---------------------------------------------------------------------------------------------
// Linear

TEST(LinearReference, BackwardMatchesFiniteDifferences) {
    const LinearShape s{3, 5, 4};
    const Vec x = random_vector(size_t(s.N * s.In), 23), W = random_vector(size_t(s.Out * s.In), 24);
    const Vec b = random_vector(size_t(s.Out), 25), R = random_vector(size_t(s.N * s.Out), 26);
    const LinearGrads g = linear_backward(s, R, x, W);
    expect_gradient(g.dx, numerical_gradient([&](const Vec &v) { return linear_forward(s, v, W, b); }, x, R), "dx");
    expect_gradient(g.dW, numerical_gradient([&](const Vec &v) { return linear_forward(s, x, v, b); }, W, R), "dW");
    expect_gradient(g.db, numerical_gradient([&](const Vec &v) { return linear_forward(s, x, W, v); }, b, R), "db");
}

TEST(LinearReference, HandComputed) {
    const LinearShape s{1, 2, 3};
    const Vec x = {1.0, 2.0}, W = {1.0, 0.0, 0.0, 1.0, 1.0, 1.0}, b = {0.0, 0.0, 1.0};
    EXPECT_EQ(linear_forward(s, x, W, b), (Vec{1.0, 2.0, 4.0}));
    const LinearGrads g = linear_backward(s, {1.0, 10.0, 100.0}, x, W);
    EXPECT_EQ(g.dx, (Vec{101.0, 110.0}));
    EXPECT_EQ(g.dW, (Vec{1.0, 2.0, 10.0, 20.0, 100.0, 200.0}));
    EXPECT_EQ(g.db, (Vec{1.0, 10.0, 100.0}));
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy

TEST(SoftmaxCrossEntropyReference, GradientMatchesFiniteDifferences) {
    const int64_t N = 4, classes = 5;
    const Vec logits = random_vector(size_t(N * classes), 27, -3.0, 3.0);
    const std::vector<int64_t> labels = {0, 4, 2, 2};
    const SoftmaxCrossEntropy ce = softmax_cross_entropy(N, classes, logits, labels);
    // The loss is already scalar: R = [1].
    expect_gradient(
        ce.dlogits,
        numerical_gradient([&](const Vec &v) { return Vec{softmax_cross_entropy(N, classes, v, labels).loss}; }, logits,
                           Vec{1.0}),
        "dlogits");
    // Each row of dlogits sums to zero.
    for (int64_t n = 0; n < N; n++) {
        double sum = 0.0;
        for (int64_t k = 0; k < classes; k++) sum += ce.dlogits[size_t(n * classes + k)];
        EXPECT_NEAR(sum, 0.0, 1e-15) << n;
    }
}

TEST(SoftmaxCrossEntropyReference, HandComputed) {
    const SoftmaxCrossEntropy ce = softmax_cross_entropy(1, 2, {0.0, 0.0}, {0});
    EXPECT_DOUBLE_EQ(ce.loss, std::log(2.0));
    EXPECT_DOUBLE_EQ(ce.dlogits[0], -0.5);
    EXPECT_DOUBLE_EQ(ce.dlogits[1], 0.5);
    // Mean over the batch: two rows of uniform logits over 4 classes give log 4, gradients / 2.
    const SoftmaxCrossEntropy two = softmax_cross_entropy(2, 4, Vec(8, 3.0), {1, 3});
    EXPECT_DOUBLE_EQ(two.loss, std::log(4.0));
    EXPECT_EQ(two.dlogits, (Vec{0.125, -0.375, 0.125, 0.125, 0.125, 0.125, 0.125, -0.375}));
}

TEST(SoftmaxCrossEntropyReference, StableForLargeLogits) {
    // exp(1000) overflows without the row max subtracted.
    const SoftmaxCrossEntropy right = softmax_cross_entropy(1, 2, {1000.0, 0.0}, {0});
    EXPECT_NEAR(right.loss, 0.0, 1e-300);
    const SoftmaxCrossEntropy wrong = softmax_cross_entropy(1, 2, {1000.0, 0.0}, {1});
    EXPECT_DOUBLE_EQ(wrong.loss, 1000.0);
    EXPECT_DOUBLE_EQ(wrong.dlogits[0], 1.0);
    EXPECT_DOUBLE_EQ(wrong.dlogits[1], -1.0);
}

// ---------------------------------------------------------------------------------------------
// Residual add

TEST(ResidualAddReference, BackwardMatchesFiniteDifferences) {
    const Vec a = random_vector(12, 28), b = random_vector(12, 29), R = random_vector(12, 30);
    const ResidualGrads g = residual_add_backward(R);
    expect_gradient(g.da, numerical_gradient([&](const Vec &v) { return residual_add_forward(v, b); }, a, R), "da");
    expect_gradient(g.db, numerical_gradient([&](const Vec &v) { return residual_add_forward(a, v); }, b, R), "db");
    EXPECT_EQ(residual_add_forward({1.0, 2.0}, {10.0, 20.0}), (Vec{11.0, 22.0}));
}

}  // namespace
}  // namespace lowbit

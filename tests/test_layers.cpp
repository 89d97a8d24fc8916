// The batch-norm kernels (runtime/layers.h) against the float64 references of
// tests/reference/layers_reference.h, which are themselves checked by finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>

#include "dispatch.h"
#include "layers.h"
#include "reference/layers_reference.h"

namespace lowbit {
namespace {

namespace ref = reference;

constexpr double kEps = 1e-5;

struct Case {
    int64_t N, C, H, W;
};
const Case kCases[] = {{1, 1, 1, 1}, {3, 5, 7, 7}, {2, 16, 8, 9}, {128, 3, 4, 4}, {4, 7, 1, 1}};

Tensor random_tensor(const Shape &shape, std::mt19937 &rng, float offset = 0.0f, float spread = 1.0f) {
    Tensor t(shape);
    std::normal_distribution<float> d(offset, spread);
    for (int64_t k = 0; k < t.numel(); k++) t[k] = d(rng);
    return t;
}

std::vector<double> to_double(const Tensor &t) { return std::vector<double>(t.data(), t.data() + t.numel()); }

// Within `tol` relative to the largest reference magnitude (float32 arithmetic in the kernels).
void expect_close(const Tensor &got, const std::vector<double> &want, double tol, const char *what) {
    ASSERT_EQ(size_t(got.numel()), want.size()) << what;
    double scale = 1e-30;
    for (double w : want) scale = std::max(scale, std::abs(w));
    for (size_t k = 0; k < want.size(); k++) {
        ASSERT_NEAR(got[int64_t(k)], want[k], tol * scale) << what << " at " << k;
    }
}

// What the trainer's batch-norm layer does with the kernels: statistics, then folded scale and
// shift, then the fused forward.
struct Folded {
    Tensor mean, variance, inv_std, scale, shift;
};
Folded fold(const Tensor &x, const Tensor &gamma, const Tensor &beta) {
    const int64_t C = x.size(1);
    Folded f{Tensor({C}), Tensor({C}), Tensor({C}), Tensor({C}), Tensor({C})};
    batch_norm_statistics(x, f.mean, f.variance);
    for (int64_t c = 0; c < C; c++) {
        f.inv_std[c] = float(1.0 / std::sqrt(double(f.variance[c]) + kEps));
        f.scale[c] = gamma[c] * f.inv_std[c];
        f.shift[c] = beta[c] - f.mean[c] * f.scale[c];
    }
    return f;
}

TEST(BatchNorm, StatisticsMatchFloat64) {
    std::mt19937 rng(1);
    for (const Case &s : kCases) {
        // An offset large against the spread: the variance must survive it.
        Tensor x = random_tensor({s.N, s.C, s.H, s.W}, rng, 100.0f, 0.5f);
        Tensor mean({s.C}), var({s.C});
        batch_norm_statistics(x, mean, var);
        std::vector<double> rm, rv;
        ref::batch_statistics({s.N, s.C, s.H, s.W}, to_double(x), rm, rv);
        expect_close(mean, rm, 1e-7, "mean");
        for (int64_t c = 0; c < s.C; c++) EXPECT_NEAR(var[c], rv[size_t(c)], 1e-5 * rv[size_t(c)] + 1e-9) << c;
    }
}

TEST(BatchNorm, ForwardWithAndWithoutReluMatchesFloat64) {
    std::mt19937 rng(2);
    for (const Case &s : kCases) {
        const ref::ActShape shape{s.N, s.C, s.H, s.W};
        Tensor x = random_tensor({s.N, s.C, s.H, s.W}, rng, 0.3f, 2.0f);
        Tensor gamma = random_tensor({s.C}, rng, 1.0f, 0.5f), beta = random_tensor({s.C}, rng);
        Folded f = fold(x, gamma, beta);
        const auto want = ref::batch_norm_train_forward(shape, to_double(x), to_double(gamma), to_double(beta), kEps);
        if (s.N * s.H * s.W == 1) continue;  // one value per channel: x̂ = 0, nothing to compare but beta
        for (bool relu : {false, true}) {
            Tensor y = Tensor::uninitialized(x.shape());
            batch_norm_forward(x, f.scale, f.shift, relu, y);
            expect_close(y, relu ? ref::relu_forward(want.y) : want.y, 2e-6, relu ? "bn+relu" : "bn");
        }
        Tensor residual = random_tensor(x.shape(), rng);
        Tensor y = Tensor::uninitialized(x.shape());
        ReluMask mask(3, 7);  // resized and overwritten
        batch_norm_add_relu(x, f.scale, f.shift, residual, y, mask);
        expect_close(y, ref::relu_forward(ref::residual_add_forward(want.y, to_double(residual))), 2e-6, "bn+add+relu");
        ASSERT_EQ(int64_t(mask.size()), y.numel());
        for (int64_t k = 0; k < y.numel(); k++) ASSERT_EQ(mask[size_t(k)], y[k] > 0.0f ? 1 : 0) << "element " << k;
    }
}

TEST(BatchNorm, BackwardWithAndWithoutReluMatchesFloat64) {
    std::mt19937 rng(3);
    for (const Case &s : kCases) {
        if (s.N * s.H * s.W == 1) continue;
        const ref::ActShape shape{s.N, s.C, s.H, s.W};
        Tensor x = random_tensor({s.N, s.C, s.H, s.W}, rng, -0.2f, 1.5f);
        Tensor gamma = random_tensor({s.C}, rng, 1.0f, 0.5f), beta = random_tensor({s.C}, rng, 0.0f, 0.5f);
        Tensor dy = random_tensor(x.shape(), rng);
        Folded f = fold(x, gamma, beta);
        for (bool relu : {false, true}) {
            // The reference: ReLU backward on the float64 forward output, then batch norm.
            std::vector<double> g = to_double(dy);
            if (relu) {
                const auto fwd =
                    ref::batch_norm_train_forward(shape, to_double(x), to_double(gamma), to_double(beta), kEps);
                g = ref::relu_backward(g, fwd.y);
            }
            const auto want = ref::batch_norm_train_backward(shape, g, to_double(x), to_double(gamma), kEps);
            Tensor dx = Tensor::uninitialized(x.shape()), dgamma({s.C}), dbeta({s.C});
            batch_norm_backward(dy, x, f.mean, f.inv_std, f.scale, f.shift, relu, dx, dgamma, dbeta);
            expect_close(dbeta, want.dbeta, 1e-6, "dbeta");
            expect_close(dgamma, want.dgamma, 1e-5, "dgamma");
            expect_close(dx, want.dx, 1e-4, "dx");
        }
    }
}

TEST(BatchNorm, AddReluBackwardMatchesFloat64) {
    std::mt19937 rng(6);
    for (const Case &s : kCases) {
        if (s.N * s.H * s.W == 1) continue;
        const ref::ActShape shape{s.N, s.C, s.H, s.W};
        Tensor x = random_tensor({s.N, s.C, s.H, s.W}, rng, 0.1f, 1.5f), residual = random_tensor(x.shape(), rng);
        Tensor gamma = random_tensor({s.C}, rng, 1.0f, 0.5f), beta = random_tensor({s.C}, rng, 0.0f, 0.5f);
        Tensor dy = random_tensor(x.shape(), rng);
        Folded f = fold(x, gamma, beta);
        Tensor y = Tensor::uninitialized(x.shape());
        ReluMask mask;
        batch_norm_add_relu(x, f.scale, f.shift, residual, y, mask);
        // Reference: ReLU backward at the float64 sum, then the residual add and batch norm.
        const auto fwd = ref::batch_norm_train_forward(shape, to_double(x), to_double(gamma), to_double(beta), kEps);
        const std::vector<double> g =
            ref::relu_backward(to_double(dy), ref::residual_add_forward(fwd.y, to_double(residual)));
        const auto want = ref::batch_norm_train_backward(shape, g, to_double(x), to_double(gamma), kEps);
        Tensor dx = Tensor::uninitialized(x.shape()), dres = Tensor::uninitialized(x.shape()), dgamma({s.C}),
               dbeta({s.C});
        batch_norm_add_relu_backward(dy, x, mask, f.mean, f.inv_std, f.scale, dx, dgamma, dbeta, dres);
        expect_close(dres, ref::residual_add_backward(g).da, 0, "dresidual");
        expect_close(dbeta, want.dbeta, 1e-6, "dbeta");
        expect_close(dgamma, want.dgamma, 1e-5, "dgamma");
        expect_close(dx, want.dx, 1e-4, "dx");
    }
}

// The ReLU mask the backward recomputes is the forward's own: where the forward output is
// exactly 0 the gradient is 0, wherever it is positive it passes.
TEST(BatchNorm, BackwardMaskIsTheForwardMask) {
    std::mt19937 rng(4);
    Tensor x = random_tensor({8, 4, 5, 5}, rng), gamma = random_tensor({4}, rng), beta = random_tensor({4}, rng);
    Folded f = fold(x, gamma, beta);
    Tensor y = Tensor::uninitialized(x.shape());
    batch_norm_forward(x, f.scale, f.shift, true, y);
    // With zero statistics gradients, dx = scale * g: compare the mask through a gradient that
    // is 1 on one channel position and check every zero output blocks it.
    Tensor dy(x.shape()), dx = Tensor::uninitialized(x.shape()), dgamma({4}), dbeta({4});
    for (int64_t k = 0; k < dy.numel(); k++) dy[k] = 1.0f;
    Tensor masked = Tensor::uninitialized(x.shape()), dx_plain = Tensor::uninitialized(x.shape());
    batch_norm_backward(dy, x, f.mean, f.inv_std, f.scale, f.shift, true, dx, dgamma, dbeta);
    for (int64_t k = 0; k < dy.numel(); k++) masked[k] = y[k] > 0.0f ? 1.0f : 0.0f;
    batch_norm_backward(masked, x, f.mean, f.inv_std, f.scale, f.shift, false, dx_plain, dgamma, dbeta);
    for (int64_t k = 0; k < dy.numel(); k++) ASSERT_EQ(dx[k], dx_plain[k]) << k;
}

TEST(BatchNorm, IdenticalForEveryThreadCountAndVariant) {
    std::mt19937 rng(5);
    Tensor x = random_tensor({32, 16, 9, 9}, rng, 1.0f, 3.0f), dy = random_tensor(x.shape(), rng);
    Tensor gamma = random_tensor({16}, rng), beta = random_tensor({16}, rng);
    std::vector<float> first;
    for (Isa isa : {Isa::avx2, Isa::baseline}) {
        if (!cpu_supports(isa)) continue;
        force_isa(isa);
        for (int threads : {1, 2, 3}) {
            set_num_threads(threads);
            Folded f = fold(x, gamma, beta);
            Tensor dx = Tensor::uninitialized(x.shape()), dgamma({16}), dbeta({16});
            batch_norm_backward(dy, x, f.mean, f.inv_std, f.scale, f.shift, true, dx, dgamma, dbeta);
            std::vector<float> all(f.variance.data(), f.variance.data() + 16);
            all.insert(all.end(), dx.data(), dx.data() + dx.numel());
            all.insert(all.end(), dgamma.data(), dgamma.data() + 16);
            if (first.empty()) first = all;
            ASSERT_EQ(std::memcmp(first.data(), all.data(), all.size() * sizeof(float)), 0)
                << to_string(isa) << " threads " << threads;
        }
    }
    force_isa(std::nullopt);
    set_num_threads(0);
}

// The fused batch norm + ReLU + quantize equals quantize(batch_norm_forward(..., relu)) bit for
// bit: values, group exponents and scale, for every group axis it takes and both roundings.
TEST(BatchNorm, FusedQuantizeEqualsQuantizeOfTheOutput) {
    std::mt19937 rng(7);
    for (const Case &s : kCases) {
        Tensor x = random_tensor({s.N, s.C, s.H, s.W}, rng, 0.2f, 1.0f);
        Tensor scale = random_tensor({s.C}, rng, 1.0f, 2.0f), shift = random_tensor({s.C}, rng);
        // Channels of very different sizes, so that group exponents differ between groups.
        for (int64_t c = 0; c < s.C; c++) scale[c] = std::ldexp(scale[c], int(c % 5) - 2);
        Tensor y = Tensor::uninitialized(x.shape());
        batch_norm_forward(x, scale, shift, true, y);
        for (const char *text : {"m3e0", "m3e0/g3/sample", "m2e1/g3/channel", "m1e2/g2/sample", "m7e0/g8/channel"}) {
            for (Rounding r : {Rounding::nearest, Rounding::stochastic}) {
                const Format f = parse_format(text);
                const QuantizedTensor want = quantize(y, f, r, 11, 3, 5, TensorRole::activation);
                QuantizedTensor got;
                batch_norm_relu_quantize_into(got, x, scale, shift, f, r, 11, 3, 5);
                EXPECT_EQ(got.scale, want.scale) << text;
                EXPECT_EQ(got.group_exponents, want.group_exponents) << text;
                ASSERT_EQ(got.values, want.values) << text << " " << to_string(r);
                EXPECT_EQ(got.shape, want.shape);
            }
        }
    }
    QuantizedTensor q;
    Tensor x({2, 3, 4, 4}), c3({3});
    EXPECT_THROW(
        batch_norm_relu_quantize_into(q, x, c3, c3, parse_format("m3e0/g3/block2"), Rounding::nearest, 0, 0, 0),
        std::invalid_argument);
}

// The row maxima both backward kernels write with their grad_input: each (c, n) row's max |dx|
// (checked against a plain loop over dx), and the quantization of dx that takes its scales from
// them equal to quantize(dx) bit for bit, for every group axis they serve and both roundings, on
// every variant this CPU runs. Planes of 1, 16, 49 and 72 elements: no whole vector of lanes,
// whole vectors only, and a tail.
TEST(BatchNorm, BackwardRowMaximaGiveTheGradientsQuantization) {
    std::mt19937 rng(8);
    const Case cases[] = {{4, 7, 1, 1}, {3, 5, 4, 4}, {3, 5, 7, 7}, {2, 16, 8, 9}};
    for (Isa isa : {Isa::avx512_vnni, Isa::avx2, Isa::baseline}) {
        if (!cpu_supports(isa)) continue;
        force_isa(isa);
        for (const Case &s : cases) {
            Tensor x = random_tensor({s.N, s.C, s.H, s.W}, rng, 0.1f, 1.5f), residual = random_tensor(x.shape(), rng);
            Tensor gamma = random_tensor({s.C}, rng, 1.0f, 0.5f), beta = random_tensor({s.C}, rng, 0.0f, 0.5f);
            Tensor dy = random_tensor(x.shape(), rng);
            // Samples of very different sizes, so that group exponents differ between groups.
            for (int64_t k = 0; k < dy.numel(); k++) dy[k] = std::ldexp(dy[k], int(k / (s.C * s.H * s.W) % 4) * 2);
            Folded f = fold(x, gamma, beta);
            for (int kernel = 0; kernel < 3; kernel++) {
                Tensor dx = Tensor::uninitialized(x.shape()), dgamma({s.C}), dbeta({s.C});
                RowMaxima rows;
                if (kernel < 2) {
                    batch_norm_backward(dy, x, f.mean, f.inv_std, f.scale, f.shift, kernel == 1, dx, dgamma, dbeta,
                                        &rows);
                } else {
                    Tensor y = Tensor::uninitialized(x.shape()), dres = Tensor::uninitialized(x.shape());
                    ReluMask mask;
                    batch_norm_add_relu(x, f.scale, f.shift, residual, y, mask);
                    batch_norm_add_relu_backward(dy, x, mask, f.mean, f.inv_std, f.scale, dx, dgamma, dbeta, dres,
                                                 &rows);
                }
                ASSERT_EQ(rows.channels, s.C);
                ASSERT_EQ(rows.samples, s.N);
                ASSERT_EQ(rows.lane_bits.size(), size_t(s.N * s.C) * kRowMaxLanes);
                const int64_t plane = s.H * s.W;
                for (int64_t row = 0; row < s.N * s.C; row++) {
                    float want = 0.0f;
                    for (int64_t i = 0; i < plane; i++) want = std::max(want, std::fabs(dx[row * plane + i]));
                    uint32_t got_bits = 0;
                    for (int l = 0; l < kRowMaxLanes; l++)
                        got_bits = std::max(got_bits, rows.lane_bits[size_t(row) * kRowMaxLanes + size_t(l)]);
                    float got;
                    std::memcpy(&got, &got_bits, sizeof got);
                    ASSERT_EQ(got, want) << to_string(isa) << " kernel " << kernel << " row " << row;
                }
                for (const char *text : {"m1e2/g3/sample", "m3e0/g3/channel", "m3e0", "m7e0/g8/sample"}) {
                    for (Rounding r : {Rounding::nearest, Rounding::stochastic}) {
                        const Format fmt = parse_format(text);
                        const QuantizedTensor want = quantize(dx, fmt, r, 11, 3, 5, TensorRole::error);
                        QuantizedTensor got;
                        quantize_into(got, dx, rows, fmt, r, 11, 3, 5, TensorRole::error);
                        EXPECT_EQ(got.scale, want.scale) << text;
                        EXPECT_EQ(got.group_exponents, want.group_exponents) << text;
                        ASSERT_EQ(got.values, want.values) << text << " " << to_string(r) << " " << to_string(isa);
                    }
                }
            }
        }
    }
    force_isa(std::nullopt);
    // Row maxima of another shape, block groups and a gradient holding NaN are refused.
    Tensor x = random_tensor({2, 3, 4, 4}, rng), dy = random_tensor(x.shape(), rng), c3({3});
    Folded f = fold(x, random_tensor({3}, rng), random_tensor({3}, rng));
    Tensor dx = Tensor::uninitialized(x.shape());
    RowMaxima rows;
    batch_norm_backward(dy, x, f.mean, f.inv_std, f.scale, f.shift, false, dx, c3, c3, &rows);
    QuantizedTensor q;
    const Format m1e2 = parse_format("m1e2/g3/sample");
    Tensor other = random_tensor({2, 4, 4, 4}, rng);
    EXPECT_THROW(quantize_into(q, other, rows, m1e2, Rounding::nearest, 0, 0, 0, TensorRole::error),
                 std::invalid_argument);
    EXPECT_THROW(
        quantize_into(q, dx, rows, parse_format("m3e0/g3/block2"), Rounding::nearest, 0, 0, 0, TensorRole::error),
        std::invalid_argument);
    dy[5] = std::nanf("");
    batch_norm_backward(dy, x, f.mean, f.inv_std, f.scale, f.shift, false, dx, c3, c3, &rows);
    EXPECT_THROW(quantize_into(q, dx, rows, m1e2, Rounding::nearest, 0, 0, 0, TensorRole::error),
                 std::invalid_argument);
}

TEST(BatchNorm, RejectsMismatchedShapes) {
    Tensor x({2, 3, 4, 4}), c3({3}), c4({4}), y({2, 3, 4, 4}), wrong({2, 3, 4, 5});
    EXPECT_THROW(batch_norm_forward(x, c4, c3, true, y), std::invalid_argument);
    EXPECT_THROW(batch_norm_forward(x, c3, c3, true, wrong), std::invalid_argument);
    ReluMask mask;
    EXPECT_THROW(batch_norm_add_relu(x, c3, c3, wrong, y, mask), std::invalid_argument);
    Tensor dx({2, 3, 4, 4}), dres({2, 3, 4, 4});
    ReluMask short_mask(size_t(x.numel() - 1));
    EXPECT_THROW(batch_norm_add_relu_backward(y, x, short_mask, c3, c3, c3, dx, c3, c3, dres), std::invalid_argument);
    Tensor rank3({2, 3, 4});
    EXPECT_THROW(batch_norm_statistics(rank3, c3, c3), std::invalid_argument);
}

}  // namespace
}  // namespace lowbit

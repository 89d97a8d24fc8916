// The quantize pipeline (AOT Halide kernels through runtime/quantize.h) against the plain
// reference of method.md: rounding, stochastic statistics, group exponents, edge cases,
// determinism across threads and compiled variants.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <random>

#include <HalideBuffer.h>

#include "dispatch.h"
#include "quantize.h"
#include "quantize_values_block_variants.h"
#include "quantize_values_variants.h"
#include "reference/format_reference.h"

namespace lowbit {
namespace {

reference::ElementFormat ref(const Format &f) { return {f.mantissa_bits, f.exponent_bits, f.shift, f.has_sign}; }

std::vector<Format> int8_formats_up_to_8_bits() {
    std::vector<Format> all;
    for (int bits = 2; bits <= 8; bits++) {
        for (int e = 0; e + 2 <= bits; e++) {
            Format f;
            f.mantissa_bits = bits - 1 - e;
            f.exponent_bits = e;
            f.shift = default_shift(e);
            if (f.mantissa_bits + f.shift * f.exponent_steps() <= 52 && f.fits_int8()) all.push_back(f);
        }
    }
    all.push_back(parse_format("m3e1d3"));
    all.push_back(parse_format("m1e1d6"));
    // The unsigned variants that fit int8 (q up to 127).
    for (const char *name : {"um1e0", "um2e0", "um4e0", "um7e0", "um2e1", "um3e1", "um1e2", "um2e2", "um4e1d2"}) {
        all.push_back(parse_format(name));
    }
    return all;
}

Tensor random_tensor(Shape shape, uint32_t seed, float scale = 1.0f) {
    Tensor t(std::move(shape));
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    for (int64_t k = 0; k < t.numel(); k++) t[k] = dist(rng);
    return t;
}

// Restores the default variant and thread count after a test that changes them.
struct DispatchGuard {
    ~DispatchGuard() {
        force_isa(std::nullopt);
        set_num_threads(0);
    }
};

// Every element of a nearest-rounded tensor is the reference's choice, and the group
// exponents and scale are the reference's too.
void expect_matches_reference(const Tensor &x, const QuantizedTensor &q) {
    const Format &f = q.format;
    const std::vector<int64_t> set = reference::representable(ref(f));
    float S = 0;
    for (int64_t k = 0; k < x.numel(); k++) S = std::max(S, std::fabs(x[k]));
    ASSERT_EQ(q.scale, S);
    std::vector<float> group_max(size_t(q.view.group_count()), 0.0f);
    for (int64_t k = 0; k < x.numel(); k++) {
        float &m = group_max[size_t(q.view.group_of(k))];
        m = std::max(m, std::fabs(x[k]));
    }
    for (size_t g = 0; g < group_max.size(); g++) {
        ASSERT_EQ(int(q.group_exponents[g]), reference::group_exponent(S, group_max[g], f.group_bits)) << "group " << g;
    }
    for (int64_t k = 0; k < x.numel(); k++) {
        const int e = q.group_exponents[size_t(q.view.group_of(k))];
        ASSERT_EQ(int64_t(q.values[size_t(k)]), reference::round_nearest(x[k], S, e, ref(f), set))
            << "element " << k << " x = " << x[k] << " format " << to_string(f);
    }
}

TEST(Quantize, NearestMatchesReferenceOnADenseSweepOfEveryInt8Format) {
    for (const Format &f : int8_formats_up_to_8_bits()) {
        SCOPED_TRACE(to_string(f));
        const std::vector<int64_t> set = reference::representable(ref(f));
        const double qmax = double(f.qmax());
        // u on a dense grid plus every midpoint between representable neighbours (ties).
        std::vector<float> v;
        for (int k = -4096; k <= 4096; k++) v.push_back(float(k / 4096.0));
        for (size_t k = 0; k + 1 < set.size(); k++) {
            const double mid = (double(set[k]) + double(set[k + 1])) / 2;
            for (double d : {-1e-7, 0.0, 1e-7}) v.push_back(float((mid + d) / qmax));
        }
        v.push_back(1.0f);  // S = 1
        Tensor x({int64_t(v.size())});
        std::copy(v.begin(), v.end(), x.data());
        expect_matches_reference(x, quantize(x, f));
    }
}

TEST(Quantize, GroupExponentsPerAxisMatchReference) {
    // Groups of very different magnitudes, so the exponents differ and some hit the cap.
    Tensor x = random_tensor({6, 10, 5, 3}, 11);
    for (int64_t k = 0; k < x.numel(); k++) x[k] *= std::ldexp(1.0f, -int((k / 7) % 13));
    for (const char *name : {"m3e0", "m3e0/g3/sample", "m3e0/g3/channel", "m3e0/g2/block4", "m3e0/g3/block3",
                             "m2e1/g4/sample", "m1e2/g2/channel", "m7e0/g8/block1", "m4e2/g1/block16"}) {
        SCOPED_TRACE(name);
        expect_matches_reference(x, quantize(x, parse_format(name)));
    }
    // Weights: channel groups run along axis 0, the output channel.
    const QuantizedTensor w =
        quantize(x, parse_format("m3e0/g3/channel"), Rounding::nearest, 0, 0, 0, TensorRole::weight);
    EXPECT_EQ(w.group_exponents.size(), 6u);
    expect_matches_reference(x, w);
    EXPECT_EQ(quantize(x, parse_format("m3e0/g3/channel")).group_exponents.size(), 10u);
    EXPECT_EQ(quantize(x, parse_format("m3e0/g3/block4")).group_exponents.size(), size_t(15 * 3 * 6));
}

TEST(Quantize, GroupExponentCapAndZeroGroups) {
    Tensor x({4, 8});
    for (int j = 0; j < 8; j++) {
        x.at({0, j}) = 1.0f;    // e = 0
        x.at({1, j}) = 1e-6f;   // e would be 19: capped at 2^G - 1
        x.at({2, j}) = 0.0f;    // all-zero group: 2^G - 1
        x.at({3, j}) = 0.126f;  // e = 2
    }
    const QuantizedTensor q = quantize(x, parse_format("m3e0/g3/sample"));
    EXPECT_EQ(std::vector<int>(q.group_exponents.begin(), q.group_exponents.end()), (std::vector<int>{0, 7, 7, 2}));
    for (int j = 0; j < 8; j++) EXPECT_EQ(q.values[size_t(16 + j)], 0);
    // 0.126 * 7 * 4 = 3.528 -> 4
    EXPECT_EQ(q.values[24], 4);
    expect_matches_reference(x, q);
}

TEST(Quantize, AllZeroTensorGivesZerosNotNaN) {
    Tensor x({3, 4, 5});
    for (const char *name : {"m3e0", "m3e0/g3/sample", "m1e2/g2/block2"}) {
        const QuantizedTensor q = quantize(x, parse_format(name), Rounding::stochastic, 5);
        EXPECT_EQ(q.scale, 0.0f);
        for (int8_t v : q.values) EXPECT_EQ(v, 0);
        const Tensor y = dequantize(q);
        for (int64_t k = 0; k < y.numel(); k++) EXPECT_EQ(y[k], 0.0f);
    }
}

TEST(Quantize, HugeDynamicRange) {
    // Groups from 1e-30 to 1e30: exponents up to 2^8 - 1 keep each group's relative error
    // at the format's, and nothing overflows or underflows.
    Tensor x({7, 64});
    const float magnitudes[] = {1e-30f, 1e-20f, 1e-10f, 1.0f, 1e10f, 1e20f, 1e30f};
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (int s = 0; s < 7; s++)
        for (int j = 0; j < 64; j++) x.at({s, j}) = magnitudes[s] * dist(rng);
    const Format f = parse_format("m7e0/g8/sample");
    const QuantizedTensor q = quantize(x, f);
    expect_matches_reference(x, q);
    const Tensor y = dequantize(q);
    for (int s = 0; s < 7; s++) {
        float group_max = 0;
        for (int j = 0; j < 64; j++) group_max = std::max(group_max, std::fabs(x.at({s, j})));
        for (int j = 0; j < 64; j++) {
            ASSERT_TRUE(std::isfinite(y.at({s, j})));
            // Half a step of a group whose max lands in [qmax/2, qmax] after its exponent.
            EXPECT_LE(std::fabs(y.at({s, j}) - x.at({s, j})), group_max / 127.0f) << s << " " << j;
        }
    }
}

TEST(Quantize, RejectsNaNInfAndWideFormats) {
    Tensor x({2, 3});
    x[4] = std::nanf("");
    try {
        quantize(x, parse_format("m3e0"));
        FAIL() << "NaN accepted";
    } catch (const std::invalid_argument &e) {
        EXPECT_NE(std::string(e.what()).find("flat index 4"), std::string::npos) << e.what();
    }
    x[4] = -INFINITY;
    EXPECT_THROW(quantize(x, parse_format("m3e0/g3/sample")), std::invalid_argument);
    EXPECT_THROW(quantize(x, parse_format("m3e0/g3/block2")), std::invalid_argument);
    x[4] = 1.0f;
    try {
        quantize(x, parse_format("m7e1"));  // qmax 508
        FAIL() << "qmax > 127 accepted";
    } catch (const std::invalid_argument &e) {
        EXPECT_NE(std::string(e.what()).find("qmax 508"), std::string::npos) << e.what();
    }
    // A rank-1 activation has no channel axis.
    EXPECT_THROW(quantize(Tensor({5}), parse_format("m3e0/g3/channel")), std::invalid_argument);
}

TEST(Dequantize, IsQTimesGroupScaleOverQmax) {
    const Tensor x = random_tensor({8, 6, 7}, 21, 3.0f);
    for (const char *name : {"m3e0/g3/sample", "m2e1/g2/block4", "m4e2"}) {
        const QuantizedTensor q = quantize(x, parse_format(name));
        const Tensor y = dequantize(q);
        for (int64_t k = 0; k < y.numel(); k++) {
            const double expected =
                double(q.values[size_t(k)]) * q.group_scale(q.view.group_of(k)) / double(q.format.qmax());
            ASSERT_EQ(y[k], float(expected)) << name << " element " << k;
        }
    }
}

// E[q] = u: the mean of 10^6 stochastic roundings of one value lies within 4 standard errors
// of u, at many u, on uniform and uneven (E > 0) grids; only the two neighbours come out.
TEST(StochasticRounding, IsUnbiasedAndStaysOnTheNeighbours) {
    constexpr int64_t n = 1000000;
    for (const char *name : {"m3e0", "m2e1", "m1e2", "m4e2", "m3e1d3", "um4e0", "um2e2"}) {
        const Format f = parse_format(name);
        const std::vector<int64_t> set = reference::representable(ref(f));
        const double qmax = double(f.qmax());
        for (double u : {0.1, 0.5, 0.97, 1.3, 2.5, 3.2, 3.7, 5.5, 6.01, -0.3, -2.75, -4.9, 0.4 * qmax, -0.77 * qmax}) {
            if (std::fabs(u) >= qmax) continue;
            SCOPED_TRACE(std::string(name) + " u=" + std::to_string(u));
            Tensor x({n + 1});
            const float v = float(u / qmax);
            for (int64_t k = 0; k < n; k++) x[k] = v;
            x[n] = 1.0f;  // S = 1
            const QuantizedTensor q = quantize(x, f, Rounding::stochastic, 1234, 7, 3);
            // An unsigned format has nothing below 0: negative values all go to 0.
            const long double exact_u = f.has_sign ? (long double)v * qmax : std::max((long double)v * qmax, 0.0L);
            int64_t lo, hi;
            reference::neighbours(exact_u, set, lo, hi);
            double sum = 0;
            for (int64_t k = 0; k < n; k++) {
                const int value = q.values[size_t(k)];
                ASSERT_TRUE(value == lo || value == hi) << value << " not in {" << lo << ", " << hi << "}";
                sum += value;
            }
            const double p = hi == lo ? 0.0 : double((exact_u - lo) / (hi - lo));
            const double standard_error = double(hi - lo) * std::sqrt(p * (1 - p) / n);
            EXPECT_LE(std::fabs(sum / n - double(exact_u)), 4 * standard_error + 1e-9);
        }
    }
}

// Draw for draw: each element's q is the neighbour of u (the reference's, on magnitudes) that
// method.md's rule picks with that element's random number r, the counter-based hash of its
// row-major index (format.h): hi when r (hi - lo) < (|u| - lo) 2^32. u is v qmax / (S 2^-e),
// correctly rounded in double as format.h defines it. Every int8 format, grouped per sample
// (the kernels give m1e2, the default error format, a loop of its own).
TEST(StochasticRounding, PicksTheNeighbourEachElementsDrawSelects) {
    const Tensor x = random_tensor({6, 5, 7, 9}, 23);
    constexpr uint64_t seed = 11, step = 12;
    constexpr uint32_t tensor_id = 13;
    const RandomKey key = random_key(seed, step, tensor_id);
    for (Format f : int8_formats_up_to_8_bits()) {
        f.group_bits = 3;
        f.axis = GroupAxis::sample;
        SCOPED_TRACE(to_string(f));
        const QuantizedTensor q = quantize(x, f, Rounding::stochastic, seed, step, tensor_id);
        const std::vector<int64_t> set = reference::representable(ref(f));
        int64_t went_up = 0, went_down = 0;
        for (int64_t k = 0; k < x.numel(); k++) {
            const int e = q.group_exponents[size_t(q.view.group_of(k))];
            double u = double(x[k]) * double(f.qmax()) / std::ldexp(double(q.scale), -e);
            if (!f.has_sign) u = std::max(u, 0.0);
            const double a = std::fabs(u);
            int64_t lo, hi;
            reference::neighbours(a, set, lo, hi);
            const uint32_t r = element_random<ScalarOps>(uint32_t(k), key.k0, key.k1);
            const bool up = double(r) * double(hi - lo) < (a - double(lo)) * 4294967296.0;
            const int64_t magnitude = up ? hi : lo;
            ASSERT_EQ(int64_t(q.values[size_t(k)]), u < 0 ? -magnitude : magnitude) << "element " << k << " u = " << u;
            if (hi != lo) (up ? went_up : went_down)++;
        }
        // Both outcomes occur, so the test sees the draw decide.
        EXPECT_GT(went_up, 100);
        EXPECT_GT(went_down, 100);
    }
}

TEST(StochasticRounding, DependsOnSeedStepAndTensorIdOnly) {
    const Tensor x = random_tensor({16, 8, 9}, 9);
    const Format f = parse_format("m2e1/g3/sample");
    const QuantizedTensor a = quantize(x, f, Rounding::stochastic, 1, 2, 3);
    EXPECT_EQ(a.values, quantize(x, f, Rounding::stochastic, 1, 2, 3).values);
    EXPECT_NE(a.values, quantize(x, f, Rounding::stochastic, 2, 2, 3).values);
    EXPECT_NE(a.values, quantize(x, f, Rounding::stochastic, 1, 3, 3).values);
    EXPECT_NE(a.values, quantize(x, f, Rounding::stochastic, 1, 2, 4).values);
}

// Bit-identical results with 1 and 2 threads and on every compiled variant this CPU runs,
// for every rounding and group structure.
TEST(Determinism, ThreadsAndVariantsGiveIdenticalResults) {
    DispatchGuard guard;
    const Tensor x = random_tensor({33, 7, 13, 11}, 17);
    const std::vector<Isa> isas = supported_isas();
    ASSERT_FALSE(isas.empty());
    std::cout << "variants this CPU runs:";
    for (Isa isa : isas) std::cout << " " << to_string(isa);
    std::cout << "\n";
    for (const char *name :
         {"m3e0", "m2e1/g3/sample", "m1e2/g2/channel", "m4e2/g4/block4", "m6e0/g3/block5", "um4e0/g3/sample"}) {
        for (Rounding r : {Rounding::nearest, Rounding::stochastic}) {
            SCOPED_TRACE(std::string(name) + " " + to_string(r));
            std::optional<QuantizedTensor> first;
            std::optional<Tensor> first_y;
            for (Isa isa : isas) {
                for (int threads : {1, 2}) {
                    force_isa(isa);
                    set_num_threads(threads);
                    const QuantizedTensor q = quantize(x, parse_format(name), r, 99, 1, 2);
                    const bool blocked = parse_format(name).axis == GroupAxis::block;
                    EXPECT_EQ(blocked ? kernels::quantize_values_block.last_isa() : kernels::quantize_values.last_isa(),
                              std::optional<Isa>(isa));
                    const Tensor y = dequantize(q);
                    if (!first) {
                        first = q;
                        first_y = y;
                        continue;
                    }
                    EXPECT_EQ(q.values, first->values) << to_string(isa) << " threads " << threads;
                    EXPECT_EQ(q.group_exponents, first->group_exponents);
                    EXPECT_EQ(q.scale, first->scale);
                    EXPECT_EQ(0, std::memcmp(y.data(), first_y->data(), y.numel() * sizeof(float)));
                }
            }
        }
    }
}

// A Halide error inside a kernel (here an output too small for the input) becomes a
// KernelError carrying Halide's own message, whichever thread hit it.
TEST(Dispatch, ReportsHalideErrorsWithTheirMessage) {
    std::vector<float> in(64, 1.0f);
    std::vector<uint8_t> e(4, 0);
    std::vector<int8_t> out(8, 0);
    Halide::Runtime::Buffer<const float> ib(in.data(), {4, 4, 4});
    Halide::Runtime::Buffer<uint8_t> eb(e.data(), {4});
    Halide::Runtime::Buffer<int8_t> ob(out.data(), {2, 4, 1});
    try {
        kernels::quantize_values(ib.raw_buffer(), eb.raw_buffer(), 1.0f, 7, 0, 0, 7, true, false, 0u, 0u,
                                 ob.raw_buffer());
        // Halide computes only the output's region, so a smaller output is legal: check it ran.
        EXPECT_TRUE(kernels::quantize_values.last_isa().has_value());
    } catch (const KernelError &) {
        ADD_FAILURE() << "a smaller output is a valid request";
    }
    Halide::Runtime::Buffer<int8_t> too_big(out.data(), {8, 1, 1});
    Halide::Runtime::Buffer<const float> small(in.data(), {4, 1, 1});
    try {
        kernels::quantize_values(small.raw_buffer(), eb.raw_buffer(), 1.0f, 7, 0, 0, 7, true, false, 0u, 0u,
                                 too_big.raw_buffer());
        FAIL() << "an input smaller than the output was accepted";
    } catch (const KernelError &err) {
        EXPECT_NE(std::string(err.what()).find("input"), std::string::npos) << err.what();
        EXPECT_NE(std::string(err.what()).find("quantize_values"), std::string::npos) << err.what();
    }
}

}  // namespace
}  // namespace lowbit

// The convolution kernels (runtime/conv.h over the AOT kernels) against the float64
// references of tests/reference/conv_reference.h on dequantized operands: every pass, K in
// {1, 3, 5, 7}, strides 1 and 2, prime channel counts, every group axis, 2- to 8-bit
// formats; exact integer sums; identical results on every compiled variant; no overflow at
// the longest reductions of ResNet-56 at batch 256.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <HalideBuffer.h>

#include "conv.h"
#include "conv_backward_data_channels_32_variants.h"
#include "conv_backward_data_channels_64_variants.h"
#include "conv_backward_data_dot4_variants.h"
#include "conv_backward_data_float_channels_32_variants.h"
#include "conv_backward_data_float_channels_64_variants.h"
#include "conv_backward_data_narrow_variants.h"
#include "conv_backward_data_variants.h"
#include "conv_backward_data_wide_variants.h"
#include "conv_backward_weight_float_3x3_16_variants.h"
#include "conv_backward_weight_float_3x3_32_variants.h"
#include "conv_backward_weight_float_taps_variants.h"
#include "conv_backward_weight_float_variants.h"
#include "conv_backward_weight_unsigned_16_variants.h"
#include "conv_backward_weight_unsigned_16_wide_variants.h"
#include "conv_backward_weight_unsigned_64_variants.h"
#include "conv_backward_weight_unsigned_variants.h"
#include "conv_backward_weight_variants.h"
#include "conv_forward_dot4_variants.h"
#include "conv_forward_float_channels_32_variants.h"
#include "conv_forward_float_channels_64_variants.h"
#include "conv_forward_float_variants.h"
#include "conv_forward_unsigned_channels_32_variants.h"
#include "conv_forward_unsigned_channels_64_variants.h"
#include "conv_forward_unsigned_variants.h"
#include "conv_forward_unsigned_wide_variants.h"
#include "conv_forward_variants.h"
#include "dispatch.h"
#include "reference/conv_reference.h"

namespace lowbit {
namespace {

using reference::ConvShape;

Tensor random_tensor(const Shape &shape, uint32_t seed, bool non_negative = false) {
    Tensor t(shape);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (int64_t k = 0; k < t.numel(); k++) {
        const float v = dist(rng);
        t[k] = non_negative ? std::max(v, 0.0f) : v;
    }
    // Groups of different magnitudes, so group exponents differ.
    for (int64_t k = 0; k < t.numel(); k++) t[k] *= std::ldexp(1.0f, -int((k * 7919) % 5));
    return t;
}

// The value each element stands for, in double: q * S * 2^-e / qmax.
std::vector<double> dequantized(const QuantizedTensor &q) {
    std::vector<double> v(size_t(q.numel()));
    for (int64_t k = 0; k < q.numel(); k++) {
        v[size_t(k)] = double(q.values[size_t(k)]) * q.group_scale(q.view.group_of(k)) / double(q.format.qmax());
    }
    return v;
}

std::vector<double> as_double(const Tensor &t) { return std::vector<double>(t.data(), t.data() + t.numel()); }

std::vector<double> absolute(std::vector<double> v) {
    for (double &x : v) x = std::fabs(x);
    return v;
}

// |y - ref| <= tolerance * conv(|a|, |b|): the error bound of a sum of products whose terms are
// each off by at most `tolerance` relative (classic forward error of a dot product).
void expect_close(const Tensor &y, const std::vector<double> &ref, const std::vector<double> &ref_abs, double tolerance,
                  const std::string &what) {
    ASSERT_EQ(size_t(y.numel()), ref.size()) << what;
    int reported = 0;
    for (size_t k = 0; k < ref.size(); k++) {
        const double bound = tolerance * ref_abs[k] + 1e-37;
        if (!(std::fabs(double(y[int64_t(k)]) - ref[k]) <= bound) && reported++ < 5) {
            ADD_FAILURE() << what << " element " << k << ": got " << y[int64_t(k)] << ", reference " << ref[k]
                          << " (bound " << bound << ")";
        }
    }
}

using Halide::Runtime::Buffer;

// A kernel's view of an NCHW / OIHW array: innermost first.
template <class T>
Buffer<T> nchw(T *data, const Shape &s) {
    return Buffer<T>(data, {int(s[3]), int(s[2]), int(s[1]), int(s[0])});
}

struct Case {
    ConvShape shape;
    const char *a_format, *w_format, *e_format;
};

ConvShape make_shape(int64_t N, int64_t C, int64_t HW, int64_t O, int64_t K, int64_t stride) {
    return {N, C, HW, HW + 1, O, K, stride, K / 2};
}

// A layer's shape for test traces: "N2 C37 O40 K3 s1 H9".
std::string shape_name(const ConvShape &s) {
    return "N" + std::to_string(s.N) + " C" + std::to_string(s.C) + " O" + std::to_string(s.O) + " K" +
           std::to_string(s.K) + " s" + std::to_string(s.stride) + " H" + std::to_string(s.H);
}

// Random shapes with prime-stepped channel counts, every K and both strides.
std::vector<ConvShape> shapes() {
    std::vector<ConvShape> s;
    const int64_t channels[] = {1, 2, 3, 5, 7, 11, 13, 17};
    int i = 0;
    for (int64_t K : {1, 3, 5, 7}) {
        for (int64_t stride : {1, 2}) {
            const int64_t C = channels[i % 8], O = channels[(i + 3) % 8];
            s.push_back(make_shape(1 + i % 3, C, K + 2 + i % 4, O, K, stride));
            i++;
        }
    }
    return s;
}

// Runs all three integer passes of one layer and checks each against the reference.
void check_integer_layer(const ConvShape &s, const std::string &a_format, const std::string &w_format,
                         const std::string &e_format, uint32_t seed) {
    SCOPED_TRACE(a_format + " " + w_format + " " + e_format + " " + shape_name(s));
    const ConvGeometry g{int(s.stride), int(s.pad)};
    const Shape a_shape = {s.N, s.C, s.H, s.W}, w_shape = {s.O, s.C, s.K, s.K};
    const Shape e_shape = {s.N, s.O, s.out_h(), s.out_w()};
    const QuantizedTensor a = quantize(random_tensor(a_shape, seed, true), parse_format(a_format), Rounding::nearest, 0,
                                       0, 0, TensorRole::activation);
    const QuantizedTensor w = quantize(random_tensor(w_shape, seed + 1), parse_format(w_format), Rounding::nearest, 0,
                                       0, 1, TensorRole::weight);
    const QuantizedTensor e = quantize(random_tensor(e_shape, seed + 2), parse_format(e_format), Rounding::stochastic,
                                       7, 0, 2, TensorRole::error);
    const std::vector<double> av = dequantized(a), wv = dequantized(w), ev = dequantized(e);
    // Integer sums are exact; what remains is the double and float rounding of the scaling
    // and, where an operand is split into exponent classes, of adding the classes' outputs.
    const double tolerance = 1e-6;
    expect_close(conv_forward(a, w, g), reference::conv_forward(s, av, wv),
                 reference::conv_forward(s, absolute(av), absolute(wv)), tolerance, "forward");
    expect_close(conv_backward_data(e, w, a_shape, g), reference::conv_backward_data(s, ev, wv),
                 reference::conv_backward_data(s, absolute(ev), absolute(wv)), tolerance, "backward-data");
    expect_close(conv_backward_weight(e, a, int(s.K), g), reference::conv_backward_weight(s, ev, av),
                 reference::conv_backward_weight(s, absolute(ev), absolute(av)), tolerance, "backward-weight");
}

TEST(IntegerConv, EveryKernelSizeAndStrideAgainstFloat64Reference) {
    uint32_t seed = 1;
    for (const ConvShape &s : shapes()) {
        check_integer_layer(s, "m3e0/g3/sample", "m3e0/g3/channel", "m3e0/g3/sample", seed++);
    }
    // Backward-data ran as narrow sums (except where the 4-term VNNI kernel runs instead).
    if (best_isa() != Isa::avx512_vnni) ASSERT_TRUE(kernels::conv_backward_data_narrow.last_isa().has_value());
}

// Stride-2 backward-data computes its four phases in one call, the column phases interleaved
// in the kernels' vector loops (runtime/conv.cpp, interleave_phases). The shapes above are
// narrower than a vector of either column phase; these rows hold several (33 and 34 columns,
// 13 and 12 rows: odd sizes end on phase 0), against the float64 reference through each
// kernel that runs them: narrow sums (4 bits), int16 pairs (8 bits, whose products are too
// wide for int16 sums; or the 4-term kernel on VNNI) and float32. Paddings other than K / 2
// (none, K - 1) shift the phases' windows against each other.
TEST(IntegerConv, StridedBackwardDataInterleavesPhases) {
    uint32_t seed = 90;
    for (int64_t K : {3, 5}) {
        for (int64_t W : {33, 34}) {
            const int64_t pad = W == 33 ? K / 2 : (K == 3 ? 0 : K - 1);
            const ConvShape s{2, 5, W - 20, W, 7, K, 2, pad};
            const ConvGeometry g{2, int(pad)};
            const Shape a_shape = {s.N, s.C, s.H, s.W}, w_shape = {s.O, s.C, K, K};
            const Shape e_shape = {s.N, s.O, s.out_h(), s.out_w()};
            SCOPED_TRACE("K" + std::to_string(K) + " W" + std::to_string(W) + " pad" + std::to_string(pad));
            const Tensor w = random_tensor(w_shape, seed++), e = random_tensor(e_shape, seed++);
            const auto wv = as_double(w), ev = as_double(e);
            expect_close(conv_backward_data(e, w, a_shape, g), reference::conv_backward_data(s, ev, wv),
                         reference::conv_backward_data(s, absolute(ev), absolute(wv)), 1e-5, "float32");
            for (const char *bits : {"m3e0", "m7e0"}) {
                const std::string format = bits + std::string("/g3/");
                const QuantizedTensor qw =
                    quantize(w, parse_format(format + "channel"), Rounding::nearest, 0, 0, 1, TensorRole::weight);
                const QuantizedTensor qe =
                    quantize(e, parse_format(format + "sample"), Rounding::stochastic, 7, 0, 2, TensorRole::error);
                const auto qwv = dequantized(qw), qev = dequantized(qe);
                const uint64_t narrow_before = kernels::conv_backward_data_narrow.calls();
                expect_close(conv_backward_data(qe, qw, a_shape, g), reference::conv_backward_data(s, qev, qwv),
                             reference::conv_backward_data(s, absolute(qev), absolute(qwv)), 1e-6, bits);
                const bool narrow = kernels::conv_backward_data_narrow.calls() > narrow_before;
                if (best_isa() != Isa::avx512_vnni) EXPECT_EQ(narrow, bits[1] == '3') << bits;
            }
        }
    }
}

// conv_backward_data_add adds dA into the gradient there in the kernels' store (a residual
// block's two paths): bit for bit that gradient plus conv_backward_data's result, for every
// way backward-data runs: stride 1, merged stride-2 phases, a 1x1 stride-2 layer (a strided
// view of dA, no zero fill), the narrow (4-bit), pair (8-bit) and float32 kernels, lanes
// along channels (37 input channels, on full-width AVX-512 VNNI), and errors grouped along
// the reduction (exponent classes summed on the host).
TEST(IntegerConv, BackwardDataAddsIntoTheGradient) {
    uint32_t seed = 300;
    struct Case {
        int64_t C, K, stride, pad;
    };
    int narrow_runs = 0, pair_runs = 0;
    for (const Case c : {Case{5, 3, 1, 1}, Case{5, 3, 2, 1}, Case{5, 1, 2, 0}, Case{37, 3, 1, 1}}) {
        const ConvShape s{2, c.C, 11, 10, 7, c.K, c.stride, c.pad};
        const ConvGeometry g{int(c.stride), int(c.pad)};
        const Shape a_shape = {s.N, s.C, s.H, s.W}, w_shape = {s.O, s.C, c.K, c.K};
        const Shape e_shape = {s.N, s.O, s.out_h(), s.out_w()};
        SCOPED_TRACE("K" + std::to_string(c.K) + " stride " + std::to_string(c.stride));
        const Tensor w = random_tensor(w_shape, seed++), e = random_tensor(e_shape, seed++);
        const Tensor before = random_tensor(a_shape, seed++);
        auto expect_added = [&](const Tensor &alone, const Tensor &added, const std::string &what) {
            for (int64_t k = 0; k < before.numel(); k++) {
                ASSERT_EQ(added[k], before[k] + alone[k]) << what << " element " << k;
            }
        };
        Tensor into = before.clone();
        conv_backward_data_add(e, w, g, into);
        expect_added(conv_backward_data(e, w, a_shape, g), into, "float32");
        for (const char *formats : {"m3e0/g3/sample", "m7e0/g3/sample", "m3e0/g3/channel"}) {
            const QuantizedTensor qw =
                quantize(w, parse_format("m3e0/g3/channel"), Rounding::nearest, 0, 0, 1, TensorRole::weight);
            const QuantizedTensor qe =
                quantize(e, parse_format(formats), Rounding::stochastic, 7, 0, 2, TensorRole::error);
            into = before.clone();
            const uint64_t narrow_before = kernels::conv_backward_data_narrow.calls();
            conv_backward_data_add(qe, qw, g, into);
            (kernels::conv_backward_data_narrow.calls() > narrow_before ? narrow_runs : pair_runs)++;
            expect_added(conv_backward_data(qe, qw, a_shape, g), into, formats);
        }
    }
    // Both integer kernels added (the 4-term one replaces both on VNNI).
    if (best_isa() != Isa::avx512_vnni) {
        EXPECT_GT(narrow_runs, 0);
        EXPECT_GT(pair_runs, 0);
    }
    // The gradient must be one dense block, of the input's shape.
    const Tensor w = random_tensor({7, 5, 3, 3}, seed++), e = random_tensor({2, 7, 6, 6}, seed++);
    Tensor wide = random_tensor({2, 5, 6, 12}, seed++);
    Tensor strided = Tensor::wrap(wide.data(), {2, 5, 6, 6}, {360, 72, 12, 2});
    EXPECT_THROW(conv_backward_data_add(e, w, {1, 1}, strided), std::invalid_argument);
    Tensor wrong = random_tensor({2, 5, 6, 7}, seed++);
    EXPECT_THROW(conv_backward_data_add(e, w, {1, 1}, wrong), std::invalid_argument);
}

// Unsigned activations (as after a ReLU) run forward and weight gradient through the
// *_unsigned kernels: uint8 x int8 products summed in int16 chunks on AVX2 (checked to have
// run).
TEST(IntegerConv, UnsignedInputsAgainstFloat64Reference) {
    uint32_t seed = 200;
    for (const ConvShape &s : shapes()) {
        check_integer_layer(s, "um4e0/g3/sample", "m3e0/g3/channel", "m1e2/g3/sample", seed++);
    }
    // 7-bit inputs: the int16 sums fit only two groups of 4 channels (a chunk of 2, the last
    // one partial at 5 groups); 8-bit weights: not even one (the signed kernel runs).
    const ConvShape wide = make_shape(2, 19, 7, 6, 3, 1);
    check_integer_layer(wide, "um7e0/g3/sample", "m3e0/g3/channel", "m3e0/g3/sample", seed++);
    check_integer_layer(wide, "um7e0/g3/sample", "m7e0/g3/channel", "m3e0/g3/sample", seed++);
    for (const char *a : {"um1e0", "um2e1/g2/sample", "um3e0/g3/channel", "um2e0/g2/block4"}) {
        check_integer_layer(make_shape(3, 9, 6, 5, 3, 2), a, "m2e1/g3/channel", "m1e2/g3/sample", seed++);
    }
    ASSERT_TRUE(kernels::conv_forward_unsigned.last_isa().has_value());
    // On VNNI, layers of fewer than 32 output channels take a weight-gradient kernel tiled by
    // 16 (2 ymm, or 1 zmm on full-width AVX-512), the others the main one: one of each (a
    // partial last tile of either).
    auto tiled_calls = [] {
        return kernels::conv_backward_weight_unsigned_16.calls() +
               kernels::conv_backward_weight_unsigned_16_wide.calls();
    };
    const uint64_t tiled_before = tiled_calls();
    check_integer_layer(make_shape(2, 6, 6, 37, 3, 1), "um4e0/g3/sample", "m3e0/g3/channel", "m1e2/g3/sample", seed++);
    ASSERT_TRUE(kernels::conv_backward_weight_unsigned.last_isa().has_value());
    if (kernels::conv_backward_weight_unsigned.selected_isa() == Isa::avx512_vnni) {
        EXPECT_EQ(tiled_calls(), tiled_before);
        EXPECT_GT(tiled_before, 0u);
    }
}

// On full-width AVX-512 VNNI, stride-1 layers on wide maps take the 16-lane kernels
// (runtime/conv.cpp: forward outputs at least 32 wide through conv_forward_unsigned_wide,
// backward-data results at least 16 wide through conv_backward_data_wide), forward layers of
// 32 or more output channels and windows over 1x1 the kernels with lanes along output
// channels (conv_forward_unsigned_channels_32 and _64, either stride; backward-data of 32 or
// more output channels, a stride-2 layer's 4 phases counted where its channels are whole vectors of 16,
// conv_backward_data_channels_*), and weight
// gradients of fewer than 32 output channels (all of these) conv_backward_weight_unsigned_16_wide
// instead of conv_backward_weight_unsigned_16, those of stride 1 and 64 or more conv_backward_weight_unsigned_64 (the
// others keep conv_backward_weight_unsigned). Forced on and off in turn: each against the float64 reference, and the
// two bit-identical (the same exact integer sums, scaled the same way). Partial tiles of lanes, rows and channels;
// activations grouped per sample and per channel (shifted weights); one shape of each too narrow or strided, which must
// keep the main forward and backward-data kernels.
TEST(IntegerConv, WideTilesAgreeWithTheMainTiles) {
    if (kernels::conv_forward_unsigned.selected_isa() != Isa::avx512_vnni)
        GTEST_SKIP() << "the wide kernels are built for AVX-512 VNNI only";
    uint32_t seed = 500;
    const std::vector<ConvShape> layers = {
        make_shape(2, 7, 34, 5, 3, 1),   make_shape(1, 9, 33, 19, 1, 1), make_shape(2, 6, 16, 9, 5, 1),
        make_shape(1, 5, 14, 6, 3, 1),   make_shape(2, 6, 40, 9, 3, 2),  make_shape(2, 7, 9, 37, 3, 1),
        make_shape(1, 5, 13, 67, 3, 2),  make_shape(1, 6, 33, 64, 5, 1), make_shape(1, 9, 12, 40, 1, 1),
        make_shape(2, 9, 13, 11, 3, 2),  make_shape(1, 17, 10, 7, 3, 2), make_shape(1, 12, 11, 6, 5, 2),
        make_shape(2, 11, 10, 66, 3, 1), make_shape(1, 16, 9, 7, 3, 2),  make_shape(2, 32, 8, 11, 3, 2),
        make_shape(1, 16, 11, 5, 5, 2)};
    for (const ConvShape &s : layers) {
        for (const char *a_format : {"um4e0/g3/sample", "um3e0/g3/channel"}) {
            SCOPED_TRACE(std::string(a_format) + " " + shape_name(s));
            const ConvGeometry g{int(s.stride), int(s.pad)};
            const Shape a_shape = {s.N, s.C, s.H, s.W}, w_shape = {s.O, s.C, s.K, s.K};
            const QuantizedTensor a = quantize(random_tensor(a_shape, seed++, true), parse_format(a_format),
                                               Rounding::nearest, 0, 0, 0, TensorRole::activation);
            const QuantizedTensor w = quantize(random_tensor(w_shape, seed++), parse_format("m3e0/g3/channel"),
                                               Rounding::nearest, 0, 0, 1, TensorRole::weight);
            const QuantizedTensor e =
                quantize(random_tensor({s.N, s.O, s.out_h(), s.out_w()}, seed++), parse_format("m1e2/g3/sample"),
                         Rounding::stochastic, 7, 0, 2, TensorRole::error);
            const std::vector<double> av = dequantized(a), wv = dequantized(w), ev = dequantized(e);
            std::vector<Tensor> forward, backward_data, backward_weight;
            for (bool full_width : {true, false}) {
                force_full_width_avx512(full_width);
                const uint64_t data_lanes_32_before = kernels::conv_backward_data_channels_32.calls(),
                               data_lanes_64_before = kernels::conv_backward_data_channels_64.calls(),
                               lanes_32_before = kernels::conv_forward_unsigned_channels_32.calls(),
                               lanes_64_before = kernels::conv_forward_unsigned_channels_64.calls(),
                               forward_before = kernels::conv_forward_unsigned_wide.calls(),
                               data_before = kernels::conv_backward_data_wide.calls(),
                               weight_before = kernels::conv_backward_weight_unsigned_16_wide.calls(),
                               weight_64_before = kernels::conv_backward_weight_unsigned_64.calls();
                forward.push_back(conv_forward(a, w, g));
                backward_data.push_back(conv_backward_data(e, w, a_shape, g));
                backward_weight.push_back(conv_backward_weight(e, a, int(s.K), g));
                expect_close(backward_weight.back(), reference::conv_backward_weight(s, ev, av),
                             reference::conv_backward_weight(s, absolute(ev), absolute(av)), 1e-6, "backward-weight");
                EXPECT_EQ(kernels::conv_backward_weight_unsigned_16_wide.calls() > weight_before,
                          full_width && s.O < 32)
                    << "backward-weight wide, full width " << full_width;
                EXPECT_EQ(kernels::conv_backward_weight_unsigned_64.calls() > weight_64_before,
                          full_width && s.O >= 64 && s.stride == 1)
                    << "backward-weight 64 channels, full width " << full_width;
                expect_close(forward.back(), reference::conv_forward(s, av, wv),
                             reference::conv_forward(s, absolute(av), absolute(wv)), 1e-6, "forward");
                expect_close(backward_data.back(), reference::conv_backward_data(s, ev, wv),
                             reference::conv_backward_data(s, absolute(ev), absolute(wv)), 1e-6, "backward-data");
                const bool channel_lanes = full_width && s.K > 1 && s.O >= 32;
                EXPECT_EQ(kernels::conv_forward_unsigned_channels_32.calls() > lanes_32_before,
                          channel_lanes && s.O < 64)
                    << "forward, 32 channel lanes, full width " << full_width;
                EXPECT_EQ(kernels::conv_forward_unsigned_channels_64.calls() > lanes_64_before,
                          channel_lanes && s.O >= 64)
                    << "forward, 64 channel lanes, full width " << full_width;
                EXPECT_EQ(kernels::conv_forward_unsigned_wide.calls() > forward_before,
                          full_width && !channel_lanes && s.stride == 1 && s.out_w() >= 32)
                    << "forward wide, full width " << full_width;
                // Backward-data's output channels, a strided layer's phases merged (in whole
                // vectors of one phase: 16 channels).
                const int64_t merged = s.C * s.stride * s.stride;
                const bool data_lanes = full_width && s.K > 1 && merged >= 32 && (s.stride == 1 || s.C % 16 == 0);
                EXPECT_EQ(kernels::conv_backward_data_channels_32.calls() > data_lanes_32_before,
                          data_lanes && merged < 64)
                    << "backward-data, 32 channel lanes, full width " << full_width;
                EXPECT_EQ(kernels::conv_backward_data_channels_64.calls() > data_lanes_64_before,
                          data_lanes && merged >= 64)
                    << "backward-data, 64 channel lanes, full width " << full_width;
                EXPECT_EQ(kernels::conv_backward_data_wide.calls() > data_before,
                          full_width && !data_lanes && s.stride == 1 && s.W >= 16)
                    << "backward-data wide, full width " << full_width;
            }
            EXPECT_EQ(0, std::memcmp(forward[0].data(), forward[1].data(), size_t(forward[0].numel()) * sizeof(float)))
                << "forward";
            EXPECT_EQ(0, std::memcmp(backward_data[0].data(), backward_data[1].data(),
                                     size_t(backward_data[0].numel()) * sizeof(float)))
                << "backward-data";
            EXPECT_EQ(0, std::memcmp(backward_weight[0].data(), backward_weight[1].data(),
                                     size_t(backward_weight[0].numel()) * sizeof(float)))
                << "backward-weight";
        }
    }
    force_full_width_avx512(std::nullopt);
}

TEST(IntegerConv, EveryGroupAxisAndFormat) {
    const ConvShape s = make_shape(3, 7, 6, 5, 3, 1);
    const ConvShape s2 = make_shape(2, 6, 7, 4, 3, 2);
    uint32_t seed = 100;
    for (const char *group : {"", "/g3/sample", "/g3/channel", "/g2/block2", "/g3/block4"}) {
        for (const char *element : {"m1e0", "m2e1", "m1e2", "m3e0", "m4e2", "m7e0"}) {
            const std::string f = std::string(element) + group;
            check_integer_layer(s, f, f, f, seed++);
        }
        check_integer_layer(s2, std::string("m3e0") + group, std::string("m2e1") + group, std::string("m1e2") + group,
                            seed++);
    }
}

// The kernel calls a layer made, against the expected count or, for kExponentClasses, more
// than one (one pass per exponent class of an operand).
constexpr int64_t kExponentClasses = -1;
void expect_kernel_calls(int64_t calls, int64_t expected, const char *kernel) {
    if (expected == kExponentClasses) {
        EXPECT_GT(calls, 1) << kernel;
    } else {
        EXPECT_EQ(calls, expected) << kernel;
    }
}

// Backward-data reduces over the weights' output channels, whose group exponents become left
// shifts of the weights (one pass) where the kernel that runs holds the shifted weights, and
// exponent classes (a pass each) where it does not: int16 on AVX2 and baseline (pairs, or
// uint8 after an offset for narrow sums), int8 on AVX-512 VNNI (offset by +128 to uint8).
// Each variant the CPU runs, against the float64 reference, with channel magnitudes spread
// over 2^0 to 2^-spread: 3-bit weights shifted by up to 4 (int8 everywhere) and 5 (past int8),
// 8-bit ones with 4-bit group exponents by up to 5 (int16) and 11 (past int16). One channel is
// all zero: its exponent (2^G - 1, 15 at G = 4) must not widen the shifts. The kernel calls
// show which path ran.
TEST(IntegerConv, BackwardDataWithWeightGroupsSpreadAlongTheReduction) {
    constexpr int64_t classes = kExponentClasses;
    struct Spread {
        const char *w_format;
        int spread;
        int64_t pairs_calls, four_term_calls;  // AVX2 / baseline, AVX-512 VNNI
    };
    const std::vector<Spread> spreads = {{"m3e0/g3/channel", 4, 1, 1},
                                         {"m3e0/g3/channel", 5, 1, classes},
                                         {"m7e0/g4/channel", 5, 1, classes},
                                         {"m7e0/g4/channel", 11, classes, classes}};
    const ConvShape s = make_shape(3, 5, 7, 13, 3, 2);
    const int64_t zero_channel = 3;
    for (Isa isa : supported_isas()) {
        force_isa(isa);
        for (const Spread &c : spreads) {
            SCOPED_TRACE(std::string(to_string(isa)) + " " + c.w_format + " spread " + std::to_string(c.spread));
            const ConvGeometry g{int(s.stride), int(s.pad)};
            const Shape w_shape = {s.O, s.C, s.K, s.K}, e_shape = {s.N, s.O, s.out_h(), s.out_w()};
            Tensor w_float = random_tensor(w_shape, 31);
            const int64_t per_channel = s.C * s.K * s.K;
            std::fill(w_float.data() + zero_channel * per_channel, w_float.data() + (zero_channel + 1) * per_channel,
                      0.0f);
            // Channel o's largest magnitude exactly 2^-(o mod (spread + 1)): its group exponent.
            for (int64_t o = 0; o < s.O; o++) {
                float *channel = w_float.data() + o * per_channel;
                const float largest = std::abs(*std::max_element(
                    channel, channel + per_channel, [](float x, float y) { return std::abs(x) < std::abs(y); }));
                if (largest == 0) continue;
                for (int64_t k = 0; k < per_channel; k++)
                    channel[k] = std::ldexp(channel[k] / largest, -int(o % (c.spread + 1)));
            }
            const QuantizedTensor w =
                quantize(w_float, parse_format(c.w_format), Rounding::nearest, 0, 0, 1, TensorRole::weight);
            const QuantizedTensor e = quantize(random_tensor(e_shape, 32), parse_format("m3e0/g3/sample"),
                                               Rounding::stochastic, 7, 0, 2, TensorRole::error);
            // The groups differ by exactly the spread (the kernel calls depend on it).
            std::vector<uint8_t> used = w.group_exponents;
            used.erase(used.begin() + zero_channel);
            const auto [lowest, highest] = std::minmax_element(used.begin(), used.end());
            EXPECT_EQ(*highest - *lowest, c.spread);
            const std::vector<double> wv = dequantized(w), ev = dequantized(e);
            const uint64_t before = kernels::conv_backward_data.calls() + kernels::conv_backward_data_narrow.calls();
            expect_close(conv_backward_data(e, w, {s.N, s.C, s.H, s.W}, g), reference::conv_backward_data(s, ev, wv),
                         reference::conv_backward_data(s, absolute(ev), absolute(wv)), 1e-6, "backward-data");
            const int64_t calls =
                int64_t(kernels::conv_backward_data.calls() + kernels::conv_backward_data_narrow.calls() - before);
            expect_kernel_calls(calls, isa == Isa::avx512_vnni ? c.four_term_calls : c.pairs_calls, "backward-data");
        }
    }
    force_isa(std::nullopt);
}

// Forward reduces over the input's channels: activations grouped per channel become one pass
// on weights shifted per input channel where the kernel that runs holds the shifted weights,
// and exponent classes (a pass each) where it does not. AVX2 and baseline: the uint8 kernel
// where they fit int8 (shifts up to 4 with 3-bit weights), the int16-pair kernel where they
// fit int16; AVX-512 VNNI: the uint8 or the 4-term signed kernel (weights offset to uint8),
// both where they fit int8. 8-bit weights shifted by up to 11 fit nowhere. Each variant the
// CPU runs, against the float64 reference, with channel magnitudes spread over 2^0 to
// 2^-spread and one all-zero channel (a ReLU-silenced one: the cap exponent, which must not
// widen the shifts). The kernel calls show which path ran.
TEST(IntegerConv, ForwardWithActivationGroupsSpreadAlongTheReduction) {
    constexpr int64_t classes = kExponentClasses;
    struct Calls {
        int64_t unsigned_kernel, signed_kernel;
    };
    struct Spread {
        const char *a_format, *w_format;
        int spread;
        Calls pairs, four_term;  // expected calls on AVX2 / baseline and on AVX-512 VNNI
    };
    const ConvShape s = make_shape(3, 9, 7, 5, 3, 1);
    const std::vector<Spread> spreads = {{"um4e0/g3/channel", "m3e0/g3/channel", 3, {1, 0}, {1, 0}},
                                         {"um4e0/g3/channel", "m3e0/g3/channel", 6, {0, 1}, {classes, 0}},
                                         {"m3e0/g3/channel", "m3e0/g3/channel", 4, {0, 1}, {0, 1}},
                                         {"m3e0/g3/channel", "m3e0/g3/channel", 5, {0, 1}, {0, classes}},
                                         {"m7e0/g4/channel", "m7e0/g3/channel", 11, {0, classes}, {0, classes}}};
    for (Isa isa : supported_isas()) {
        force_isa(isa);
        for (const Spread &c : spreads) {
            SCOPED_TRACE(std::string(to_string(isa)) + " " + c.a_format + " spread " + std::to_string(c.spread));
            const ConvGeometry g{int(s.stride), int(s.pad)};
            const Shape a_shape = {s.N, s.C, s.H, s.W}, w_shape = {s.O, s.C, s.K, s.K};
            const Format a_format = parse_format(c.a_format);
            Tensor a_float = random_tensor(a_shape, 41, !a_format.has_sign);
            const int64_t plane = s.H * s.W;
            for (int64_t k = 0; k < a_float.numel(); k++) {
                const int64_t channel = (k / plane) % s.C;
                a_float[k] = channel == 4 ? 0.0f : std::ldexp(a_float[k], -int(channel * c.spread / (s.C - 1)));
            }
            const QuantizedTensor a = quantize(a_float, a_format, Rounding::nearest, 0, 0, 0, TensorRole::activation);
            const QuantizedTensor w = quantize(random_tensor(w_shape, 42), parse_format(c.w_format), Rounding::nearest,
                                               0, 0, 1, TensorRole::weight);
            // The groups differ by exactly the spread (the kernel calls depend on it).
            std::vector<uint8_t> used;
            for (int64_t ch = 0; ch < s.C; ch++)
                if (ch != 4) used.push_back(a.group_exponents[size_t(ch)]);
            const auto [lowest, highest] = std::minmax_element(used.begin(), used.end());
            EXPECT_EQ(*highest - *lowest, c.spread);
            const std::vector<double> av = dequantized(a), wv = dequantized(w);
            const int64_t unsigned_before = int64_t(kernels::conv_forward_unsigned.calls()),
                          signed_before = int64_t(kernels::conv_forward.calls());
            expect_close(conv_forward(a, w, g), reference::conv_forward(s, av, wv),
                         reference::conv_forward(s, absolute(av), absolute(wv)), 1e-6, "forward");
            const Calls expected = isa == Isa::avx512_vnni ? c.four_term : c.pairs;
            expect_kernel_calls(int64_t(kernels::conv_forward_unsigned.calls()) - unsigned_before,
                                expected.unsigned_kernel, "unsigned");
            expect_kernel_calls(int64_t(kernels::conv_forward.calls()) - signed_before, expected.signed_kernel,
                                "signed");
        }
    }
    force_isa(std::nullopt);
}

TEST(IntegerConv, BatchOf128) {
    check_integer_layer(make_shape(128, 3, 6, 5, 3, 1), "m3e0/g3/sample", "m3e0/g3/channel", "m3e0/g3/sample", 9);
}

// Where no group varies along the reduction, the output is exactly the integer sum times the
// two scales, rounded once: compare bit for bit against int64 sums of the element values.
TEST(IntegerConv, ForwardIsExactIntegerSumTimesScales) {
    const ConvShape s = make_shape(4, 13, 9, 11, 3, 1);
    const ConvGeometry g{1, 1};
    const QuantizedTensor a = quantize(random_tensor({s.N, s.C, s.H, s.W}, 3, true), parse_format("m7e0/g4/sample"));
    const QuantizedTensor w = quantize(random_tensor({s.O, s.C, s.K, s.K}, 4), parse_format("m7e0/g4/channel"),
                                       Rounding::nearest, 0, 0, 0, TensorRole::weight);
    std::vector<double> aq(a.values.begin(), a.values.end()), wq(w.values.begin(), w.values.end());
    const std::vector<double> acc = reference::conv_forward(s, aq, wq);  // integers, exact in double
    const Tensor y = conv_forward(a, w, g);
    const int64_t plane = s.out_h() * s.out_w();
    for (int64_t k = 0; k < y.numel(); k++) {
        const int64_t n = k / (s.O * plane), o = (k / plane) % s.O;
        const double sa = group_scale(a.scale, a.group_exponents[size_t(n)]) / double(a.format.qmax());
        const double sw = group_scale(w.scale, w.group_exponents[size_t(o)]) / double(w.format.qmax());
        ASSERT_EQ(y[k], float(acc[size_t(k)] * sa * sw)) << "element " << k;
    }
}

// Double-width deployment (method.md section 5): a 2b-bit operand q = 2^b q_hi + q_lo (q_hi
// signed, q_lo unsigned, b bits each) convolves as 2^b conv(q_hi) + conv(q_lo), two passes of
// a b-bit multiplier. With unit scales the kernels' outputs are their integer sums, so the
// identity must hold exactly: for 8-bit weights and 8-bit activations split into 4-bit halves,
// at both strides.
TEST(IntegerConv, DoubleWidthIsTwoPassesOfHalfWidthOperands) {
    constexpr int b = 4;
    for (int stride : {1, 2}) {
        const ConvShape s = make_shape(3, 13, 9, 10, 3, stride);
        const ConvGeometry g{stride, 1};
        const Format eight = parse_format("m7e0/g3/sample");
        QuantizedTensor a = quantize(random_tensor({s.N, s.C, s.H, s.W}, 5), eight);
        QuantizedTensor w = quantize(random_tensor({s.O, s.C, s.K, s.K}, 6), parse_format("m7e0/g3/channel"),
                                     Rounding::nearest, 0, 0, 0, TensorRole::weight);
        for (QuantizedTensor *t : {&a, &w}) {
            t->scale = float(t->format.qmax());  // output = the integer sum
            std::fill(t->group_exponents.begin(), t->group_exponents.end(), uint8_t{0});
        }
        auto half = [&](const QuantizedTensor &t, bool high) {
            QuantizedTensor h = t;
            for (int8_t &q : h.values) {
                const int hi = int(std::floor(q / double(1 << b)));
                EXPECT_TRUE(hi >= -(1 << (b - 1)) && hi < (1 << (b - 1)));
                q = int8_t(high ? hi : q - (hi << b));  // q_lo in [0, 2^b)
            }
            return h;
        };
        const Tensor y = conv_forward(a, w, g);
        const Tensor w_hi = conv_forward(a, half(w, true), g), w_lo = conv_forward(a, half(w, false), g);
        const Tensor a_hi = conv_forward(half(a, true), w, g), a_lo = conv_forward(half(a, false), w, g);
        int64_t nonzero = 0;
        for (int64_t k = 0; k < y.numel(); k++) {
            ASSERT_EQ(y[k], float(1 << b) * w_hi[k] + w_lo[k]) << "stride " << stride << ", element " << k;
            ASSERT_EQ(y[k], float(1 << b) * a_hi[k] + a_lo[k]) << "stride " << stride << ", element " << k;
            nonzero += y[k] != 0 && w_lo[k] != 0 && a_lo[k] != 0;
        }
        EXPECT_GT(nonzero, y.numel() / 2);
    }
}

// Every compiled variant this CPU runs gives bit-identical outputs, for signed and unsigned
// activations (the *_unsigned kernels' variants too).
void check_variants_agree(const char *a_format) {
    const ConvShape s = make_shape(3, 10, 9, 7, 3, 2);
    const ConvGeometry g{2, 1};
    const QuantizedTensor a = quantize(random_tensor({s.N, s.C, s.H, s.W}, 5, true), parse_format(a_format));
    const QuantizedTensor w = quantize(random_tensor({s.O, s.C, s.K, s.K}, 6), parse_format("m3e0/g3/channel"),
                                       Rounding::nearest, 0, 0, 0, TensorRole::weight);
    const QuantizedTensor e =
        quantize(random_tensor({s.N, s.O, s.out_h(), s.out_w()}, 7), parse_format("m2e1/g3/sample"),
                 Rounding::stochastic, 1, 0, 0, TensorRole::error);
    std::vector<std::vector<float>> first;
    for (Isa isa : supported_isas()) {
        force_isa(isa);
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            std::vector<std::vector<float>> outs;
            for (const Tensor &t : {conv_forward(a, w, g), conv_backward_data(e, w, {s.N, s.C, s.H, s.W}, g),
                                    conv_backward_weight(e, a, int(s.K), g)}) {
                outs.emplace_back(t.data(), t.data() + t.numel());
            }
            if (first.empty()) {
                first = outs;
            } else {
                EXPECT_EQ(outs, first) << to_string(isa) << " with " << threads << " threads";
            }
        }
    }
    force_isa(std::nullopt);
    set_num_threads(0);
}

TEST(IntegerConv, VariantsGiveIdenticalResults) {
    for (const char *a_format : {"m3e0/g3/sample", "um4e0/g3/sample"}) {
        SCOPED_TRACE(a_format);
        check_variants_agree(a_format);
    }
}

// The weight gradient shifts each sample's sum by its group exponents and adds the samples in
// int32, over runs of samples that cannot overflow. 8-bit operands at 32x32 with samples a
// power of two apart (up to 2^-7 each, shifts up to 14): no two samples fit one run at the
// widest shifts, several do at the narrowest. Against float64, channel groups too.
TEST(IntegerConv, WeightGradientSplitsTheBatchWhereShiftedSumsCouldOverflow) {
    const ConvShape s = make_shape(12, 3, 32, 4, 3, 1);
    const ConvGeometry g{1, 1};
    Tensor a = random_tensor({s.N, s.C, s.H, s.W}, 31, true), e = random_tensor({s.N, s.O, s.H, s.W}, 32);
    const int64_t a_sample = s.C * s.H * s.W, e_sample = s.O * s.H * s.W;
    for (int64_t n = 0; n < s.N; n++) {
        for (int64_t k = 0; k < a_sample; k++) a[n * a_sample + k] = 100.0f * std::ldexp(1.0f, -int(n % 8));
        for (int64_t k = 0; k < e_sample; k++) e[n * e_sample + k] *= std::ldexp(1.0f, -int((3 * n) % 8));
    }
    for (const char *e_format : {"m7e0/g3/sample", "m7e0/g3/channel"}) {
        SCOPED_TRACE(e_format);
        const QuantizedTensor qa = quantize(a, parse_format("m7e0/g3/sample"));
        const QuantizedTensor qe = quantize(e, parse_format(e_format), Rounding::nearest, 0, 0, 0, TensorRole::error);
        const std::vector<double> av = dequantized(qa), ev = dequantized(qe);
        expect_close(conv_backward_weight(qe, qa, int(s.K), g), reference::conv_backward_weight(s, ev, av),
                     reference::conv_backward_weight(s, absolute(ev), absolute(av)), 1e-6, "backward-weight");
    }
}

// Extreme operands, all |q| = qmax, at the longest reductions of ResNet-56 at batch 256:
// forward and backward-data sum 64 * 3 * 3 products, backward-weight 32 * 32 per sample
// over 256 samples. The exact result is a count of in-bounds terms times qmax^2.
TEST(IntegerConv, NoOverflowAtExtremeOperands) {
    auto constant = [](const Shape &shape, int8_t value, TensorRole role) {
        QuantizedTensor q = quantize(Tensor(shape), parse_format("m7e0"), Rounding::nearest, 0, 0, 0, role);
        std::fill(q.values.begin(), q.values.end(), value);
        q.scale = 127.0f;  // so that q stands for q itself: S / qmax = 1
        return q;
    };
    {
        const Shape a_shape = {2, 64, 8, 8}, w_shape = {64, 64, 3, 3};
        const QuantizedTensor a = constant(a_shape, 127, TensorRole::activation);
        const QuantizedTensor w = constant(w_shape, -127, TensorRole::weight);
        const Tensor y = conv_forward(a, w, {1, 1});
        // Interior output: 64 * 9 terms of -127 * 127.
        EXPECT_EQ(y.at({1, 5, 3, 4}), float(-64.0 * 9 * 127 * 127));
        EXPECT_EQ(y.at({0, 0, 0, 0}), float(-64.0 * 4 * 127 * 127));  // corner: 2 x 2 window
        // Unsigned 7-bit inputs at their maximum with 3-bit weights at -7: the int16 sums hold
        // 2 groups of 4 channels, 2 * 9 * 2 products of 127 * 7 = 32004 at most (32767).
        QuantizedTensor ua = constant(a_shape, 127, TensorRole::activation);
        ua.format = parse_format("um7e0");
        QuantizedTensor w7 = constant(w_shape, -7, TensorRole::weight);
        w7.format = parse_format("m3e0");
        w7.scale = 7.0f;
        const Tensor uy = conv_forward(ua, w7, {1, 1});
        EXPECT_EQ(uy.at({1, 5, 3, 4}), float(-64.0 * 9 * 127 * 7));
        EXPECT_EQ(uy.at({0, 0, 0, 0}), float(-64.0 * 4 * 127 * 7));
        const QuantizedTensor e = constant({2, 64, 8, 8}, -127, TensorRole::error);
        const Tensor da = conv_backward_data(e, w, a_shape, {1, 1});
        EXPECT_EQ(da.at({1, 7, 4, 4}), float(64.0 * 9 * 127 * 127));
        // Backward-data's narrow sums: 3-bit weights at +7 for input channel 5, -7 elsewhere
        // (offset 7: offset weights 14 and 0), errors at -127. Each int16 sum holds one group
        // of 4 output channels, 2 * 9 products of 14 * 127 = 32004 at most (32767).
        for (int64_t o = 0; o < 64; o++) std::fill_n(w7.values.begin() + (o * 64 + 5) * 9, 9, int8_t(7));
        const Tensor da7 = conv_backward_data(e, w7, a_shape, {1, 1});
        EXPECT_EQ(da7.at({1, 5, 4, 4}), float(-64.0 * 9 * 127 * 7));
        EXPECT_EQ(da7.at({1, 5, 0, 0}), float(-64.0 * 4 * 127 * 7));
        EXPECT_EQ(da7.at({1, 6, 4, 4}), float(64.0 * 9 * 127 * 7));
    }
    {
        const Shape a_shape = {256, 16, 32, 32};
        const QuantizedTensor a = constant(a_shape, -127, TensorRole::activation);
        const QuantizedTensor e = constant(a_shape, 127, TensorRole::error);
        const Tensor dw = conv_backward_weight(e, a, 3, {1, 1});
        // Offset (kx, ky) = (1, 1) sees every position; (0, 0) misses one row and one column.
        EXPECT_EQ(dw.at({3, 5, 1, 1}), float(-256.0 * 32 * 32 * 127 * 127));
        EXPECT_EQ(dw.at({3, 5, 0, 0}), float(-256.0 * 31 * 31 * 127 * 127));
    }
    {
        // Unsigned 7-bit inputs at 127 with errors at -8 (m1e2): each int16 sum holds 2 rows
        // of 8 groups of 4 columns, 2 * 2 * 8 products of 127 * 8 = 32512 at most (32767).
        const Shape a_shape = {4, 16, 32, 32};
        QuantizedTensor a = constant(a_shape, 127, TensorRole::activation);
        a.format = parse_format("um7e0");
        QuantizedTensor e = constant(a_shape, -8, TensorRole::error);
        e.format = parse_format("m1e2");
        e.scale = 8.0f;
        const Tensor dw = conv_backward_weight(e, a, 3, {1, 1});
        EXPECT_EQ(dw.at({3, 5, 1, 1}), float(-4.0 * 32 * 32 * 127 * 8));
        EXPECT_EQ(dw.at({3, 5, 0, 0}), float(-4.0 * 31 * 31 * 127 * 8));
    }
}

TEST(IntegerConv, RejectsMismatchedOperands) {
    const QuantizedTensor a = quantize(random_tensor({2, 3, 5, 5}, 1), parse_format("m3e0"));
    const QuantizedTensor w =
        quantize(random_tensor({4, 3, 3, 3}, 2), parse_format("m3e0"), Rounding::nearest, 0, 0, 0, TensorRole::weight);
    EXPECT_THROW(conv_forward(a, a, {1, 1}), std::invalid_argument);  // activations as weights
    const QuantizedTensor w2 =
        quantize(random_tensor({4, 2, 3, 3}, 2), parse_format("m3e0"), Rounding::nearest, 0, 0, 0, TensorRole::weight);
    EXPECT_THROW(conv_forward(a, w2, {1, 1}), std::invalid_argument);  // channel mismatch
    EXPECT_THROW(conv_forward(a, w, {0, 1}), std::invalid_argument);   // stride 0
    EXPECT_THROW(conv_forward(a, w, {3, 1}), std::invalid_argument);   // stride 3: 1 or 2 only
    EXPECT_THROW(conv_forward(a, w, {1, 3}), std::invalid_argument);   // padding >= K
}

// The 4-term u8 x i8 algorithm of the AVX-512 VNNI variants (weights offset by +128, the
// offset's window sums subtracted), built here for this CPU, against the 2-term int16 one:
// identical outputs at every padding border, channel count (not only multiples of 4), kernel
// size and stride, with the extreme values -127 and 127 in play.
TEST(IntegerConv, FourTermDotProductsMatchPairs) {
    std::mt19937 rng(77);
    std::uniform_int_distribution<int> value(-127, 127);
    auto random_q = [&](const Shape &shape) {
        std::vector<int8_t> q(size_t(shape_numel(shape)));
        for (int8_t &v : q) v = int8_t(value(rng));
        return q;
    };
    for (int64_t K : {1, 3, 5}) {
        for (int stride : {1, 2}) {
            for (int64_t C : {3, 4, 7}) {
                SCOPED_TRACE("K" + std::to_string(K) + " s" + std::to_string(stride) + " C" + std::to_string(C));
                const Shape a_shape = {2, C, 9, 8}, w_shape = {5, C, K, K};
                const ConvGeometry g{stride, int(K / 2)};
                const Shape y_shape = conv_output_shape(a_shape, w_shape, g);
                std::vector<int8_t> a = random_q(a_shape), w = random_q(w_shape), e = random_q(y_shape);
                std::vector<double> s2(2, 0.5), s5(5, 0.25), sc(size_t(C), 0.125);
                Buffer<const double> s2b(s2.data(), 2), s5b(s5.data(), 5), scb(sc.data(), int(C));
                std::vector<uint8_t> no_shifts(5, 0);  // the 4-term path takes no weight shifts
                Buffer<const uint8_t> shifts(no_shifts.data(), 5);
                Tensor y4 = Tensor::uninitialized(y_shape), y2 = Tensor::uninitialized(y_shape);
                Buffer<float> y4b = nchw(y4.data(), y_shape), y2b = nchw(y2.data(), y_shape);
                std::vector<uint8_t> no_channel_shifts(size_t(C), 0);
                Buffer<const uint8_t> channel_shifts(no_channel_shifts.data(), int(C));
                kernels::conv_forward_dot4(nchw(a.data(), a_shape), nchw(w.data(), w_shape), s2b, s5b, channel_shifts,
                                           stride, int(K / 2), y4b);
                kernels::conv_forward(nchw(a.data(), a_shape), nchw(w.data(), w_shape), s2b, s5b, channel_shifts,
                                      stride, int(K / 2), y2b);
                EXPECT_EQ(0, std::memcmp(y4.data(), y2.data(), size_t(y4.numel()) * sizeof(float))) << "forward";
                // Backward-data at stride 2 interleaves four phases, from weights of 4 C
                // channels (phase (px, py) of channel c is channel 2 (2 c + py) + px).
                const Shape wd_shape = {5, stride * stride * C, K, K};
                const std::vector<int8_t> wd = random_q(wd_shape);
                Tensor d4 = Tensor::uninitialized(a_shape), d2 = Tensor::uninitialized(a_shape);
                Buffer<float> d4b = nchw(d4.data(), a_shape), d2b = nchw(d2.data(), a_shape);
                kernels::conv_backward_data_dot4(nchw(e.data(), y_shape), nchw(wd.data(), wd_shape), s2b, scb, shifts,
                                                 stride, int(K / 2), int(K / 2), kAllWindowTaps, d4b, false, d4b);
                kernels::conv_backward_data(nchw(e.data(), y_shape), nchw(wd.data(), wd_shape), s2b, scb, shifts,
                                            stride, int(K / 2), int(K / 2), kAllWindowTaps, d2b, false, d2b);
                EXPECT_EQ(0, std::memcmp(d4.data(), d2.data(), size_t(d4.numel()) * sizeof(float))) << "backward-data";
            }
        }
    }
}

// The unsigned kernel's int16 narrow sums against the signed int16-pair kernel on the same
// non-negative values: identical outputs for every chunk of groups of 4 channels, including
// a partial last chunk and chunks past the channel count, at the largest values whose
// sums still fit (15 x 7 products: 2 * 9 * 105 per group, 15 groups within 32767).
TEST(IntegerConv, NarrowSumsMatchPairsForEveryChunk) {
    std::mt19937 rng(78);
    for (int64_t K : {1, 3}) {
        for (int stride : {1, 2}) {
            const int64_t C = 19;  // 5 groups of 4, the last one partial
            const Shape a_shape = {2, C, 9, 8}, w_shape = {6, C, K, K};
            const ConvGeometry g{stride, int(K / 2)};
            const Shape y_shape = conv_output_shape(a_shape, w_shape, g);
            std::vector<int8_t> a(size_t(shape_numel(a_shape))), w(size_t(shape_numel(w_shape)));
            // Extremes in play: every third input at 15, every other weight at -7 or 7.
            for (size_t i = 0; i < a.size(); i++) a[i] = int8_t(i % 3 == 0 ? 15 : rng() % 16);
            for (size_t i = 0; i < w.size(); i++)
                w[i] = int8_t(i % 2 == 0 ? (rng() % 2 ? 7 : -7) : int(rng() % 15) - 7);
            std::vector<double> s2(2, 0.5), s6(6, 0.25);
            Buffer<const double> s2b(s2.data(), 2), s6b(s6.data(), 6);
            std::vector<uint8_t> no_shifts(size_t(C), 0);
            Buffer<const uint8_t> shifts(no_shifts.data(), int(C));
            Tensor pairs = Tensor::uninitialized(y_shape);
            kernels::conv_forward(nchw(a.data(), a_shape), nchw(w.data(), w_shape), s2b, s6b, shifts, stride,
                                  int(K / 2), nchw(pairs.data(), y_shape));
            for (int chunk : {1, 2, 3, 5, 8}) {
                SCOPED_TRACE("K" + std::to_string(K) + " s" + std::to_string(stride) + " chunk " +
                             std::to_string(chunk));
                Tensor narrow = Tensor::uninitialized(y_shape);
                kernels::conv_forward_unsigned(nchw(a.data(), a_shape), nchw(w.data(), w_shape), s2b, s6b, shifts,
                                               stride, int(K / 2), chunk, nchw(narrow.data(), y_shape));
                EXPECT_EQ(0, std::memcmp(narrow.data(), pairs.data(), size_t(narrow.numel()) * sizeof(float)));
            }
        }
    }
}

// The same for the weight gradient: narrow sums over chunks of rows of output positions
// (a partial last chunk, chunks past the row count) against the int16-pair kernel, odd widths
// (groups of 4 columns running past the row), both strides; and both kernels' shifted totals
// over the samples against int64 sums from the definition. On VNNI the unsigned kernels are
// 4-term dot products (chunks ignored), the main one and the one tiled by 16 output channels.
TEST(IntegerConv, NarrowWeightGradientMatchesPairsForEveryChunk) {
    std::mt19937 rng(79);
    for (int64_t K : {1, 3}) {
        for (int stride : {1, 2})
            for (int64_t width : {13, 8 * stride}) {  // 8 output columns: the unrolled specialization
                const Shape a_shape = {3, 5, 11, width}, w_shape = {7, 5, K, K};
                const ConvGeometry g{stride, int(K / 2)};
                const Shape e_shape = conv_output_shape(a_shape, w_shape, g);
                std::vector<int8_t> a(size_t(shape_numel(a_shape))), e(size_t(shape_numel(e_shape)));
                for (size_t i = 0; i < a.size(); i++) a[i] = int8_t(i % 3 == 0 ? 15 : rng() % 16);
                for (size_t i = 0; i < e.size(); i++)
                    e[i] = int8_t(i % 2 == 0 ? (rng() % 2 ? 8 : -8) : int(rng() % 17) - 8);
                // Each sample's sums shifted per (channel, n), as the runtime's exponents ask.
                std::vector<uint8_t> se(size_t(3 * 7)), sa(size_t(3 * 5));
                for (uint8_t &x : se) x = uint8_t(rng() % 4);
                for (uint8_t &x : sa) x = uint8_t(rng() % 3);
                Buffer<const uint8_t> seb(se.data(), {7, 3}), sab(sa.data(), {5, 3});  // (channel, n)
                // The shifted total in int64, from the definition.
                const int pad = int(K / 2);
                std::vector<int64_t> expected(size_t(shape_numel(w_shape)), 0);
                for (int64_t o = 0; o < 7; o++) {
                    for (int64_t c = 0; c < 5; c++) {
                        for (int64_t ky = 0; ky < K; ky++) {
                            for (int64_t kx = 0; kx < K; kx++) {
                                int64_t &sum = expected[size_t(((o * 5 + c) * K + ky) * K + kx)];
                                for (int64_t n = 0; n < 3; n++) {
                                    int64_t partial = 0;
                                    for (int64_t y = 0; y < e_shape[2]; y++) {
                                        for (int64_t x = 0; x < e_shape[3]; x++) {
                                            const int64_t iy = y * stride + ky - pad, ix = x * stride + kx - pad;
                                            if (iy < 0 || iy >= a_shape[2] || ix < 0 || ix >= a_shape[3]) continue;
                                            partial +=
                                                int64_t(e[size_t(((n * 7 + o) * e_shape[2] + y) * e_shape[3] + x)]) *
                                                a[size_t(((n * 5 + c) * a_shape[2] + iy) * a_shape[3] + ix)];
                                        }
                                    }
                                    sum += partial * (int64_t{1} << (se[size_t(n * 7 + o)] + sa[size_t(n * 5 + c)]));
                                }
                            }
                        }
                    }
                }
                std::vector<int32_t> pairs(expected.size());
                kernels::conv_backward_weight(nchw(e.data(), e_shape), nchw(a.data(), a_shape), seb, sab, stride, pad,
                                              nchw(pairs.data(), w_shape));
                EXPECT_EQ(std::vector<int64_t>(pairs.begin(), pairs.end()), expected)
                    << "K" << K << " s" << stride << " width " << width;
                for (int chunk : {1, 2, 4, 5, 16}) {
                    SCOPED_TRACE("K" + std::to_string(K) + " s" + std::to_string(stride) + " width " +
                                 std::to_string(width) + " chunk " + std::to_string(chunk));
                    std::vector<int32_t> narrow(expected.size());
                    kernels::conv_backward_weight_unsigned(nchw(e.data(), e_shape), nchw(a.data(), a_shape), seb, sab,
                                                           stride, pad, chunk, nchw(narrow.data(), w_shape));
                    EXPECT_EQ(narrow, pairs);
                    // VNNI's kernel tiled by 16 output channels (the runtime's for narrow layers).
                    if (kernels::conv_backward_weight_unsigned.selected_isa() == Isa::avx512_vnni) {
                        std::vector<int32_t> tiled(expected.size());
                        kernels::conv_backward_weight_unsigned_16(nchw(e.data(), e_shape), nchw(a.data(), a_shape), seb,
                                                                  sab, stride, pad, chunk, nchw(tiled.data(), w_shape));
                        EXPECT_EQ(tiled, pairs);
                    }
                }
            }
    }
}

// Backward-data's narrow sums (weights shifted, offset to uint8; int16 sums over chunks of 4
// output channels; the offset's window sums subtracted) against the int16-pair kernel with
// the same shifts: identical outputs for every chunk (a partial last one, chunks past the
// channel count), windows square and rectangular (3x3, 5x5, the stride-2 layers' merged 2x2,
// 2x1, 1x2, 1x1) at every padding border, and two offsets (the smallest, and a larger one).
TEST(IntegerConv, NarrowBackwardDataMatchesPairsForEveryChunk) {
    std::mt19937 rng(80);
    const int64_t O = 19, C = 6;  // 5 groups of 4 output channels, the last one partial
    std::vector<uint8_t> shift(static_cast<size_t>(O));
    for (size_t o = 0; o < shift.size(); o++) shift[o] = uint8_t(o % 3);  // weights up to 7 << 2
    Buffer<const uint8_t> shifts(shift.data(), int(O));
    for (const auto &[kx, ky] :
         std::vector<std::pair<int64_t, int64_t>>{{3, 3}, {5, 5}, {2, 2}, {2, 1}, {1, 2}, {1, 1}}) {
        const Shape d_shape = {2, C, 9, 8}, w_shape = {O, C, ky, kx};
        // Stride-1 backward-data with pads (kx - 1) / 2: the output size equals the input's.
        const int pad_x = int((kx - 1) / 2), pad_y = int((ky - 1) / 2);
        const Shape e_shape = {2, O, 9 + 2 * pad_y - ky + 1, 8 + 2 * pad_x - kx + 1};
        std::vector<int8_t> w(size_t(shape_numel(w_shape))), e(size_t(shape_numel(e_shape)));
        for (size_t i = 0; i < w.size(); i++) w[i] = int8_t(i % 2 == 0 ? (rng() % 2 ? 7 : -7) : int(rng() % 15) - 7);
        for (size_t i = 0; i < e.size(); i++) e[i] = int8_t(i % 2 == 0 ? (rng() % 2 ? 8 : -8) : int(rng() % 17) - 8);
        std::vector<double> s2(2, 0.5), sc(size_t(C), 0.25);
        Buffer<const double> s2b(s2.data(), 2), scb(sc.data(), int(C));
        Tensor pairs = Tensor::uninitialized(d_shape);
        Buffer<float> pairs_buffer = nchw(pairs.data(), d_shape);
        kernels::conv_backward_data(nchw(e.data(), e_shape), nchw(w.data(), w_shape), s2b, scb, shifts, 1, pad_x, pad_y,
                                    kAllWindowTaps, pairs_buffer, false, pairs_buffer);
        // Smallest offset 28 (-7 << 2); products up to 56 x 8: 2 * 9 * 448 per group, 4 groups
        // within 32767 at 3x3 (chunk 5 and 8 only on the smaller windows).
        for (int offset : {28, 40}) {
            for (int chunk : {1, 2, 3, 5, 8}) {
                if (2 * kx * ky * chunk * 8 * (7 * 4 + offset) > 32767) continue;
                SCOPED_TRACE(std::to_string(kx) + "x" + std::to_string(ky) + " offset " + std::to_string(offset) +
                             " chunk " + std::to_string(chunk));
                Tensor narrow = Tensor::uninitialized(d_shape);
                Buffer<float> narrow_buffer = nchw(narrow.data(), d_shape);
                kernels::conv_backward_data_narrow(nchw(e.data(), e_shape), nchw(w.data(), w_shape), s2b, scb, shifts,
                                                   offset, 1, pad_x, pad_y, chunk, kAllWindowTaps, narrow_buffer, false,
                                                   narrow_buffer);
                EXPECT_EQ(0, std::memcmp(narrow.data(), pairs.data(), size_t(narrow.numel()) * sizeof(float)));
            }
        }
    }
}

// Merged stride-2 weights (O, M, 2, 2) for the window-tap tests below: random int8 values,
// and the same with zeros in the slots that are not taps of `taps` for the phase each merged
// channel holds (`phase_of`); the kernels read the window flipped (slot 1 - k of weight tap k).
struct MergedTapWeights {
    std::vector<int8_t> values, zeroed;
};
template <class PhaseOf>
MergedTapWeights merged_tap_weights(std::mt19937 &rng, int64_t O, int64_t M, int taps, PhaseOf phase_of) {
    auto tap = [](int t, int64_t phase, int64_t slot) { return (t >> (2 * phase + slot)) & 1; };
    MergedTapWeights w;
    w.values.resize(size_t(O * M * 4));
    for (auto &v : w.values) v = int8_t(int(rng() % 15) - 7);
    w.zeroed = w.values;
    for (int64_t o = 0; o < O; o++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t ky = 0; ky < 2; ky++)
                for (int64_t kx = 0; kx < 2; kx++) {
                    const int64_t phase = phase_of(m);
                    if (!(tap(taps, phase % 2, 1 - kx) && tap(taps, phase / 2, 1 - ky)))
                        w.zeroed[size_t(((o * M + m) * 2 + ky) * 2 + kx)] = 0;
                }
    return w;
}

std::vector<int8_t> random_errors(std::mt19937 &rng, const Shape &shape) {
    std::vector<int8_t> e(size_t(shape_numel(shape)));
    for (auto &v : e) v = int8_t(int(rng() % 17) - 8);
    return e;
}

bool same_bits(const Tensor &a, const Tensor &b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), size_t(a.numel()) * sizeof(float)) == 0;
}

// A stride-2 layer's merged 2x2 window (runtime/conv.cpp) holds 7 zero taps among its 16
// (phase, slot) products for a 3x3 kernel with padding 1; the kernels told so
// (kOddWindowTaps) skip them, the narrow sums' products and offset correction alike. Against
// the int16-pair kernel on the same merged weights with every slot a tap: identical outputs,
// also when the skipped slots hold nonzero weights (which then do not count).
TEST(IntegerConv, NarrowBackwardDataSkipsThePhasesZeroTaps) {
    std::mt19937 rng(81);
    const int64_t O = 11, C = 3, M = 4 * C;  // merged channels 2 (2 c + py) + px
    const Shape e_shape = {2, O, 7, 9}, w_shape = {O, M, 2, 2}, d_shape = {2, C, 14, 18};
    const std::vector<int8_t> e = random_errors(rng, e_shape);
    const MergedTapWeights merged = merged_tap_weights(rng, O, M, kOddWindowTaps, [](int64_t m) { return m % 4; });
    const std::vector<int8_t> &w = merged.values, &zeroed = merged.zeroed;
    std::vector<uint8_t> shift(size_t(O), 0);
    std::vector<double> s2(2, 0.5), sc(size_t(C), 0.25);
    Buffer<const double> s2b(s2.data(), 2), scb(sc.data(), int(C));
    Buffer<const uint8_t> shifts(shift.data(), int(O));
    auto run_pairs = [&](const std::vector<int8_t> &weights, int taps) {
        Tensor d = Tensor::uninitialized(d_shape);
        Buffer<float> db = nchw(d.data(), d_shape);
        kernels::conv_backward_data(nchw(e.data(), e_shape), nchw(weights.data(), w_shape), s2b, scb, shifts, 2, 1, 1,
                                    taps, db, false, db);
        return d;
    };
    auto run_narrow = [&](const std::vector<int8_t> &weights, int taps) {
        Tensor d = Tensor::uninitialized(d_shape);
        Buffer<float> db = nchw(d.data(), d_shape);
        kernels::conv_backward_data_narrow(nchw(e.data(), e_shape), nchw(weights.data(), w_shape), s2b, scb, shifts, 7,
                                           2, 1, 1, 3, taps, db, false, db);
        return d;
    };
    const Tensor expected = run_pairs(zeroed, kAllWindowTaps);
    EXPECT_TRUE(same_bits(run_narrow(zeroed, kOddWindowTaps), expected));
    EXPECT_TRUE(same_bits(run_narrow(w, kOddWindowTaps), expected));
    EXPECT_TRUE(same_bits(run_narrow(zeroed, kAllWindowTaps), expected));
    EXPECT_TRUE(same_bits(run_pairs(w, kOddWindowTaps), expected));  // the pairs skip them too
    {  // and the 4-term kernel (VNNI's; its offset +128 has a correction of its own)
        Tensor d = Tensor::uninitialized(d_shape);
        Buffer<float> db = nchw(d.data(), d_shape);
        kernels::conv_backward_data_dot4(nchw(e.data(), e_shape), nchw(w.data(), w_shape), s2b, scb, shifts, 2, 1, 1,
                                         kOddWindowTaps, db, false, db);
        EXPECT_TRUE(same_bits(d, expected));
    }
    // And the skipped slots were real work: with them, the weights give other results.
    const Tensor unskipped = run_pairs(w, kAllWindowTaps);
    EXPECT_FALSE(same_bits(unskipped, expected));
    EXPECT_TRUE(same_bits(run_narrow(w, kAllWindowTaps), unskipped));
}

// The kernels with lanes along channels take a stride-2 layer's merged channels in blocks of
// 16 of one phase (channel 64 (c / 16) + 16 (2 py + px) + c mod 16, runtime/conv.cpp), so
// that each vector skips its phase's zero taps too: integer and float32, told kOddWindowTaps,
// give what they give with every slot a tap on the weights zeroed there, whatever the
// skipped slots hold.
TEST(IntegerConv, ChannelLanesSkipThePhasesZeroTaps) {
    if (kernels::conv_forward_unsigned.selected_isa() != Isa::avx512_vnni)
        GTEST_SKIP() << "the channel-lane kernels are built for AVX-512 VNNI only";
    std::mt19937 rng(82);
    const int64_t O = 9, C = 32, M = 4 * C;
    const Shape e_shape = {2, O, 5, 7}, w_shape = {O, M, 2, 2}, d_shape = {2, C, 10, 14};
    const std::vector<int8_t> e = random_errors(rng, e_shape);
    const MergedTapWeights merged =
        merged_tap_weights(rng, O, M, kOddWindowTaps, [](int64_t m) { return (m / 16) % 4; });
    const std::vector<int8_t> &w = merged.values, &zeroed = merged.zeroed;
    const std::vector<float> wf(w.begin(), w.end()), ef(e.begin(), e.end()), zeroed_f(zeroed.begin(), zeroed.end());
    std::vector<uint8_t> shift(size_t(O), 0);
    std::vector<double> s2(2, 0.5), sc(size_t(C), 0.25);
    Buffer<const double> s2b(s2.data(), 2), scb(sc.data(), int(C));
    Buffer<const uint8_t> shifts(shift.data(), int(O));
    auto run = [&](const std::vector<int8_t> &weights, int taps) {
        Tensor d = Tensor::uninitialized(d_shape);
        Buffer<float> db = nchw(d.data(), d_shape);
        kernels::conv_backward_data_channels_64(nchw(e.data(), e_shape), nchw(weights.data(), w_shape), s2b, scb,
                                                shifts, 2, 1, 1, taps, db, false, db);
        return d;
    };
    auto run_float = [&](const std::vector<float> &weights, int taps) {
        Tensor d = Tensor::uninitialized(d_shape);
        Buffer<float> db = nchw(d.data(), d_shape);
        kernels::conv_backward_data_float_channels_64(nchw(ef.data(), e_shape), nchw(weights.data(), w_shape), 2, 1, 1,
                                                      taps, db, false, db);
        return d;
    };
    const Tensor expected = run(zeroed, kAllWindowTaps);
    EXPECT_TRUE(same_bits(run(w, kOddWindowTaps), expected));
    EXPECT_TRUE(same_bits(run(zeroed, kOddWindowTaps), expected));
    EXPECT_FALSE(same_bits(run(w, kAllWindowTaps), expected));  // the skipped slots were real work
    const Tensor expected_float = run_float(zeroed_f, kAllWindowTaps);
    EXPECT_TRUE(same_bits(run_float(wf, kOddWindowTaps), expected_float));
    EXPECT_FALSE(same_bits(run_float(wf, kAllWindowTaps), expected_float));
    // The integer sums are small integers: exact in float32, so the two agree up to the scales.
    for (int64_t i = 0; i < expected.numel(); i++)
        ASSERT_EQ(expected.data()[i], float(double(expected_float.data()[i]) * 0.5 * 0.25)) << "element " << i;
}

// Backward-data's narrow sums are compiled for AVX2 and baseline only (VNNI runs the 4-term
// kernel instead): forcing the AVX-512 variant (`lowbit --isa avx512_vnni`) runs their AVX2
// one, and forcing a variant they have runs exactly it; the same bits from each.
TEST(IntegerConv, ForcedVariantFallsBackToTheBestBelowIt) {
    const Shape e_shape = {2, 8, 6, 5}, w_shape = {8, 3, 3, 3}, d_shape = {2, 3, 6, 5};
    std::vector<int8_t> e(size_t(shape_numel(e_shape))), w(size_t(shape_numel(w_shape)));
    for (size_t i = 0; i < e.size(); i++) e[i] = int8_t(int(i * 7 % 15) - 7);
    for (size_t i = 0; i < w.size(); i++) w[i] = int8_t(int(i * 5 % 15) - 7);
    std::vector<uint8_t> shift(8, 0);
    std::vector<double> s2(2, 0.5), s3(3, 0.25);
    std::vector<std::vector<float>> results;
    for (Isa isa : supported_isas()) {
        force_isa(isa);
        Tensor d = Tensor::uninitialized(d_shape);
        Buffer<float> db = nchw(d.data(), d_shape);
        kernels::conv_backward_data_narrow(nchw(e.data(), e_shape), nchw(w.data(), w_shape),
                                           Buffer<const double>(s2.data(), 2), Buffer<const double>(s3.data(), 3),
                                           Buffer<const uint8_t>(shift.data(), 8), 7, 1, 1, 1, 1, kAllWindowTaps, db,
                                           false, db);
        EXPECT_EQ(kernels::conv_backward_data_narrow.last_isa(), isa == Isa::baseline ? Isa::baseline : Isa::avx2)
            << to_string(isa);
        results.emplace_back(d.data(), d.data() + d.numel());
        EXPECT_EQ(results.back(), results.front()) << to_string(isa);
    }
    force_isa(std::nullopt);
}

// float32 kernels: against the float64 reference, and their gradients against each other
// through the adjoint identity <conv(A, W), R> = <A, dA(R, W)> = <W, dW(R, A)>, and against
// central finite differences of the forward kernel.
TEST(FloatConv, AgainstFloat64Reference) {
    uint32_t seed = 50;
    for (const ConvShape &s : shapes()) {
        SCOPED_TRACE("K" + std::to_string(s.K) + " s" + std::to_string(s.stride));
        const ConvGeometry g{int(s.stride), int(s.pad)};
        const Tensor a = random_tensor({s.N, s.C, s.H, s.W}, seed++);
        const Tensor w = random_tensor({s.O, s.C, s.K, s.K}, seed++);
        const Tensor e = random_tensor({s.N, s.O, s.out_h(), s.out_w()}, seed++);
        const auto av = as_double(a), wv = as_double(w), ev = as_double(e);
        expect_close(conv_forward(a, w, g), reference::conv_forward(s, av, wv),
                     reference::conv_forward(s, absolute(av), absolute(wv)), 1e-5, "forward");
        expect_close(conv_backward_data(e, w, a.shape(), g), reference::conv_backward_data(s, ev, wv),
                     reference::conv_backward_data(s, absolute(ev), absolute(wv)), 1e-5, "backward-data");
        expect_close(conv_backward_weight(e, a, int(s.K), g), reference::conv_backward_weight(s, ev, av),
                     reference::conv_backward_weight(s, absolute(ev), absolute(av)), 1e-5, "backward-weight");
    }
}

// On full-width AVX-512, float32 layers of 32 or more output channels over windows larger
// than 1x1 run with lanes along output channels (conv_forward_float_channels_32 and _64, either
// stride; backward-data of 32 or more output channels, a stride-2 layer's 4 phases counted where its
// channels are whole vectors of 16,
// conv_backward_data_float_channels_*). Forced on and off in turn, each against the float64
// reference: partial tiles of channels (37, 67) and of pixels, K 3 and 5, and the shapes too
// narrow or strided that keep the main kernels.
TEST(FloatConv, ChannelLanesAgainstFloat64Reference) {
    if (kernels::conv_forward_float.selected_isa() != Isa::avx512_vnni)
        GTEST_SKIP() << "the float32 channel-lane kernels are built for AVX-512 only";
    uint32_t seed = 700;
    const std::vector<ConvShape> layers = {
        make_shape(2, 37, 9, 40, 3, 1),  make_shape(1, 5, 13, 67, 3, 2), make_shape(2, 64, 7, 33, 5, 1),
        make_shape(1, 33, 10, 64, 3, 1), make_shape(2, 40, 6, 37, 1, 1), make_shape(1, 7, 9, 5, 3, 1),
        make_shape(2, 9, 13, 11, 3, 2),  make_shape(1, 17, 10, 7, 3, 2), make_shape(1, 12, 11, 6, 5, 2),
        make_shape(1, 16, 9, 7, 3, 2),   make_shape(2, 32, 8, 11, 3, 2), make_shape(1, 16, 11, 5, 5, 2)};
    for (const ConvShape &s : layers) {
        SCOPED_TRACE(shape_name(s));
        const ConvGeometry g{int(s.stride), int(s.pad)};
        const Tensor a = random_tensor({s.N, s.C, s.H, s.W}, seed++);
        const Tensor w = random_tensor({s.O, s.C, s.K, s.K}, seed++);
        const Tensor e = random_tensor({s.N, s.O, s.out_h(), s.out_w()}, seed++);
        const auto av = as_double(a), wv = as_double(w), ev = as_double(e);
        for (bool full_width : {true, false}) {
            force_full_width_avx512(full_width);
            const uint64_t forward_32 = kernels::conv_forward_float_channels_32.calls(),
                           forward_64 = kernels::conv_forward_float_channels_64.calls(),
                           data_32 = kernels::conv_backward_data_float_channels_32.calls(),
                           data_64 = kernels::conv_backward_data_float_channels_64.calls();
            expect_close(conv_forward(a, w, g), reference::conv_forward(s, av, wv),
                         reference::conv_forward(s, absolute(av), absolute(wv)), 1e-5, "forward");
            expect_close(conv_backward_data(e, w, a.shape(), g), reference::conv_backward_data(s, ev, wv),
                         reference::conv_backward_data(s, absolute(ev), absolute(wv)), 1e-5, "backward-data");
            const bool lanes = full_width && s.K > 1 && s.O >= 32;
            EXPECT_EQ(kernels::conv_forward_float_channels_32.calls() > forward_32, lanes && s.O < 64)
                << "forward, 32 channel lanes, full width " << full_width;
            EXPECT_EQ(kernels::conv_forward_float_channels_64.calls() > forward_64, lanes && s.O >= 64)
                << "forward, 64 channel lanes, full width " << full_width;
            const int64_t merged = s.C * s.stride * s.stride;  // a strided layer's phases merged
            const bool data_lanes = full_width && s.K > 1 && merged >= 32 && (s.stride == 1 || s.C % 16 == 0);
            EXPECT_EQ(kernels::conv_backward_data_float_channels_32.calls() > data_32, data_lanes && merged < 64)
                << "backward-data, 32 channel lanes, full width " << full_width;
            EXPECT_EQ(kernels::conv_backward_data_float_channels_64.calls() > data_64, data_lanes && merged >= 64)
                << "backward-data, 64 channel lanes, full width " << full_width;
        }
    }
    force_full_width_avx512(std::nullopt);
}

TEST(FloatConv, WeightGradientWithTapTilesAgainstFloat64Reference) {
    if (kernels::conv_backward_weight_float.selected_isa() != Isa::avx512_vnni)
        GTEST_SKIP() << "the float32 3x3 weight-gradient kernels are built for AVX-512 only";
    uint32_t seed = 800;
    // Output channels below, at and past a 32-channel tile (with tails), input channels past a
    // 4-channel tile, both strides, and windows of 5 and 1 that keep the one-tap kernel.
    const std::vector<ConvShape> layers = {make_shape(2, 37, 9, 40, 3, 1), make_shape(1, 5, 13, 67, 3, 2),
                                           make_shape(3, 16, 8, 16, 3, 1), make_shape(2, 6, 11, 13, 3, 2),
                                           make_shape(2, 33, 7, 32, 5, 1), make_shape(2, 9, 6, 35, 1, 1)};
    for (const ConvShape &s : layers) {
        SCOPED_TRACE(shape_name(s));
        const ConvGeometry g{int(s.stride), int(s.pad)};
        const Tensor a = random_tensor({s.N, s.C, s.H, s.W}, seed++);
        const Tensor e = random_tensor({s.N, s.O, s.out_h(), s.out_w()}, seed++);
        const auto av = as_double(a), ev = as_double(e);
        for (bool full_width : {true, false}) {
            force_full_width_avx512(full_width);
            const uint64_t tile_16 = kernels::conv_backward_weight_float_3x3_16.calls(),
                           tile_32 = kernels::conv_backward_weight_float_3x3_32.calls();
            expect_close(conv_backward_weight(e, a, int(s.K), g), reference::conv_backward_weight(s, ev, av),
                         reference::conv_backward_weight(s, absolute(ev), absolute(av)), 1e-5, "backward-weight");
            const bool taps = full_width && s.K == 3;
            EXPECT_EQ(kernels::conv_backward_weight_float_3x3_16.calls() > tile_16, taps && s.O < 32)
                << "16-channel tile, full width " << full_width;
            EXPECT_EQ(kernels::conv_backward_weight_float_3x3_32.calls() > tile_32, taps && s.O >= 32)
                << "32-channel tile, full width " << full_width;
        }
    }
    force_full_width_avx512(std::nullopt);
}

// The tap-tiled recipe on this CPU (conv_backward_weight_float_taps: AVX2 and baseline builds
// of it), called directly, for every K: 3 taps per tile, so K = 5 and 7 end in a partial tile
// and K = 1 is all tail; output channels past one vector with a tail, input channels past the
// 4-channel tile, both strides.
TEST(FloatConv, TapTilesOfEveryWindowAgainstFloat64Reference) {
    uint32_t seed = 900;
    for (int64_t K : {1, 3, 5, 7}) {
        for (int64_t stride : {1, 2}) {
            const ConvShape s = make_shape(2, 6, K + 6, 19, K, stride);
            SCOPED_TRACE(shape_name(s));
            const Shape a_shape = {s.N, s.C, s.H, s.W}, e_shape = {s.N, s.O, s.out_h(), s.out_w()};
            const Shape w_shape = {s.O, s.C, K, K};
            const Tensor a = random_tensor(a_shape, seed++);
            const Tensor e = random_tensor(e_shape, seed++);
            const auto av = as_double(a), ev = as_double(e);
            const std::vector<double> ref = reference::conv_backward_weight(s, ev, av),
                                      ref_abs = reference::conv_backward_weight(s, absolute(ev), absolute(av));
            for (Isa isa : supported_isas()) {
                if (isa == Isa::avx512_vnni) continue;  // not built there (the 3x3 kernels are)
                force_isa(isa);
                Tensor dw = Tensor::uninitialized(w_shape);
                kernels::conv_backward_weight_float_taps(nchw(e.data(), e_shape), nchw(a.data(), a_shape), int(stride),
                                                         int(s.pad), nchw(dw.data(), w_shape));
                EXPECT_EQ(kernels::conv_backward_weight_float_taps.last_isa(), std::optional<Isa>(isa));
                expect_close(dw, ref, ref_abs, 1e-5, std::string("backward-weight ") + to_string(isa));
            }
        }
    }
    force_isa(std::nullopt);
}

double dot(const Tensor &a, const Tensor &b) {
    double s = 0;
    for (int64_t k = 0; k < a.numel(); k++) s += double(a[k]) * double(b[k]);
    return s;
}

TEST(FloatConv, BackwardPassesAreTheGradientsOfForward) {
    for (int stride : {1, 2}) {
        const ConvShape s = make_shape(2, 5, 9, 3, 3, stride);
        const ConvGeometry g{stride, 1};
        const Tensor a = random_tensor({s.N, s.C, s.H, s.W}, 11);
        const Tensor w = random_tensor({s.O, s.C, s.K, s.K}, 12);
        const Tensor r = random_tensor({s.N, s.O, s.out_h(), s.out_w()}, 13);
        // L = <conv(A, W), R>: dL/dA = dA(R, W), dL/dW = dW(R, A).
        const Tensor grad_a = conv_backward_data(r, w, a.shape(), g);
        const Tensor grad_w = conv_backward_weight(r, a, int(s.K), g);
        const double loss = dot(conv_forward(a, w, g), r);
        EXPECT_NEAR(dot(a, grad_a), loss, 1e-4 * std::fabs(loss) + 1e-3);
        EXPECT_NEAR(dot(w, grad_w), loss, 1e-4 * std::fabs(loss) + 1e-3);
        // Central differences on a few coordinates of A and W (L is linear in each, so the
        // difference quotient is exact up to float rounding of the forward pass).
        const float h = 0.5f;
        for (int64_t k : {int64_t(0), a.numel() / 3, a.numel() - 1}) {
            Tensor plus = a.clone(), minus = a.clone();
            plus[k] += h;
            minus[k] -= h;
            const double fd = (dot(conv_forward(plus, w, g), r) - dot(conv_forward(minus, w, g), r)) / (2 * h);
            EXPECT_NEAR(fd, grad_a[k], 2e-3 * (1 + std::fabs(grad_a[k]))) << "dA[" << k << "]";
        }
        for (int64_t k : {int64_t(0), w.numel() / 2, w.numel() - 1}) {
            Tensor plus = w.clone(), minus = w.clone();
            plus[k] += h;
            minus[k] -= h;
            const double fd = (dot(conv_forward(a, plus, g), r) - dot(conv_forward(a, minus, g), r)) / (2 * h);
            EXPECT_NEAR(fd, grad_w[k], 2e-3 * (1 + std::fabs(grad_w[k]))) << "dW[" << k << "]";
        }
    }
}

}  // namespace
}  // namespace lowbit

#include "conv.h"

#include <HalideBuffer.h>
#include <HalideRuntime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <set>

#include "conv_backward_data_channels_32_variants.h"
#include "conv_backward_data_channels_64_variants.h"
#include "conv_backward_data_float_channels_32_variants.h"
#include "conv_backward_data_float_channels_64_variants.h"
#include "conv_backward_data_float_variants.h"
#include "conv_backward_data_narrow_variants.h"
#include "conv_backward_data_variants.h"
#include "conv_backward_data_wide_variants.h"
#include "conv_backward_weight_float_3x3_16_variants.h"
#include "conv_backward_weight_float_3x3_32_variants.h"
#include "conv_backward_weight_float_variants.h"
#include "conv_backward_weight_unsigned_16_variants.h"
#include "conv_backward_weight_unsigned_16_wide_variants.h"
#include "conv_backward_weight_unsigned_64_variants.h"
#include "conv_backward_weight_unsigned_variants.h"
#include "conv_backward_weight_variants.h"
#include "conv_forward_float_channels_32_variants.h"
#include "conv_forward_float_channels_64_variants.h"
#include "conv_forward_float_variants.h"
#include "conv_forward_unsigned_channels_32_variants.h"
#include "conv_forward_unsigned_channels_64_variants.h"
#include "conv_forward_unsigned_variants.h"
#include "conv_forward_unsigned_wide_variants.h"
#include "conv_forward_variants.h"

namespace lowbit {

namespace {

using Halide::Runtime::Buffer;

void check_rank4(const Shape &shape, const char *what) {
    if (shape.size() != 4)
        throw std::invalid_argument(fmt::format("conv: {} must be 4-d, got {}", what, shape_string(shape)));
    for (int64_t d : shape) {
        if (d < 1 || d > std::numeric_limits<int32_t>::max())
            throw std::invalid_argument(fmt::format("conv: {} has a bad extent in {}", what, shape_string(shape)));
    }
}

// Halide sees NCHW / OIHW innermost first: (W, H, C, N), (K, K, C, O).
template <class T>
Buffer<T> nchw(T *data, const Shape &s) {
    return Buffer<T>(data, {int(s[3]), int(s[2]), int(s[1]), int(s[0])});
}

void check_role(const QuantizedTensor &q, TensorRole role, const char *what) {
    if (q.role != role) {
        throw std::invalid_argument(fmt::format("conv: {} was quantized as {}", what,
                                                q.role == TensorRole::weight ? "weights" : "activations or errors"));
    }
}

// The 4-term u8 x i8 kernels' (AVX-512 VNNI) weight offset (kWeightOffset4 of the generators).
constexpr int64_t kFourTermWeightOffset = 128;

// Exact int32 sums need terms * qmax_a * qmax_b < 2^31 (method.md section 4). The 4-term
// kernels offset the weights b by kFourTermWeightOffset, so they need
// terms * qmax_a * (qmax_b + 128) < 2^31: that, the stricter, is checked.
void check_no_overflow(int64_t terms, const QuantizedTensor &a, const QuantizedTensor &b, const char *what) {
    const int64_t bound = terms * a.format.qmax() * (b.format.qmax() + kFourTermWeightOffset);
    if (bound >= (int64_t{1} << 31)) {
        throw std::invalid_argument(
            fmt::format("conv: {} sums {} products of |q| <= {} x {}: int32 could overflow (limit 2^31)", what, terms,
                        a.format.qmax(), b.format.qmax()));
    }
}

// The narrow-sum kernels (schedules/pipelines.h) add, per group of 4 channels, 2 x `taps`
// products of magnitude <= `largest_product` in int16 (forward: taps = K^2, products
// qmax_a qmax_w; backward-data: the sub-kernel's taps, products qmax_e times the largest
// offset weight): `chunk` groups keep every sum within 32767. The most groups that fit, spread
// evenly over the layer's groups; 0 where not even one fits (8-bit operands), and the
// int16-pair kernel runs instead.
int narrow_chunk(int64_t channels, int64_t taps, int64_t largest_product) {
    const int64_t groups = (channels + 3) / 4, per_group = std::max<int64_t>(1, 2 * taps * largest_product);
    const int64_t most = std::numeric_limits<int16_t>::max() / per_group;
    if (most < 1) return 0;
    const int64_t chunks = (groups + most - 1) / most;
    return int((groups + chunks - 1) / chunks);
}

// conv_backward_weight_unsigned's narrow sums add, per row of output positions, 2 products
// of |q| <= qmax_a qmax_e for each group of 4 columns in int16: the most rows per chunk that
// keep every sum within 32767, spread evenly over the rows (0: not one row fits, and the
// signed kernel runs).
int narrow_rows(int64_t out_width, int64_t out_height, const Format &a, const Format &e) {
    const int64_t per_row = 2 * ((out_width + 3) / 4) * a.qmax() * e.qmax();
    const int64_t most = std::numeric_limits<int16_t>::max() / per_row;
    if (most < 1) return 0;
    const int64_t chunks = (out_height + most - 1) / most;
    return int((out_height + chunks - 1) / chunks);
}

// The VNNI kernels' 16-lane (zmm) tiles (conv_*_wide) where they measured faster than the main
// 8-lane ones on full-width AVX-512 (schedules/tuned/conv_*_wide_avx512_vnni.params, Zen 5):
// stride 1 and maps at least this wide (the forward pass's output, backward-data's result).
// Narrower maps leave half of each 16-lane vector idle, and stride 2 gathers its rows.
constexpr int64_t kWideForwardWidth = 32, kWideBackwardDataWidth = 16;
bool wide_tile(bool four_term, int stride, int64_t width, int64_t least_width) {
    return four_term && stride == 1 && width >= least_width && full_width_avx512();
}

// The kernels with lanes along output channels (conv_forward_unsigned_channels_*,
// conv_backward_data_channels_*, their float32 twins conv_*_float_channels_*;
// schedules/tuned/): their tile's channel count for a pass of `channels` output channels over
// windows of `taps` taps (backward-data of a strided layer: its merged phases' channels and
// window), or 0 for the other kernels. Only where the pass's AVX-512 VNNI
// variant runs (`vnni`: they are built for no other) on a full-width AVX-512 core (Zen 5,
// integer forward: 1.3-1.5x the main tiles on ResNet-20's 3x3 layers of 32 and 64 channels,
// either stride); fewer channels would leave lanes idle, and 1x1 layers measured no faster.
int64_t channel_lane_tile(bool vnni, int64_t channels, int64_t taps) {
    if (!vnni || taps == 1 || !full_width_avx512()) return 0;
    return channels >= 64 ? 64 : channels >= 32 ? 32 : 0;
}

// One piece of a quantized operand whose group scale does not vary along a pass's
// reduction: the whole tensor when its groups run along an output-side axis (or there is one
// group), else one exponent class with the other classes zeroed.
struct Piece {
    const int8_t *values = nullptr;
    std::vector<int8_t> storage;
    int axis = -1;               // tensor axis the scale varies along; -1: constant
    std::vector<double> scales;  // S 2^-e / qmax, per index along `axis`, or one value

    double scale(int64_t index) const { return axis < 0 ? scales[0] : scales[size_t(index)]; }
    // The scale along `along` (extent `extent`) as a kernel input; constant when the piece's
    // scale varies along another axis or none.
    std::vector<double> table(int along, int64_t extent) const {
        std::vector<double> t(static_cast<size_t>(extent));
        for (int64_t i = 0; i < extent; i++) t[size_t(i)] = axis == along ? scale(i) : scales[0];
        return t;
    }
};

// The tensor axis a quantized tensor's groups run along: -1 none, -2 blocks.
int grouped_axis(const QuantizedTensor &q) {
    switch (q.format.axis) {
        case GroupAxis::none:
            return -1;
        case GroupAxis::sample:
            return 0;
        case GroupAxis::channel:
            return q.role == TensorRole::weight ? 0 : 1;
        case GroupAxis::block:
            return -2;
    }
    return -2;
}

double scale_of(const QuantizedTensor &q, int exponent) {
    return group_scale(q.scale, exponent) / double(q.format.qmax());
}

// Splits q into pieces whose scale varies at most along one of `output_axes`.
std::vector<Piece> split(const QuantizedTensor &q, std::initializer_list<int> output_axes) {
    const int axis = grouped_axis(q);
    std::vector<Piece> pieces;
    if (axis == -1 || std::find(output_axes.begin(), output_axes.end(), axis) != output_axes.end()) {
        Piece p;
        p.values = q.values.data();
        p.axis = axis;
        for (uint8_t e : q.group_exponents) p.scales.push_back(scale_of(q, e));
        pieces.push_back(std::move(p));
        return pieces;
    }
    // Exponent classes: every element of a class has the same power-of-two group factor.
    const std::set<int> exponents(q.group_exponents.begin(), q.group_exponents.end());
    for (int e : exponents) {
        Piece p;
        p.storage.assign(q.values.size(), 0);
        bool any = false;
        for (int64_t k = 0; k < q.numel(); k++) {
            if (q.group_exponents[size_t(q.view.group_of(k))] == e && q.values[size_t(k)] != 0) {
                p.storage[size_t(k)] = q.values[size_t(k)];
                any = true;
            }
        }
        if (!any) continue;
        p.values = p.storage.data();
        p.scales = {scale_of(q, e)};
        pieces.push_back(std::move(p));
    }
    if (pieces.empty()) {  // all zero: one zero piece keeps the callers simple
        Piece p;
        p.values = q.values.data();
        p.scales = {0.0};
        pieces.push_back(std::move(p));
    }
    return pieces;
}

// Group factors that vary along a reduction, as left shifts applied before accumulating
// (method.md section 4): shift(g) = e_max - e_g for each group g along it, e_max the largest
// exponent among the groups that hold a non-zero value (an all-zero group, e.g. a channel a
// ReLU silenced, has the cap exponent and adds nothing whatever its shift: 0). Fills `shifts`
// and returns e_max, or nothing where every group is zero (the classes path has that case).
std::optional<int> shifts_below_largest_exponent(const std::vector<uint8_t> &exponents,
                                                 const std::vector<bool> &nonzero, std::vector<uint8_t> &shifts) {
    int highest = -1;
    for (size_t g = 0; g < exponents.size(); g++)
        if (nonzero[g]) highest = std::max(highest, int(exponents[g]));
    if (highest < 0) return std::nullopt;
    for (size_t g = 0; g < exponents.size(); g++) shifts[g] = nonzero[g] ? uint8_t(highest - int(exponents[g])) : 0;
    return highest;
}

// The largest shifted weight a kernel holds exactly: int16 for the pairs, int8 for the 4-term
// u8 x i8 variant (VNNI), which offsets its weights by +128 to uint8.
int64_t largest_shifted_weight(bool four_term) {
    return four_term ? std::numeric_limits<int8_t>::max() : std::numeric_limits<int16_t>::max();
}

// Whether `terms` products of |q| <= qmax with weights of |w| <= largest_weight (shifted) sum
// within int32, the 4-term variant's offset of the weights included.
bool shifted_sum_fits(int64_t terms, int64_t qmax, int64_t largest_weight, bool four_term) {
    return terms * qmax * (largest_weight + (four_term ? kFourTermWeightOffset : 0)) < (int64_t{1} << 31);
}

// Backward-data reduces over the weights' output channels, along which their group scales
// vary. The kernels apply them as shifts of the weights (above): one pass, one scale
// S 2^-e_max / qmax. Returns that piece and fills `shifts`, or nothing where shifts do not
// apply: weights not grouped per output channel, a shifted weight past what the kernel holds
// (largest_shifted_weight), or a sum that could pass int32. Then the caller splits W into
// exponent classes, one pass each.
std::optional<Piece> shifted_weights(const QuantizedTensor &errors, const QuantizedTensor &weights, int64_t terms,
                                     bool four_term, std::vector<uint8_t> &shifts) {
    if (grouped_axis(weights) != 0 || weights.group_exponents.empty()) return std::nullopt;
    const size_t per_channel = weights.values.size() / shifts.size();
    std::vector<bool> nonzero(shifts.size());
    for (size_t o = 0; o < shifts.size(); o++) {
        const auto first = weights.values.begin() + std::ptrdiff_t(o * per_channel);
        nonzero[o] = std::any_of(first, first + std::ptrdiff_t(per_channel), [](int8_t q) { return q != 0; });
    }
    const std::optional<int> highest = shifts_below_largest_exponent(weights.group_exponents, nonzero, shifts);
    if (!highest) return std::nullopt;
    const int64_t largest = int64_t(weights.format.qmax()) << *std::max_element(shifts.begin(), shifts.end());
    if (largest > largest_shifted_weight(four_term) ||
        !shifted_sum_fits(terms, errors.format.qmax(), largest, four_term)) {
        std::fill(shifts.begin(), shifts.end(), 0);
        return std::nullopt;
    }
    Piece p;
    p.values = weights.values.data();
    p.scales = {scale_of(weights, *highest)};
    return p;
}

// Forward reduces over the input's channels. Activations grouped per channel vary along
// it: their group factors become shifts of the weights per input channel (above), one pass
// with one scale S 2^-e_max / qmax instead of one per exponent class. Returns that piece and
// fills `shifts`, or nothing where the input is not grouped per channel or is all zero; the
// caller checks that the shifted weights fit the kernel that runs.
std::optional<Piece> shifted_input_channels(const QuantizedTensor &input, std::vector<uint8_t> &shifts) {
    if (grouped_axis(input) != 1 || input.group_exponents.empty()) return std::nullopt;
    const int64_t N = input.shape[0], C = input.shape[1], plane = input.shape[2] * input.shape[3];
    std::vector<bool> nonzero(size_t(C), false);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t c = 0; c < C; c++) {
            if (nonzero[size_t(c)]) continue;
            const int8_t *first = input.values.data() + (n * C + c) * plane;
            nonzero[size_t(c)] = std::any_of(first, first + plane, [](int8_t q) { return q != 0; });
        }
    }
    const std::optional<int> highest = shifts_below_largest_exponent(input.group_exponents, nonzero, shifts);
    if (!highest) return std::nullopt;
    Piece p;
    p.values = input.values.data();
    p.scales = {scale_of(input, *highest)};
    return p;
}

// conv_backward_data_narrow's weights: shifted left by shift(o), then `offset` added to make
// them unsigned; `largest` is the largest offset weight. Nothing where they do not fit uint8,
// or where the int32 sums of `terms` products with errors of |q| <= error_qmax could overflow.
struct OffsetWeights {
    int offset = 0;
    int64_t largest = 0;
};

std::optional<OffsetWeights> offset_weights(const int8_t *w, const Shape &w_shape, const std::vector<uint8_t> &shifts,
                                            int64_t terms, int64_t error_qmax) {
    const int64_t per_channel = w_shape[1] * w_shape[2] * w_shape[3];
    int64_t lowest = 0, highest = 0;
    for (int64_t o = 0; o < w_shape[0]; o++) {
        for (int64_t i = 0; i < per_channel; i++) {
            const int64_t v = int64_t(w[o * per_channel + i]) * (int64_t{1} << shifts[size_t(o)]);
            lowest = std::min(lowest, v);
            highest = std::max(highest, v);
        }
    }
    const int64_t largest = highest - lowest;
    if (largest > std::numeric_limits<uint8_t>::max()) return std::nullopt;
    if (terms * error_qmax * largest >= (int64_t{1} << 31)) return std::nullopt;
    return OffsetWeights{int(-lowest), largest};
}

// Runs `pass(a_piece, b_piece, out, accumulate)` for every pair of pieces and writes their
// sum to `out`, or adds it (`accumulate`): one pass, straight into the output, in the common
// case; else the pieces' results summed in double, rounded once, then written or added.
template <class Pass>
void sum_over_pieces_into(const std::vector<Piece> &a, const std::vector<Piece> &b, Tensor &out, bool accumulate,
                          Pass pass) {
    if (a.size() == 1 && b.size() == 1) {
        pass(a[0], b[0], out, accumulate);
        return;
    }
    std::vector<double> total(size_t(out.numel()), 0.0);
    Tensor part = Tensor::uninitialized(out.shape());
    for (const Piece &pa : a) {
        for (const Piece &pb : b) {
            pass(pa, pb, part, false);
            for (int64_t k = 0; k < part.numel(); k++) total[size_t(k)] += part[k];
        }
    }
    for (int64_t k = 0; k < out.numel(); k++)
        out[k] = accumulate ? out[k] + float(total[size_t(k)]) : float(total[size_t(k)]);
}

// The same into a new tensor, for passes that never accumulate: `pass(a_piece, b_piece, out)`.
template <class Pass>
Tensor sum_over_pieces(const std::vector<Piece> &a, const std::vector<Piece> &b, const Shape &out_shape, Pass pass) {
    Tensor out = Tensor::uninitialized(out_shape);
    sum_over_pieces_into(a, b, out, false, [&](const Piece &pa, const Piece &pb, Tensor &o, bool) { pass(pa, pb, o); });
    return out;
}

// A 1x1 convolution at stride s > 1 reads only every s-th pixel of the input; the forward
// and weight-gradient kernels would pack all of them. So they run at stride 1 on a view of
// the pixels it reads (the kernels take any x stride). (Backward-data likewise writes a view
// of the pixels it reaches: backward_data_by_phases.)
bool strided_pointwise(const Shape &weights, const ConvGeometry &g) { return weights[2] == 1 && g.stride > 1; }

// Backward-data's channel-lane tile (channel_lane_tile over its output channels, a stride-2
// layer's merged phases counted; 0: lanes along x) and the merged channels' phase block that
// tile needs: each vector one phase's channels, so that it skips the phase's zero taps as the
// position lanes do (merge_phases). Where the layer's channels are not whole vectors the
// merged phases keep lanes along x.
constexpr int64_t kChannelLaneVector = 16;  // tuned/conv_backward_data*_channels_*.params
struct DataLanes {
    int64_t lanes = 0, phase_block = 1;
};
DataLanes backward_data_lanes(bool vnni, const Shape &w_shape, const ConvGeometry &g) {
    const int64_t C = w_shape[1], taps = w_shape[2] * w_shape[3];
    if (g.stride == 1 || strided_pointwise(w_shape, g)) return {channel_lane_tile(vnni, C, taps), 1};
    if (C % kChannelLaneVector != 0) return {};
    const int64_t lanes = channel_lane_tile(vnni, g.stride * g.stride * C, taps);
    return {lanes, lanes > 0 ? kChannelLaneVector : 1};
}

// (N, C, H, W) -> the view (N, C, OH, OW) of the pixels (y s, x s): a kernel's input (T const),
// or the output of a 1x1 strided layer's backward-data.
template <class T>
Buffer<T> strided_view(T *data, const Shape &full, const Shape &out_shape, int stride) {
    halide_dimension_t dims[4] = {{0, int(out_shape[3]), stride},
                                  {0, int(out_shape[2]), int(stride * full[3])},
                                  {0, int(full[1]), int(full[2] * full[3])},
                                  {0, int(full[0]), int(full[1] * full[2] * full[3])}};
    return Buffer<T>(data, 4, dims);
}

// Backward-data at stride s > 1: the pixels s Y + py, s X + px of phase (px, py) of dA are fed
// only by the taps kx = (px + p) mod s + s t (and likewise in y), which read
// E(X + (px + p) / s - t): a stride-1 backward-data of a sub-kernel. No multiply meets the
// zeros of a dilated E. All s x s phases are one kernel call (`phases` = s), from one kernel
// of s s C output channels, channel s (s c + py) + px holding phase (px, py)'s sub-kernel over
// the window of E all the phases read (zeros where a phase has fewer taps: a 3x3 layer's
// phases have 1x1 to 2x2 taps, merged 2x2); the kernel stores each phase's result at its
// pixels, the column phases interleaved into dense vectors. Session 8, against a call per
// phase storing its pixels one by one into a strided view of dA (those stores ~30% of its
// time), 3 and 4 alternating runs, paired medians: 16->32 s2 +61-67% integer, +70% float32;
// 32->64 s2 +18-34%, +5-12%. (Merging only the column phases, one call per row phase, gave
// +7-9%: its row phases' short windows cost more than the merged kernel's zero taps.)
// Session 24: the kernels with lanes along x are told which slots of a 2x2 window are each
// phase's taps (window_taps), and skip the others: 9 of a 3x3 layer's 16 (phase, slot)
// products, where they multiplied 7 zeros (docs/PERFORMANCE.md). Session 25: the kernels with
// lanes along channels too, their merged channels laid out in vectors of one phase
// (backward_data_lanes).

// Taps of one phase along one axis: it reads E(X + first - t) through W(k0 + s t), t < taps.
struct PhaseTaps {
    int64_t k0, taps, first;
};

PhaseTaps phase_taps(int64_t phase, int64_t K, const ConvGeometry &g) {
    const int64_t s = g.stride, k0 = (phase + g.pad) % s;
    return {k0, k0 < K ? (K - k0 + s - 1) / s : 0, (phase + g.pad) / s};
}

// The window of E that the phases read along one axis: offsets first - u for u < width,
// first being the largest offset any phase reads (the kernels' stride-1 padding).
struct MergedWindow {
    int64_t first = 0, width = 0;
};

MergedWindow merged_window(const std::vector<PhaseTaps> &phases) {
    int64_t first = INT64_MIN, last = INT64_MAX;
    for (const PhaseTaps &t : phases) {
        if (t.taps == 0) continue;
        first = std::max(first, t.first);
        last = std::min(last, t.first - t.taps + 1);
    }
    return first == INT64_MIN ? MergedWindow{} : MergedWindow{first, first - last + 1};
}

// The s x s phases' sub-kernels merged into one kernel (O, s s C, width, width) over the window
// of E they all read: output channel s (s c + py) + px holds phase (px, py) of channel c (in
// blocks of `block` channels of one phase: channel s s block (c / block) + block (s py + px) +
// c mod block, C a multiple of block), zeros where a phase has fewer taps.
template <class T>
struct MergedPhases {
    std::vector<T> weights;
    Shape shape;
    int pad = 0;
    int window_taps = kAllWindowTaps;  // which slots of a 2x2 window are each phase's taps
};

template <class T>
MergedPhases<T> merge_phases(const T *w, const Shape &w_shape, const ConvGeometry &g, int64_t block) {
    const int64_t O = w_shape[0], C = w_shape[1], K = w_shape[2], s = g.stride;
    std::vector<PhaseTaps> axis;
    for (int64_t phase = 0; phase < s; phase++) axis.push_back(phase_taps(phase, K, g));
    const MergedWindow window = merged_window(axis);
    const int64_t width = window.width;
    MergedPhases<T> merged;
    merged.shape = {O, s * s * C, width, width};
    merged.pad = int(window.first);
    merged.weights.assign(size_t(shape_numel(merged.shape)), T(0));
    // Tap t of a phase reads E(X + first_phase - t): window position window.first - that.
    auto at = [&](const PhaseTaps &taps, int64_t t) { return window.first - (taps.first - t); };
    // The kernels read the window flipped (slot width - 1 - position; generators/format.h).
    if (s == 2 && width == 2) {
        merged.window_taps = 0;
        for (int64_t phase = 0; phase < s; phase++)
            for (int64_t t = 0; t < axis[size_t(phase)].taps; t++)
                merged.window_taps |= 1 << (2 * phase + (width - 1 - at(axis[size_t(phase)], t)));
    }
    for (int64_t o = 0; o < O; o++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t py = 0; py < s; py++)
                for (int64_t px = 0; px < s; px++) {
                    const PhaseTaps &rows = axis[size_t(py)], &columns = axis[size_t(px)];
                    const int64_t channel = s * s * block * (c / block) + block * (s * py + px) + c % block;
                    T *kernel = merged.weights.data() + ((o * s * s * C + channel) * width * width);
                    for (int64_t ty = 0; ty < rows.taps; ty++)
                        for (int64_t tx = 0; tx < columns.taps; tx++) {
                            const int64_t ky = rows.k0 + s * ty, kx = columns.k0 + s * tx;
                            kernel[at(rows, ty) * width + at(columns, tx)] = w[((o * C + c) * K + ky) * K + kx];
                        }
                }
    return merged;
}

// Runs backward-data into `out` (N, C, H, W) through `pass(weights, weights_shape, phases,
// pad_x, pad_y, window_taps, output, accumulate)`, writing it, or adding to what is there (`accumulate`;
// the kernels read `output` as their addend): one call, on the merged phases at stride 2 (in
// blocks of `phase_block` channels, the kernel's; see merge_phases). A
// 1x1 strided layer reaches only the pixels (s Y, s X): one call storing into a strided view
// of those, after zeros unless it accumulates (pair and float32 kernels only; merged phases
// would multiply three phases' zero weights, and a dense call spread out after was 1.3-1.4x
// slower, session 8).
template <class T, class Pass>
void backward_data_by_phases(const T *weights, const Shape &w_shape, const ConvGeometry &g, Tensor &out,
                             bool accumulate, int64_t phase_block, Pass pass) {
    if (g.stride == 1) {
        pass(weights, w_shape, 1, g.pad, g.pad, kAllWindowTaps, nchw(out.data(), out.shape()), accumulate);
        return;
    }
    if (strided_pointwise(w_shape, g)) {
        const Shape &f = out.shape();
        const Shape reached = {f[0], f[1], (f[2] - 1) / g.stride + 1, (f[3] - 1) / g.stride + 1};
        if (!accumulate) std::fill(out.data(), out.data() + out.numel(), 0.0f);
        pass(weights, w_shape, 1, 0, 0, kAllWindowTaps, strided_view(out.data(), f, reached, g.stride), accumulate);
        return;
    }
    const MergedPhases<T> merged = merge_phases(weights, w_shape, g, phase_block);
    pass(merged.weights.data(), merged.shape, int(g.stride), merged.pad, merged.pad, merged.window_taps,
         nchw(out.data(), out.shape()), accumulate);
}

// backward-data adds into `into` in place: it must be one dense block.
void check_contiguous_gradient(const Tensor &into, const char *what) {
    if (!into.is_contiguous())
        throw std::invalid_argument(
            fmt::format("{}: the gradient to add to (shape {}) is not contiguous", what, shape_string(into.shape())));
}

void check_errors_shape(const Shape &errors, const Shape &input_shape, const Shape &weights, const ConvGeometry &g) {
    const Shape out_shape = conv_output_shape(input_shape, weights, g);
    if (errors != out_shape)
        throw std::invalid_argument(fmt::format("conv_backward_data: errors {} do not match the output shape {}",
                                                shape_string(errors), shape_string(out_shape)));
}

// Errors checked (check_errors_shape) against out's shape, the layer's input.
void backward_data_float(const Tensor &errors, const Tensor &weights, const ConvGeometry &g, Tensor &out,
                         bool accumulate) {
    const Tensor e = errors.contiguous(), w = weights.contiguous();
    auto eb = nchw(e.data(), e.shape());
    const bool vnni = kernels::conv_backward_data_float.selected_isa() == Isa::avx512_vnni;
    const DataLanes lanes = backward_data_lanes(vnni, w.shape(), g);
    auto &kernel = lanes.lanes == 64   ? kernels::conv_backward_data_float_channels_64
                   : lanes.lanes == 32 ? kernels::conv_backward_data_float_channels_32
                                       : kernels::conv_backward_data_float;
    backward_data_by_phases(
        w.data(), w.shape(), g, out, accumulate, lanes.phase_block,
        [&](const float *wd, const Shape &ws, int phases, int pad_x, int pad_y, int window_taps, Buffer<float> o,
            bool add) { kernel(eb, nchw(wd, ws), phases, pad_x, pad_y, window_taps, o, add, o); });
}

}  // namespace

Shape conv_output_shape(const Shape &input, const Shape &weights, const ConvGeometry &g) {
    check_rank4(input, "input");
    check_rank4(weights, "weights");
    const int64_t K = weights[2];
    if (weights[3] != K)
        throw std::invalid_argument(fmt::format("conv: weights {} are not square", shape_string(weights)));
    if (weights[1] != input[1])
        throw std::invalid_argument(fmt::format("conv: weights {} do not match the {} channels of input {}",
                                                shape_string(weights), input[1], shape_string(input)));
    if (g.stride != 1 && g.stride != 2)
        throw std::invalid_argument(fmt::format("conv: stride {} is not 1 or 2", g.stride));
    if (g.pad < 0 || g.pad >= K) throw std::invalid_argument(fmt::format("conv: padding {} outside [0, {})", g.pad, K));
    const int64_t oh = (input[2] + 2 * g.pad - K) / g.stride + 1, ow = (input[3] + 2 * g.pad - K) / g.stride + 1;
    if (input[2] + 2 * g.pad < K || input[3] + 2 * g.pad < K)
        throw std::invalid_argument(fmt::format("conv: input {} is smaller than the kernel", shape_string(input)));
    return {input[0], weights[0], oh, ow};
}

Tensor conv_forward(const Tensor &input, const Tensor &weights, const ConvGeometry &g) {
    const Shape out_shape = conv_output_shape(input.shape(), weights.shape(), g);
    const Tensor a = input.contiguous(), w = weights.contiguous();
    Tensor out = Tensor::uninitialized(out_shape);
    auto wb = nchw(w.data(), w.shape());
    auto ob = nchw(out.data(), out_shape);
    if (strided_pointwise(w.shape(), g)) {
        kernels::conv_forward_float(strided_view(a.data(), a.shape(), out_shape, g.stride), wb, 1, 0, ob);
        return out;
    }
    const bool vnni = kernels::conv_forward_float.selected_isa() == Isa::avx512_vnni;
    const int64_t lanes = channel_lane_tile(vnni, out_shape[1], w.size(2) * w.size(3));
    auto &kernel = lanes == 64   ? kernels::conv_forward_float_channels_64
                   : lanes == 32 ? kernels::conv_forward_float_channels_32
                                 : kernels::conv_forward_float;
    kernel(nchw(a.data(), a.shape()), wb, g.stride, g.pad, ob);
    return out;
}

Tensor conv_backward_data(const Tensor &errors, const Tensor &weights, const Shape &input_shape,
                          const ConvGeometry &g) {
    check_errors_shape(errors.shape(), input_shape, weights.shape(), g);
    Tensor out = Tensor::uninitialized(input_shape);
    backward_data_float(errors, weights, g, out, false);
    return out;
}

void conv_backward_data_add(const Tensor &errors, const Tensor &weights, const ConvGeometry &g, Tensor &into) {
    check_contiguous_gradient(into, "conv_backward_data_add");
    check_errors_shape(errors.shape(), into.shape(), weights.shape(), g);
    backward_data_float(errors, weights, g, into, true);
}

Tensor conv_backward_weight(const Tensor &errors, const Tensor &input, int kernel, const ConvGeometry &g) {
    const Shape w_shape = {errors.shape().size() == 4 ? errors.size(1) : 0,
                           input.shape().size() == 4 ? input.size(1) : 0, kernel, kernel};
    const Shape out_shape = conv_output_shape(input.shape(), w_shape, g);
    if (errors.shape() != out_shape)
        throw std::invalid_argument(fmt::format("conv_backward_weight: errors {} do not match the output shape {}",
                                                shape_string(errors.shape()), shape_string(out_shape)));
    const Tensor e = errors.contiguous(), a = input.contiguous();
    Tensor out = Tensor::uninitialized(w_shape);
    auto eb = nchw(e.data(), e.shape());
    auto ob = nchw(out.data(), w_shape);
    if (strided_pointwise(w_shape, g)) {
        kernels::conv_backward_weight_float(eb, strided_view(a.data(), a.shape(), out_shape, g.stride), 1, 0, ob);
    } else if (kernel == 3 && kernels::conv_backward_weight_float.selected_isa() == Isa::avx512_vnni &&
               full_width_avx512()) {
        // A window row's 3 taps per register tile (schedules/tuned/conv_backward_weight_float_3x3_*:
        // Zen 5, 1.15-1.5x the one-tap tile on ResNet-20's 3x3 layers), 32 output channels a
        // tile where the layer has them.
        auto &kernel_3x3 =
            w_shape[0] >= 32 ? kernels::conv_backward_weight_float_3x3_32 : kernels::conv_backward_weight_float_3x3_16;
        kernel_3x3(eb, nchw(a.data(), a.shape()), g.stride, g.pad, ob);
    } else {
        kernels::conv_backward_weight_float(eb, nchw(a.data(), a.shape()), g.stride, g.pad, ob);
    }
    return out;
}

Tensor conv_forward(const QuantizedTensor &input, const QuantizedTensor &weights, const ConvGeometry &g) {
    check_role(input, TensorRole::activation, "input");
    check_role(weights, TensorRole::weight, "weights");
    const Shape out_shape = conv_output_shape(input.shape, weights.shape, g);
    const int64_t N = input.shape[0], C = input.shape[1], O = weights.shape[0], K = weights.shape[2];
    const int64_t terms = C * K * K, qmax_a = input.format.qmax();
    check_no_overflow(terms, input, weights, "conv_forward");
    // Activations grouped per channel: one pass on weights shifted per input channel where
    // the kernel that runs has room (see shifted_input_channels), else exponent classes.
    // Unsigned inputs take the uint8 kernel where its weights fit int8 and, on the narrow-sum
    // kernels (not VNNI, whose 4-term dot products sum straight into int32), its int16 sums fit
    // (see narrow_chunk); the signed kernels take shifted weights within int16 (pairs) or int8
    // (4-term, weights offset to uint8).
    const bool four_term = kernels::conv_forward.selected_isa() == Isa::avx512_vnni;
    std::vector<uint8_t> shifts(size_t(C), 0);
    std::vector<Piece> input_pieces;
    auto unsigned_chunk = [&](int64_t largest_weight) {
        if (input.format.has_sign || largest_weight > std::numeric_limits<int8_t>::max()) return 0;
        if (!shifted_sum_fits(terms, qmax_a, largest_weight, false)) return 0;
        return four_term ? 1 : narrow_chunk(C, K * K, qmax_a * largest_weight);
    };
    int chunk = unsigned_chunk(weights.format.qmax());
    if (auto shifted = shifted_input_channels(input, shifts)) {
        const int64_t largest_weight = weights.format.qmax() << *std::max_element(shifts.begin(), shifts.end());
        const bool signed_fit = largest_weight <= largest_shifted_weight(four_term) &&
                                shifted_sum_fits(terms, qmax_a, largest_weight, four_term);
        const int shifted_chunk = unsigned_chunk(largest_weight);
        if (shifted_chunk > 0 || signed_fit) {
            chunk = shifted_chunk;
            input_pieces.push_back(std::move(*shifted));
        }
    }
    if (input_pieces.empty()) {
        std::fill(shifts.begin(), shifts.end(), 0);
        input_pieces = split(input, {0});
    }
    Buffer<const uint8_t> shift_buffer(shifts.data(), {int(C)});
    // Output side: sample n of the input, output channel o (axis 0) of the weights.
    return sum_over_pieces(
        input_pieces, split(weights, {0}), out_shape, [&](const Piece &a, const Piece &w, Tensor &out) {
            const std::vector<double> sa = a.table(0, N), sw = w.table(0, O);
            auto wb = nchw(w.values, weights.shape);
            Buffer<const double> sab(sa.data(), {int(N)}), swb(sw.data(), {int(O)});
            auto ob = nchw(out.data(), out_shape);
            auto run = [&](Buffer<const int8_t> ab, int stride, int pad) {
                const int64_t lane_channels = chunk > 0 ? channel_lane_tile(four_term, O, K * K) : 0;
                if (lane_channels == 64) {
                    kernels::conv_forward_unsigned_channels_64(ab, wb, sab, swb, shift_buffer, stride, pad, chunk, ob);
                } else if (lane_channels == 32) {
                    kernels::conv_forward_unsigned_channels_32(ab, wb, sab, swb, shift_buffer, stride, pad, chunk, ob);
                } else if (chunk > 0 && wide_tile(four_term, stride, out_shape[3], kWideForwardWidth)) {
                    kernels::conv_forward_unsigned_wide(ab, wb, sab, swb, shift_buffer, stride, pad, chunk, ob);
                } else if (chunk > 0) {
                    kernels::conv_forward_unsigned(ab, wb, sab, swb, shift_buffer, stride, pad, chunk, ob);
                } else {
                    kernels::conv_forward(ab, wb, sab, swb, shift_buffer, stride, pad, ob);
                }
            };
            if (strided_pointwise(weights.shape, g)) {
                run(strided_view(a.values, input.shape, out_shape, g.stride), 1, 0);
            } else {
                run(nchw(a.values, input.shape), g.stride, g.pad);
            }
        });
}

namespace {

void check_backward_data(const QuantizedTensor &errors, const QuantizedTensor &weights, const Shape &input_shape,
                         const ConvGeometry &g) {
    check_role(errors, TensorRole::error, "errors");
    check_role(weights, TensorRole::weight, "weights");
    check_errors_shape(errors.shape, input_shape, weights.shape, g);
}

// Operands checked (check_backward_data) against out's shape, the layer's input.
void backward_data_integer(const QuantizedTensor &errors, const QuantizedTensor &weights, const ConvGeometry &g,
                           Tensor &out, bool accumulate) {
    const Shape &input_shape = out.shape();
    const int64_t N = input_shape[0], C = input_shape[1], O = weights.shape[0], K = weights.shape[2];
    check_no_overflow(O * K * K, errors, weights, "conv_backward_data");
    // The 4-term u8 x i8 variant (VNNI) takes shifts within int8 and no narrow sums.
    const bool four_term = kernels::conv_backward_data.selected_isa() == Isa::avx512_vnni;
    std::vector<uint8_t> shifts(size_t(O), 0);
    std::vector<Piece> weight_pieces;
    if (auto shifted = shifted_weights(errors, weights, O * K * K, four_term, shifts)) {
        weight_pieces.push_back(std::move(*shifted));
    } else {
        weight_pieces = split(weights, {});
    }
    Buffer<const uint8_t> shift_buffer(shifts.data(), {int(O)});
    const DataLanes lanes = backward_data_lanes(four_term, weights.shape, g);
    // Narrow sums where the 4-term kernel (VNNI) does not run, the offset weights fit uint8, a
    // chunk of 4 output channels fits int16 (see narrow_chunk) and the window is not 1x1.
    // Output side: sample n of the errors; the weights' output channels are the reduction.
    sum_over_pieces_into(
        split(errors, {0}), weight_pieces, out, accumulate,
        [&](const Piece &e, const Piece &w, Tensor &piece_out, bool piece_accumulate) {
            const std::vector<double> se = e.table(0, N), sw = w.table(1, C);
            auto eb = nchw(e.values, errors.shape);
            Buffer<const double> seb(se.data(), {int(N)}), swb(sw.data(), {int(C)});
            std::optional<OffsetWeights> offset;
            if (!four_term) offset = offset_weights(w.values, weights.shape, shifts, O * K * K, errors.format.qmax());
            backward_data_by_phases(
                w.values, weights.shape, g, piece_out, piece_accumulate, lanes.phase_block,
                [&](const int8_t *wd, const Shape &ws, int phases, int pad_x, int pad_y, int window_taps,
                    Buffer<float> o, bool add) {
                    // A 1x1 window (1x1 layers) has too few products per position to repay
                    // the offset's correction (measured: 10-15% slower).
                    const int64_t taps = ws[2] * ws[3];
                    const int chunk =
                        offset && taps > 1 ? narrow_chunk(O, taps, errors.format.qmax() * offset->largest) : 0;
                    if (chunk > 0) {
                        kernels::conv_backward_data_narrow(eb, nchw(wd, ws), seb, swb, shift_buffer, offset->offset,
                                                           phases, pad_x, pad_y, chunk, window_taps, o, add, o);
                    } else if (lanes.lanes == 64) {
                        kernels::conv_backward_data_channels_64(eb, nchw(wd, ws), seb, swb, shift_buffer, phases, pad_x,
                                                                pad_y, window_taps, o, add, o);
                    } else if (lanes.lanes == 32) {
                        kernels::conv_backward_data_channels_32(eb, nchw(wd, ws), seb, swb, shift_buffer, phases, pad_x,
                                                                pad_y, window_taps, o, add, o);
                    } else if (wide_tile(four_term, g.stride, input_shape[3], kWideBackwardDataWidth)) {
                        kernels::conv_backward_data_wide(eb, nchw(wd, ws), seb, swb, shift_buffer, phases, pad_x, pad_y,
                                                         window_taps, o, add, o);
                    } else {
                        kernels::conv_backward_data(eb, nchw(wd, ws), seb, swb, shift_buffer, phases, pad_x, pad_y,
                                                    window_taps, o, add, o);
                    }
                });
        });
}

}  // namespace

Tensor conv_backward_data(const QuantizedTensor &errors, const QuantizedTensor &weights, const Shape &input_shape,
                          const ConvGeometry &g) {
    check_backward_data(errors, weights, input_shape, g);
    Tensor out = Tensor::uninitialized(input_shape);
    backward_data_integer(errors, weights, g, out, false);
    return out;
}

void conv_backward_data_add(const QuantizedTensor &errors, const QuantizedTensor &weights, const ConvGeometry &g,
                            Tensor &into) {
    check_contiguous_gradient(into, "conv_backward_data_add");
    check_backward_data(errors, weights, into.shape(), g);
    backward_data_integer(errors, weights, g, into, true);
}

namespace {

// Samples [first, first + count) of one weight-gradient kernel call.
struct SampleRun {
    int64_t first = 0, count = 0;
};

// A piece's scales as the weight-gradient kernels take them. A piece's scale varies along
// samples, along channels, or neither (split); along samples, sample n's scale is the largest
// one's times 2^-exponent(n), exactly (group scales S 2^-e / qmax differ by powers of two,
// method.md section 2), and a run of samples is scaled by its smallest, the others' sums
// shifted left by the difference. Along channels or constant, nothing shifts.
struct SampleScales {
    int64_t channels = 0;
    bool per_sample = false;
    double largest = 0;                 // per_sample: the largest sample scale
    std::vector<int> exponent;          // per_sample: per sample
    std::vector<double> channel_scale;  // otherwise: per channel

    SampleScales(const Piece &p, int64_t channels_, int64_t samples) : channels(channels_) {
        per_sample = p.axis == 0;
        if (!per_sample) {
            for (int64_t ch = 0; ch < channels; ch++) channel_scale.push_back(p.scale(p.axis == 1 ? ch : 0));
            return;
        }
        for (int64_t n = 0; n < samples; n++) largest = std::max(largest, p.scale(n));
        for (int64_t n = 0; n < samples; n++) {
            const double v = p.scale(n);
            // An all-zero tensor has scale 0 (and zero values): no shift.
            const int x = largest > 0 && v > 0 ? std::ilogb(largest / v) : 0;
            if (largest > 0 && (v == 0 || std::ldexp(v, x) != largest))
                throw std::logic_error("conv_backward_weight: sample scales are not powers of two apart");
            exponent.push_back(x);
        }
    }
    // The run's largest exponent: its smallest scale, the base the others shift to.
    int deepest(const SampleRun &r) const {
        int e = 0;
        if (per_sample) {
            for (int64_t n = r.first; n < r.first + r.count; n++) e = std::max(e, exponent[size_t(n)]);
        }
        return e;
    }
    int shift(int64_t n, int deep) const { return per_sample ? deep - exponent[size_t(n)] : 0; }
    // Left shift of each sample's sums, (channel, sample of the run), channels innermost.
    std::vector<uint8_t> shifts(const SampleRun &r) const {
        std::vector<uint8_t> out(size_t(channels * r.count), 0);
        const int deep = deepest(r);
        for (int64_t i = 0; i < r.count && per_sample; i++)
            std::fill_n(out.begin() + i * channels, channels, uint8_t(shift(r.first + i, deep)));
        return out;
    }
    std::vector<double> bases(const SampleRun &r) const {
        if (!per_sample) return channel_scale;
        return std::vector<double>(size_t(channels), std::ldexp(largest, -deepest(r)));
    }
};

// Whether the run's shifted sums stay inside int32: sum over its samples of largest_sum
// (a sample's largest |sum|) 2^(its error shift + its input shift) < 2^31.
bool fits_int32(const SampleScales &se, const SampleScales &sa, const SampleRun &r, double largest_sum) {
    const int deep_e = se.deepest(r), deep_a = sa.deepest(r);
    double bound = 0;
    for (int64_t n = r.first; n < r.first + r.count; n++)
        bound += std::ldexp(largest_sum, se.shift(n, deep_e) + sa.shift(n, deep_a));
    return bound < 2147483648.0;
}

// The batch as runs of samples whose shifted sums fit int32: the whole batch where it fits
// (as it does at 4 bits), else halves, recursively; one sample always fits (its shifts are 0
// and its sum passed check_no_overflow).
std::vector<SampleRun> weight_gradient_runs(const SampleScales &se, const SampleScales &sa, int64_t samples,
                                            double largest_sum) {
    std::vector<SampleRun> runs, pending = {{0, samples}};
    while (!pending.empty()) {
        const SampleRun r = pending.back();
        pending.pop_back();
        if (r.count <= 1 || fits_int32(se, sa, r, largest_sum)) {
            runs.push_back(r);
        } else {
            const int64_t half = r.count / 2;
            pending.push_back({r.first + half, r.count - half});  // popped after the first half
            pending.push_back({r.first, half});
        }
    }
    return runs;
}

}  // namespace

Tensor conv_backward_weight(const QuantizedTensor &errors, const QuantizedTensor &input, int kernel,
                            const ConvGeometry &g) {
    check_role(errors, TensorRole::error, "errors");
    check_role(input, TensorRole::activation, "input");
    if (errors.shape.size() != 4 || input.shape.size() != 4)
        throw std::invalid_argument("conv_backward_weight: errors and input must be 4-d");
    const Shape w_shape = {errors.shape[1], input.shape[1], kernel, kernel};
    const Shape out_shape = conv_output_shape(input.shape, w_shape, g);
    if (errors.shape != out_shape)
        throw std::invalid_argument(fmt::format("conv_backward_weight: errors {} do not match the output shape {}",
                                                shape_string(errors.shape), shape_string(out_shape)));
    const int64_t N = input.shape[0], C = input.shape[1], O = errors.shape[1];
    const int64_t positions = out_shape[2] * out_shape[3];
    // One sample's sum runs over its output positions; the kernels shift and add the samples'
    // sums in int32, over runs of samples that cannot overflow (weight_gradient_runs).
    check_no_overflow(positions, errors, input, "conv_backward_weight (per sample)");
    // Unsigned inputs take the uint8 kernel: on VNNI always (4-term dot products into int32),
    // elsewhere where its int16 narrow sums fit (see narrow_rows).
    const bool four_term = kernels::conv_backward_weight_unsigned.selected_isa() == Isa::avx512_vnni;
    const int chunk = input.format.has_sign ? 0
                      : four_term           ? 1
                                            : narrow_rows(out_shape[3], out_shape[2], input.format, errors.format);
    const double largest_sum = double(positions) * double(errors.format.qmax()) * double(input.format.qmax());
    // 1x1 strided: stride 1 on a view of the pixels it reads.
    const bool view = strided_pointwise(w_shape, g);
    const int stride = view ? 1 : g.stride, pad = view ? 0 : g.pad;
    const int64_t e_sample = O * out_shape[2] * out_shape[3], a_sample = C * input.shape[2] * input.shape[3];
    return sum_over_pieces(
        split(errors, {0, 1}), split(input, {0, 1}), w_shape, [&](const Piece &e, const Piece &a, Tensor &out) {
            const SampleScales se(e, O, N), sa(a, C, N);
            std::vector<double> total;
            std::vector<int32_t> sums(size_t(out.numel()));
            for (const SampleRun &run : weight_gradient_runs(se, sa, N, largest_sum)) {
                const int n0 = int(run.first), count = int(run.count);
                const std::vector<uint8_t> shift_e = se.shifts(run), shift_a = sa.shifts(run);
                Buffer<const uint8_t> seb(shift_e.data(), {int(O), count}), sab(shift_a.data(), {int(C), count});
                Shape e_run = errors.shape, a_run = input.shape, run_out = out_shape;
                e_run[0] = a_run[0] = run_out[0] = run.count;
                auto eb = nchw(e.values + n0 * e_sample, e_run);
                auto ab = view ? strided_view(a.values + n0 * a_sample, a_run, run_out, g.stride)
                               : nchw<const int8_t>(a.values + n0 * a_sample, a_run);
                auto ob = nchw(sums.data(), w_shape);
                if (chunk > 0) {
                    // VNNI: fewer output channels than the main kernel's tile of 32 take a
                    // kernel tiled by 16: 2 ymm (session 11, Zen 4: 16->16 layers +48%), or
                    // one zmm where AVX-512 runs at full width (session 13, Zen 5: +15%).
                    if (four_term && O < 32 && full_width_avx512()) {
                        kernels::conv_backward_weight_unsigned_16_wide(eb, ab, seb, sab, stride, pad, chunk, ob);
                    } else if (four_term && O < 32) {
                        kernels::conv_backward_weight_unsigned_16(eb, ab, seb, sab, stride, pad, chunk, ob);
                    } else if (four_term && O >= 64 && stride == 1 && full_width_avx512()) {
                        // 64 output channels (4 zmm) x 2 inputs, the same accumulators as the
                        // main 32 x 4 in half the input pointers (session 17, Zen 5: 64->64
                        // +15-25%; the stride-2 layer measured no faster).
                        kernels::conv_backward_weight_unsigned_64(eb, ab, seb, sab, stride, pad, chunk, ob);
                    } else {
                        kernels::conv_backward_weight_unsigned(eb, ab, seb, sab, stride, pad, chunk, ob);
                    }
                } else {
                    kernels::conv_backward_weight(eb, ab, seb, sab, stride, pad, ob);
                }
                // The run's total times its smallest scales, in double: exact but for the rounding.
                const std::vector<double> base_e = se.bases(run), base_a = sa.bases(run);
                const int64_t taps = w_shape[2] * w_shape[3];
                if (total.empty()) total.assign(size_t(out.numel()), 0.0);
                for (int64_t k = 0; k < out.numel(); k++) {
                    const int64_t o = k / (C * taps), c = (k / taps) % C;
                    total[size_t(k)] += double(sums[size_t(k)]) * base_e[size_t(o)] * base_a[size_t(c)];
                }
            }
            for (int64_t k = 0; k < out.numel(); k++) out[k] = float(total[size_t(k)]);
        });
}

}  // namespace lowbit

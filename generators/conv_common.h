// Pieces shared by the three convolution generators: operand packing and the correlation
// they all reduce to. Tensors are NCHW / OIHW in memory, so Halide sees them innermost
// first: activations (x, y, c, n), weights (kx, ky, c, o).
#pragma once

#include <stdexcept>
#include "../schedules/cuda.h"
#include "../schedules/pipelines.h"
#include "../schedules/x86.h"
#include "Halide.h"
#include "format.h"

namespace lowbit::conv {

using namespace Halide;

// Estimates: a ResNet-20 32->32 layer at 16x16, batch 128.
constexpr int kEstimateBatch = 128, kEstimateChannels = 32, kEstimateSize = 16, kEstimateKernel = 3;

// Estimates for the shipped autoschedulers, one shape per kind of tensor.
const Region kActivationEstimate = {
    {0, kEstimateSize}, {0, kEstimateSize}, {0, kEstimateChannels}, {0, kEstimateBatch}};
const Region kWeightEstimate = {
    {0, kEstimateKernel}, {0, kEstimateKernel}, {0, kEstimateChannels}, {0, kEstimateChannels}};

// Operands are packed as groups of `group` consecutive channels (see ConvPipeline); a
// channel past the end reads as 0.
inline Expr channel_in_group(const Expr &group_index, const Expr &j, int group) { return group * group_index + j; }

// Which dot product the integer kernels use on `target`: 4-term u8 x i8 (vpdpbusd) where
// Halide 14 emits it (the avx512_sapphirerapids feature), else 2-term i16 pairs.
// `requested` (a generator parameter) overrides: 0 = choose by target.
inline int dot_width(const Target &target, int requested) {
    if (requested != 0) return requested;
    return target.has_feature(Target::AVX512_SapphireRapids) ? 4 : 2;
}

// Defines p.packed_input(j, m, phase, y, channel_group, n) as zeros, then value(ix, iy) (using
// p's j, channel_group and n) written at column offset_x + ix, row offset_y + iy, for
// (ix, iy) over the source's width x height: the zero-padded, packed operand, in two
// definitions that both vectorize to dense loads and stores (see ConvPipeline::interior).
// Columns are split into `stride` phases, the stride of the correlation that reads it: column
// u lies at (m, phase) = (u / stride, u % stride), so that the columns x stride + kx a vector
// of outputs x reads through tap kx are adjacent, (x + kx / stride, kx % stride): dense loads
// at stride 2 too, where an unsplit row needs two loads and a deinterleave per tap. Records
// the stride and the placement in p (define_correlation, define_offset_correction).
template <class Value>
void define_padded_input(schedules::ConvPipeline &p, const Expr &width, const Expr &height, const Expr &offset_x,
                         const Expr &offset_y, const Expr &stride, Value value) {
    p.interior = RDom({{0, width}, {0, height}}, "interior");
    p.placed_x = offset_x + p.interior.x;
    p.placed_y = offset_y + p.interior.y;
    p.stride = stride;
    const Expr written = value(p.interior.x, p.interior.y);
    p.packed_input(p.j, p.x, p.phase, p.y, p.channel_group, p.n) = cast(written.type(), 0);
    p.packed_input(p.j, p.placed_x / stride, p.placed_x % stride, p.placed_y, p.channel_group, p.n) = written;
}

// The packed input (define_padded_input) that output column p.x reads through tap kx: column
// x stride + kx, of row `row`.
inline Expr packed_input_at(schedules::ConvPipeline &p, const Expr &j, const Expr &kx, const Expr &row,
                            const Expr &channel_group) {
    return p.packed_input(j, p.x + kx / p.stride, kx % p.stride, row, channel_group, p.n);
}

// Backward-data of a stride-s layer computes the s x s phases of dA in one call (s = 1: the
// plain correlation): output pixel (s X + px, s Y + py) is the correlation's sum at (X, Y)
// for output channel s (s k + py) + px, the runtime passing the phases' sub-kernels merged
// into one kernel of s s C channels (runtime/conv.cpp). The column phases' stores then
// interleave into dense vectors, where a call per phase stored each phase's pixels one by one.
// The merged channels come in blocks of p.phase_block channels of one phase (1: channel
// s (s k + py) + px; B: channel s s B (k / B) + B (s py + px) + k mod B, see set_phase_taps).
// Returns `sum` (an expression in p's x, y, k, n) read at that place for output (x, y, k, n).
inline Expr interleave_phases(schedules::ConvPipeline &p, const Expr &sum, const Expr &phases) {
    Func phase_sum("phase_sum");
    phase_sum(p.x, p.y, p.k, p.n) = sum;
    p.phases = phases;
    const int b = p.phase_block;
    const Expr phase = phases * (p.y % phases) + p.x % phases;
    // s s b (k / b) + b phase + k mod b, written so that at phases 1 its bounds are k's.
    const Expr merged =
        b == 1 ? phases * phases * p.k + phase : p.k + (phases * phases - 1) * b * (p.k / b) + b * phase;
    return phase_sum(p.x / phases, p.y / phases, merged, p.n);
}

// Backward-data's output: `value`, or with `accumulate` value + addend(x, y, k, n), the
// addend being the gradient already there (usually the output buffer itself: each element is
// read once, just before it is written). Saves a residual block's separate add pass, and a 1x1
// strided layer's zero fill of the pixels it does not reach.
template <class Addend>
Expr add_addend(schedules::ConvPipeline &p, const Expr &value, const Addend &addend, const Expr &accumulate) {
    p.accumulate = accumulate;
    return select(accumulate, value + addend(p.x, p.y, p.k, p.n), value);
}

// Lifts the unit-stride constraint Halide puts on a buffer's x axis, for the buffers the
// runtime may pass as strided views (the pixels a 1x1 stride-s layer reads); returns that
// stride, which the schedules specialize on.
template <class GeneratorBuffer>
Expr any_x_stride(GeneratorBuffer &buffer) {
    buffer.dim(0).set_stride(Expr());
    return buffer.dim(0).stride();
}

// The source as the packing reads it: zero past its last channel (a pair or quad of channels
// may run past an odd count), unbounded in x and y (the packing reads only the interior).
inline Func channel_bounded(const Func &source, const Expr &channels, const Expr &zero) {
    return BoundaryConditions::constant_exterior(source, zero, {Range(), Range(), Range(0, channels), Range()});
}

// Packs int8 operands for an integer correlation of dot width p.group: inputs stay int8 (as
// int16 for pairs), weights (int16, possibly shifted) get +128 as uint8 for 4-term dot
// products, which holds them exactly while they lie within int8.
inline Expr pack_integer_input(const Expr &value, int group) {
    return group == 4 ? cast<int8_t>(value) : cast<int16_t>(value);
}
constexpr int kWeightOffset4 = 128;  // the 4-term path's weight offset
inline Expr pack_integer_weight(const Expr &value, int group) {
    return group == 4 ? cast<uint8_t>(cast<int16_t>(value) + kWeightOffset4) : cast<int16_t>(value);
}

// Backward-data records its phases, the merged window's taps (is_phase_tap) and how its
// merged channels are laid out: `phase_block` channels of one phase side by side (1 for lanes
// along x, where the unrolled channel tile takes the phases in turn; the vector width for
// lanes along channels, so that each vector is one phase's). Call first: the correlation,
// the correction and interleave_phases read them.
inline void set_phase_taps(schedules::ConvPipeline &p, const Expr &phases, const Expr &window_taps, int phase_block) {
    p.phases = phases;
    p.window_taps = window_taps;
    p.phase_block = phase_block;
}

// A backward-data kernel's phase_block: the vector width where lanes run along channels
// (their schedules name it: tuned/*_channels_*.params), 1 where they run along x.
inline int merged_phase_block(bool channel_lanes, int vector_width) {
    if (!channel_lanes) return 1;
    if (vector_width <= 0) throw std::invalid_argument("lanes along channels need an explicit vector_width");
    return vector_width;
}

// The phase (2 py + px at phases 2) that accumulator channel k holds (see interleave_phases).
inline Expr phase_of_channel(const schedules::ConvPipeline &p, const Expr &k) {
    return p.phase_block == 1 ? k % 4 : (k / p.phase_block) % 4;
}

// Whether slot (kx, ky) of backward-data's merged window is a tap of `phase`
// (p.window_taps, see kAllWindowTaps). The schedules specialize on the odd 3x3 pattern, where
// with the window and the channel tile unrolled each product's test is a constant (the channel
// tile's phases: one per unrolled channel, or one per vector of channels): the zero taps'
// products are not emitted.
inline Expr is_phase_tap(const schedules::ConvPipeline &p, const Expr &kx, const Expr &ky, const Expr &phase) {
    auto tap = [&](const Expr &axis_phase, const Expr &slot) {
        return ((p.window_taps >> (2 * axis_phase + slot)) & 1) == 1;
    };
    return p.kernel != 2 || p.window_taps == kAllWindowTaps || (tap(phase % 2, kx) && tap((phase / 2) % 2, ky));
}

// Weights offset by `offset` to make them unsigned add offset x (the window sum of the inputs
// over all channels) to each correlation: sum (w + offset) a = sum w a + offset sum a.
// Defines p.channel_total (the sum over `channels` of `source`, the unpadded input as
// (x, y, channel, n), where its channels lie apart and x is dense), p.channel_sum (the same
// placed as define_padded_input placed the input, zeros elsewhere: call that first) and
// p.correction (window sums of channel_sum); returns offset x the correction at (x, y, n).
inline Expr define_offset_correction(schedules::ConvPipeline &p, const Func &source, const Expr &channels,
                                     const Expr &kernel_x, const Expr &kernel_y, const Expr &offset) {
    RDom &over_channels = p.over_channels = RDom(0, channels, "over_channels");
    p.channel_total(p.x, p.y, p.n) = cast<int32_t>(0);
    p.channel_total(p.x, p.y, p.n) += cast<int32_t>(source(p.x, p.y, over_channels, p.n));
    p.channel_sum(p.x, p.y, p.n) = cast<int32_t>(0);
    p.channel_sum(p.placed_x, p.placed_y, p.n) = p.channel_total(p.interior.x, p.interior.y, p.n);
    // Per phase where only a phase's taps are summed (p.window_taps): phase 0 at stride 1.
    Var phase("window_phase");
    RDom &window = p.window = RDom({{0, kernel_x}, {0, kernel_y}}, "window");
    if (p.window_taps.defined()) window.where(is_phase_tap(p, window.x, window.y, phase));
    p.correction(p.x, p.y, phase, p.n) = cast<int32_t>(0);
    p.correction(p.x, p.y, phase, p.n) += p.channel_sum(p.x * p.stride + window.x, p.y * p.stride + window.y, p.n);
    // Accumulator channel k holds phase_of_channel at phases 2 (interleave_phases), the one
    // phase at phases 1: the min keeps the bounds at one phase there.
    const Expr phase_of_k = p.window_taps.defined() ? min(phase_of_channel(p, p.k), p.phases * p.phases - 1) : Expr(0);
    return offset * p.correction(p.x, p.y, phase_of_k, p.n);
}

// The correlation all passes reduce to (see schedules/pipelines.h, ConvPipeline), over a
// kernel_x x kernel_y window at the stride define_padded_input recorded:
// accumulator(x, y, k, n) = sum input(j, x s + kx, y s + ky, c, n) * packed_weights(j, kx, ky, c, k),
// input being the padded input packed_input holds, split into column phases. The packed
// Funcs must be defined. Returns the accumulator at (x, y, k, n); where 4-term dot
// products take the weights offset by +128 to uint8, the caller subtracts the offset's
// contribution (define_offset_correction).
inline Expr define_correlation(schedules::ConvPipeline &p, const Expr &kernel_x, const Expr &kernel_y,
                               const Expr &channels, Type accumulator_type) {
    const int g = p.group;
    const Expr groups = (channels + g - 1) / g;
    p.reduction = RDom({{0, g}, {0, kernel_x}, {0, kernel_y}, {0, groups}}, "r");
    p.kernel = kernel_x;
    p.kernel_y = kernel_y;
    if (p.window_taps.defined())
        p.reduction.where(is_phase_tap(p, p.reduction[1], p.reduction[2], phase_of_channel(p, p.k)));
    const RDom &r = p.reduction;
    Expr a = packed_input_at(p, r[0], r[1], p.y * p.stride + r[2], r[3]);
    Expr b = p.packed_weights(r[0], r[1], r[2], r[3], p.k);
    p.accumulator(p.x, p.y, p.k, p.n) = cast(accumulator_type, 0);
    p.accumulator(p.x, p.y, p.k, p.n) += cast(accumulator_type, b) * cast(accumulator_type, a);
    return p.accumulator(p.x, p.y, p.k, p.n);
}

// A narrow sum widened to int32, as a term of a sum over its pair q (an RDom of 2): written
// as a widening multiply by 1, so that the schedules' vectorized pair becomes one pmaddwd
// against ones (Halide 14 matches a 2-way widening multiply-add, not a plain widening add,
// which took a blend, shifts, packs and sign extensions per vector). Session 21, Zen 3, 6
// alternating runs, integer G MAC/s medians: 64->64 8x8 weight gradient 90 -> 108, 16->16
// forward 139 -> 150, backward-data 123 -> 130; the others within 2-3%.
inline Expr widen_pair_sum(const Expr &narrow_sum) { return Internal::widening_mul(narrow_sum, cast<int16_t>(1)); }

// What a narrow sum is widened over (ConvPipeline::chunks, ConvWeightPipeline::chunks): the
// pair q of widen_pair_sum, then `count` chunks.
inline RDom pair_chunks(const Expr &count) { return RDom({{0, 2}, {0, count}}, "chunks"); }

// The narrow-sum correlation (see ConvPipeline): one operand uint8, the other int8 (unsigned
// inputs times weights in forward; errors times offset weights in backward-data), packed in
// groups of 4, summed in int16 over `chunk` groups at a time, then in int32. The packed Funcs
// must be defined, with p.group = 4. Returns the int32 sum at (x, y, k, n).
inline Expr define_narrow_correlation(schedules::ConvPipeline &p, const Expr &kernel_x, const Expr &kernel_y,
                                      const Expr &channels, const Expr &chunk) {
    const Expr groups = (channels + 3) / 4;
    p.reduction = RDom({{0, 2}, {0, kernel_x}, {0, kernel_y}, {0, chunk}}, "r");
    p.kernel = kernel_x;
    if (p.window_taps.defined())
        p.reduction.where(is_phase_tap(p, p.reduction[1], p.reduction[2], phase_of_channel(p, p.k)));
    p.chunks = pair_chunks((groups + chunk - 1) / chunk);
    p.kernel_y = kernel_y;
    const RDom &r = p.reduction;
    Var h("h");
    const Expr j = 2 * p.q + r[0], group = h * chunk + r[3];
    Expr a = packed_input_at(p, j, r[1], p.y * p.stride + r[2], group);
    Expr b = p.packed_weights(j, r[1], r[2], group, p.k);
    // saturating_add: the form Halide matches to pmaddubsw (which saturates); the runtime's
    // choice of chunk keeps every sum in range, so nothing saturates.
    p.narrow_sum(p.q, p.x, p.y, p.k, p.n, h) = cast<int16_t>(0);
    p.narrow_sum(p.q, p.x, p.y, p.k, p.n, h) =
        saturating_add(p.narrow_sum(p.q, p.x, p.y, p.k, p.n, h), cast<int16_t>(a) * cast<int16_t>(b));
    p.accumulator(p.x, p.y, p.k, p.n) = cast<int32_t>(0);
    p.accumulator(p.x, p.y, p.k, p.n) += widen_pair_sum(p.narrow_sum(p.chunks.x, p.x, p.y, p.k, p.n, p.chunks.y));
    return p.accumulator(p.x, p.y, p.k, p.n);
}

// The schedule knobs every convolution generator exposes as generator parameters.
#define LOWBIT_CONV_KNOBS                                                                     \
    GeneratorParam<int> vector_width{"vector_width", 0};                                      \
    GeneratorParam<int> tile_x{"tile_x", 1};                                                  \
    GeneratorParam<int> tile_y{"tile_y", 1};                                                  \
    GeneratorParam<int> tile_channels{"tile_channels", 4};                                    \
    GeneratorParam<int> window_unroll{"window_unroll", 2};                                    \
    GeneratorParam<int> task_channel_tiles{"task_channel_tiles", 1};                          \
    GeneratorParam<int> gpu_threads{"gpu_threads", 64};                                       \
    /* integer dot width: 2 (int16 pairs) or 4 (u8 x i8); 0 = by target */                    \
    GeneratorParam<int> dot{"dot", 0};                                                        \
    GeneratorParam<bool> channel_lanes{"channel_lanes", false};                               \
    GeneratorParam<int> tile_taps{"tile_taps", 1};                                            \
    lowbit::schedules::ConvParams params() const {                                            \
        return {vector_width,       tile_x,      tile_y,        tile_channels, window_unroll, \
                task_channel_tiles, gpu_threads, channel_lanes, tile_taps};                   \
    }

template <class Pipeline>
void schedule_conv(const Target &target, const Pipeline &p, const schedules::ConvParams &params) {
    if (target.has_gpu_feature()) {
        schedules::cuda::schedule_conv(p, params);
    } else {
        schedules::x86::schedule_conv(p, params, target);
    }
}

}  // namespace lowbit::conv

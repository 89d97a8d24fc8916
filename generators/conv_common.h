// Pieces shared by the three convolution generators: operand packing and the correlation
// they all reduce to. Tensors are NCHW / OIHW in memory, so Halide sees them innermost
// first: activations (x, y, c, n), weights (kx, ky, c, o).
#pragma once

#include "../schedules/cuda.h"
#include "../schedules/pipelines.h"
#include "../schedules/x86.h"
#include "Halide.h"

namespace lowbit::conv {

using namespace Halide;

// Estimates: a ResNet-20 32->32 layer at 16x16, batch 128.
constexpr int kEstimateBatch = 128, kEstimateChannels = 32, kEstimateSize = 16, kEstimateKernel = 3;

// Estimates for the shipped autoschedulers, one shape per kind of tensor.
const Region kActivationEstimate = {
    {0, kEstimateSize}, {0, kEstimateSize}, {0, kEstimateChannels}, {0, kEstimateBatch}};
const Region kWeightEstimate = {
    {0, kEstimateKernel}, {0, kEstimateKernel}, {0, kEstimateChannels}, {0, kEstimateChannels}};

// Operands are packed as pairs (j = 0, 1) of consecutive channels, so a 2-term integer dot
// product (pmaddwd on x86, i16 pairs) reduces each pair; a channel past the end reads as 0.
inline Expr channel_pair(const Expr &pair, const Expr &j) { return 2 * pair + j; }

// The correlation all passes reduce to (see schedules/pipelines.h, ConvPipeline):
// accumulator(x, y, k, n) = sum packed_input(j, x s + kx, y s + ky, c2, n) * packed_weights(j, kx, ky, c2, k).
// The packed Funcs must be defined; `kernel` and `pairs` give the reduction's extents.
inline void define_correlation(schedules::ConvPipeline &p, const Expr &kernel, const Expr &channels, const Expr &stride,
                               Type accumulator_type) {
    if (p.pairs) {
        p.reduction = RDom({{0, 2}, {0, kernel}, {0, kernel}, {0, (channels + 1) / 2}}, "r");
    } else {
        p.reduction = RDom({{0, 1}, {0, kernel}, {0, kernel}, {0, channels}}, "r");
    }
    p.stride = stride;
    p.kernel = kernel;
    const RDom &r = p.reduction;
    Expr a = p.packed_input(r[0], p.x * stride + r[1], p.y * stride + r[2], r[3], p.n);
    Expr b = p.packed_weights(r[0], r[1], r[2], r[3], p.k);
    p.accumulator(p.x, p.y, p.k, p.n) = cast(accumulator_type, 0);
    p.accumulator(p.x, p.y, p.k, p.n) += cast(accumulator_type, a) * cast(accumulator_type, b);
}

// The schedule knobs every convolution generator exposes as generator parameters.
#define LOWBIT_CONV_KNOBS                                  \
    GeneratorParam<int> vector_width{"vector_width", 0};   \
    GeneratorParam<int> tile_x{"tile_x", 1};               \
    GeneratorParam<int> tile_channels{"tile_channels", 4}; \
    GeneratorParam<int> gpu_threads{"gpu_threads", 64};    \
    lowbit::schedules::ConvParams params() const { return {vector_width, tile_x, tile_channels, gpu_threads}; }

template <class Pipeline>
void schedule_conv(const Target &target, const Pipeline &p, const schedules::ConvParams &params) {
    if (target.has_gpu_feature()) {
        schedules::cuda::schedule_conv(p, params);
    } else {
        schedules::x86::schedule_conv(p, params, target);
    }
}

}  // namespace lowbit::conv

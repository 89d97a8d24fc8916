// What a schedule may touch: each algorithm in generators/ hands its Funcs, Vars and RDoms
// to the schedule of its target through one of these structs, so schedules/ never needs to
// know how a value is computed, only the loop structure it is computed over. Funcs are
// handles: schedules take these structs by value and schedule through the copies.
#pragma once

#include "Halide.h"

namespace lowbit::schedules {

// Knobs of the element-wise kernels (quantize, dequantize). Every knob is a generator
// parameter, so autotune/ can search them and schedules/tuned/ can fix them in the build.
struct ElementwiseParams {
    int vector_width = 0;         // lanes of the innermost loop; 0 = the target's natural width
    int random_vector_width = 0;  // lanes of the stochastic draws (uint32); 0 = the natural width
    int task_elements = 1 << 15;  // elements per parallel task (rows are grouped to reach it)
    int gpu_threads = 256;        // threads per block on GPU targets
};

// quantize_scales[_block]: max-abs per group, tensor scale, group exponents.
struct QuantizeScalesPipeline {
    Halide::Func row_max{"row_max"};        // (g, o) or (i, b, o): max-abs bits of one group's row
    Halide::Func group_max{"group_max"};    // grouped: (g) over rows; blocked: unused (row_max is the group)
    Halide::Func tensor_max{"tensor_max"};  // (): max over all groups
    Halide::Func group_exponent;            // output
    Halide::Func tensor_scale;              // output, 0-d
    Halide::Var i{"i"}, g{"g"}, o{"o"};
    Halide::RDom over_row, over_rows, over_groups;
    Halide::Expr row_length;  // extent of the innermost (reduced) axis
    bool blocked = false;
};

// quantize_values[_block] and dequantize[_block]: element-wise over an (i, g, o) view.
struct ElementwisePipeline {
    Halide::Func output;
    Halide::Var i{"i"}, g{"g"}, o{"o"};
    Halide::Expr row_length;  // extent of i
    // The widest type of the per-element arithmetic: its natural vector sets the default lane
    // count. The quantizers compute in double, where float-width vectors would split every
    // operation in two and convert masks between widths (measured: 25-30% slower on AVX2).
    Halide::Type arithmetic = Halide::Float(32);
    // Specializations worth their code size (e.g. rounding mode); each gets the schedule.
    std::vector<Halide::Expr> specializations;
    // The quantizers' stochastic draws (i, g, o), uint32: defined where the output calls it,
    // so that a schedule can give the hash its own, wider vectors; inlined where not scheduled.
    Halide::Func random;
};

}  // namespace lowbit::schedules

namespace lowbit::schedules {

// Knobs of the convolution kernels.
struct ConvParams {
    int vector_width = 0;        // lanes of the vectorized output axis; 0 = the target's natural width
    int tile_x = 1;              // vectors of outputs along x per register tile (forward, backward-data)
    int tile_y = 1;              // rows of outputs per register tile (forward, backward-data)
    int tile_channels = 4;       // channels per register tile (o in forward, c in the others)
    int window_unroll = 2;       // 3x3 windows: 0 loops, 1 unrolls kx, 2 unrolls kx and ky (forward, backward-data)
    int task_channel_tiles = 1;  // backward-weight: input-channel tiles a task runs per sample
    int gpu_threads = 64;        // threads per block on GPU targets
    // 4-term dot products and float32 (forward, backward-data): vector lanes along
    // output channels (tile_x is then the pixels of a tile, tile_channels a multiple of the
    // vector width), not along x.
    bool channel_lanes = false;
    // backward-weight: taps of a window row (kx) per register tile, so that one loaded error
    // vector meets tile_channels x tile_taps broadcast inputs and a window row's inputs are
    // read once, not once per tap. Past the window's width the tile computes taps nobody
    // reads: worth it only where the width is a multiple.
    int tile_taps = 1;
};

// conv_forward and conv_backward_data: a stride-s correlation of a padded operand with a
// weight operand, both packed as groups of `group` consecutive channels (j innermost), so that
// a `group`-term integer dot product reduces each group in one instruction:
//   accumulator(x, y, k, n) = sum_{j, kx, ky, c} packed_input(j, x + kx / s, kx % s, y s + ky, c, n)
//                                                * packed_weights(j, kx, ky, c, k)
// packed_input(j, m, phase, row, c, n) holds the padded operand's column m s + phase: its
// columns split into s phases, so that the columns x s + kx of a vector of outputs are
// adjacent (backward-data always runs at s = 1: see `phases`).
//   group 1: float32 operands;  group 2: int16 pairs (pmaddwd, vpdpwssd);
//   group 4: int8 inputs times weights offset by +128 to uint8 (vpdpbusd, which multiplies
//            unsigned by signed bytes); the offset adds 128 * (window sum of the inputs),
//            which `correction` computes from the per-position channel sums (of the unpadded
//            input) and the caller subtracts.
//            Unsigned inputs (conv_forward_unsigned) are uint8 already: no offset.
// Narrow sums (where there is no 4-term instruction, e.g. AVX2; forward on unsigned inputs,
// backward-data on int8 errors times weights offset to uint8, with the same `correction` as
// group 4): uint8 x int8 pairs summed in int16 (pmaddubsw: twice the products per
// instruction of pmaddwd) over `chunk` channel groups of 4 at a time, then widened into the
// int32 accumulator:
//   narrow_sum(q, x, y, k, n, h) = sum_{i < 2, kx, ky, c < chunk} packed_input(2 q + i, x s + kx,
//                  y s + ky, h chunk + c, n) * packed_weights(2 q + i, kx, ky, h chunk + c, k)
//   accumulator(x, y, k, n) = sum_h narrow_sum(0, x, y, k, n, h) + narrow_sum(1, x, y, k, n, h)
// Exact while no int16 sum can pass 32767; the runtime picks `chunk` to make it so.
// output(x, y, k, n) scales the corrected sum (integer) or is it (float).
struct ConvPipeline {
    Halide::Func packed_input{"packed_input"}, packed_weights{"packed_weights"};
    Halide::Func accumulator{"accumulator"};
    // Weights offset to uint8 (group 4, backward-data's narrow sums): the offset's contribution,
    // from the input's sums over channels per position (channel_total), placed as packed_input
    // (channel_sum), window-summed (correction).
    Halide::Func channel_total{"channel_total"}, channel_sum{"channel_sum"}, correction{"correction"};
    Halide::Func narrow_sum{"narrow_sum"};  // narrow sums only
    Halide::Var q{"q"};                     // which pair of a group of 4
    Halide::RDom chunks;                    // narrow sums: (q, h), the pair widened, then the chunk
    Halide::Func output;
    Halide::Var x{"x"}, y{"y"}, k{"k"}, n{"n"};  // output dims; k = the output channel
    Halide::Var j{"j"};                          // position in a channel group
    Halide::Var phase{"phase"};                  // packed_input's column phase (x is the column in it)
    Halide::Var channel_group{"channel_group"};  // packed_input's and packed_weights' channel axis
    // packed_input is zeros (the padding), then an update over `interior`, the source's
    // (x, y) extent, writes the source at its padded position: both loops have dense vector
    // loads and stores, where a boundary condition in one definition clamps x lane by lane.
    Halide::RDom interior;
    Halide::Expr placed_x, placed_y;     // the padded column and row of interior (ix, iy)
    Halide::RDom reduction;              // (j, kx, ky, channel group); narrow sums: (i, kx, ky, c)
    Halide::RDom over_channels, window;  // of channel_total and correction
    Halide::Expr stride, kernel, kernel_y;
    // backward-data: the phases its output interleaves per axis (its layer's stride s: output
    // pixel (s X + px, s Y + py) is the accumulator's (X, Y, channel s (s k + py) + px));
    // undefined for the other passes. With stride, kernel and kernel_y, what the schedules
    // specialize on.
    Halide::Expr phases;
    // backward-data at phases 2: which taps of the merged 2x2 window each phase has (bit
    // 2 phase + slot, per axis, in the kernel's flipped slots; kAllWindowTaps where every slot
    // is a tap or the window is not 2x2), so that the kernels skip the zero taps (conv_common.h
    // is_phase_tap); undefined for the other passes.
    Halide::Expr window_taps;
    // backward-data at phases 2: how many channels of one phase lie side by side in the
    // merged channels (1: channel s (s c + py) + px; the kernels with lanes along channels:
    // their vector width, so that each vector holds one phase; runtime/conv.cpp merge_phases).
    int phase_block = 1;
    // backward-data's pair and float32 kernels: the output's x stride, which may be > 1 at
    // phases 1 (a view of the pixels a 1x1 strided layer reaches); undefined where the
    // output is always dense.
    Halide::Expr output_stride_x;
    // backward-data: true when the output adds an addend (the gradient already there, e.g. a
    // residual block's other path) instead of being written afresh; undefined for the others.
    Halide::Expr accumulate;
    // forward: the input's x stride, which may be > 1 (a 1x1 stride-s layer runs at stride 1
    // on a view of the pixels it reads); undefined where the input is always dense.
    Halide::Expr input_stride_x;
    int group = 2;
};

// conv_backward_weight: per-sample integer partial sums over the output positions, packed in
// groups of `group` consecutive x (2: int16 pairs), combined over samples (integer kernels:
// shifted and added in int32; float32: added):
//   partial(o, c, kx, ky, n) = sum_{j, x2, y} packed_errors(j, o, x2, y, n)
//                                             * packed_input(2 x2 + j + kx / s, kx % s, y s + ky, c, n)
// packed_input(m, phase, row, c, n) is the input split into s column phases (see the generator).
//   total(kx, ky, c, o) = sum_n partial(o, c, kx, ky, n) << shifts(n, o, c)
// Narrow sums (unsigned inputs, as in ConvPipeline): groups of 4 x, uint8 inputs times int8
// errors summed in int16 over `chunk` rows of output positions at a time:
//   narrow_sum(q, o, c, kx, ky, n, h) = sum_{i < 2, x4, y < chunk} packed_errors(2 q + i, o, x4,
//                  h chunk + y, n) * packed_input(4 x4 + 2 q + i + kx / s, kx % s, (h chunk + y) s + ky, c, n)
//   partial(o, c, kx, ky, n) = sum_h narrow_sum(0, ..., h) + narrow_sum(1, ..., h)
struct ConvWeightPipeline {
    Halide::Func packed_errors{"packed_errors"}, packed_input{"packed_input"};
    Halide::Func partial{"partial"}, total{"total"};
    Halide::Func output;
    Halide::Var kx{"kx"}, ky{"ky"}, c{"c"}, o{"o"}, n{"n"}, j{"j"};
    Halide::Var m{"m"}, phase{"phase"}, row{"row"};  // packed_input's first axes
    // packed_input is zeros (the padding), then an update over `interior`, the input's
    // (x, y) extent, as in ConvPipeline.
    Halide::RDom interior;
    Halide::RDom positions;       // (j, x2, y): one sample's output positions; narrow sums: (i, x4, y) of a chunk
    Halide::RDom samples;         // n
    Halide::Expr input_stride_x;  // the input's x stride (> 1: a view of a 1x1 strided layer's pixels)
    Halide::Expr stride;
    Halide::Expr out_width;                 // the errors' width (the schedule specializes small maps)
    int group = 2;                          // x positions per group: 1 float32, 2 int16 pairs, 4 narrow sums
    Halide::Func narrow_sum{"narrow_sum"};  // narrow sums only
    Halide::Var q{"q"};                     // which pair of a group of 4
    Halide::RDom chunks;                    // narrow sums: (q, h), the pair widened, then the chunk
};

}  // namespace lowbit::schedules

namespace lowbit::schedules {

// batch_norm_statistics and batch_norm_backward: sums over each channel of an (i, c, n) view
// (i = the H*W plane), in double. Each (c, n) row is summed first (rows are what the threads
// share out), then the rows of a channel in sample order, so the result never depends on the
// thread count. Backward then writes an element-wise output over the same view.
struct ChannelSumsPipeline {
    Halide::Func row_sums{"row_sums"};          // (c, n): a Tuple of sums over i (or one max, for row maxima)
    Halide::Func channel_sums;                  // (c): a Tuple of sums over n, or undefined
    std::vector<Halide::Func> channel_outputs;  // (c) outputs computed from channel_sums
    std::vector<Halide::Func> elementwise;      // (i, c, n) outputs, if any
    // (lane, c, n): the first elementwise output's row maxima in lanes over over_lanes (batch
    // norm backward's grad_input), computed in that output's pass; or undefined.
    Halide::Func row_max_lanes;
    Halide::Var i{"i"}, c{"c"}, n{"n"}, lane{"lane"};
    Halide::RDom over_row, over_samples, over_lanes;
    Halide::Expr row_length;
};

}  // namespace lowbit::schedules

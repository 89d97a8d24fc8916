#include "x86.h"

#include "format.h"  // kRowMaxLanes

namespace lowbit::schedules::x86 {

using namespace Halide;

namespace {

int lanes(const ElementwiseParams &params, const Target &target, const Type &arithmetic = Float(32)) {
    return params.vector_width > 0 ? params.vector_width : target.natural_vector_size(arithmetic);
}

// Rows of `row_length` elements per parallel task, so that each task has about
// params.task_elements elements whatever the view's shape.
Expr rows_per_task(const ElementwiseParams &params, const Expr &row_length) {
    return max(1, params.task_elements / max(row_length, 1));
}

// A Func of rows (a, b), each an associative reduction over `over_row`: each row is split
// into `lanes` interleaved partial results (rfactor; plain vector instructions, and a fixed
// order of combination), then combined once; rows are shared out among the threads in tasks
// of `rows_per_task`.
void reduce_rows_in_lanes(Func rows, const RDom &over_row, const Var &a, const Var &b, int lanes,
                          const Expr &rows_per_task) {
    Var lane("lane"), task("task"), row("row"), ab("ab");
    RVar chunk("chunk"), in_chunk("in_chunk");
    Func partial =
        rows.update().split(over_row.x, chunk, in_chunk, lanes, TailStrategy::GuardWithIf).rfactor(in_chunk, lane);
    rows.compute_root();
    rows.update().fuse(a, b, ab).split(ab, task, row, rows_per_task, TailStrategy::GuardWithIf).parallel(task);
    partial.compute_at(rows, row).vectorize(lane);
    partial.update().vectorize(lane);
}

// Narrow sums (ConvPipeline, ConvWeightPipeline): per chunk, a register tile of int16 sums
// (both pairs q of a group of 4 times the tile, the tile's first axis vectorized by v: 2v
// int16 lanes, one pmaddubsw each), widened into `wide`'s int32 tile over `chunks` (the pair
// q, then the chunk: ConvPipeline's and ConvWeightPipeline's). `tile` lists the tile's
// axes innermost first with their extents, `outer` the reduction's remaining axes. Returns the
// narrow sums' update, for the window specializations.
Stage schedule_narrow_sums(Func narrow, Func wide, const RDom &chunks, const RVar &pair_element, const Var &q,
                           const std::vector<std::pair<Var, int>> &tile, const std::vector<RVar> &outer, int v) {
    const Var vectorized = tile[0].first;
    const RVar pair = chunks.x, chunk = chunks.y;
    std::vector<VarOrRVar> wide_order = {pair}, narrow_order = {pair_element, q};
    for (const auto &[axis, extent] : tile) {
        wide_order.push_back(axis);
        narrow_order.push_back(axis);
    }
    wide_order.push_back(chunk);
    narrow_order.insert(narrow_order.end(), outer.begin(), outer.end());
    Stage wide_update = wide.update();
    // The pair innermost, vectorized with the tile's lanes: a 2-way reduction of the 2v int16
    // lanes (q interleaved), one pmaddwd against ones per vector (widen_pair_sum).
    wide_update.reorder(wide_order).atomic().vectorize(pair).vectorize(vectorized, v);
    narrow.compute_at(wide, chunk)
        .bound_extent(q, 2)
        .store_in(MemoryType::Register)
        .vectorize(q)
        .vectorize(vectorized, v);
    for (const auto &[axis, extent] : tile) {
        wide_update.unroll(axis);
        narrow.bound_extent(axis, extent).unroll(axis);
    }
    // atomic(true): saturating_add is associative here, as nothing saturates (the runtime
    // sizes the chunks), which Halide cannot prove.
    Stage update = narrow.update();
    update.reorder(narrow_order).atomic(true).vectorize(pair_element).vectorize(q);
    return update;
}

// A packed input's interior (the update writing the source at its padded place), its loops
// already ordered and parallel. Rows of one column phase (stride 1) are dense vector loops,
// specialized on what the runtime passes where `input_stride_x` is defined: a dense source,
// or every other pixel of one (1x1 stride-2 layers: dense loads and a deinterleave); other
// strides gather.
// At stride 2 each row splits into its even and odd columns (unrolled), each a dense store
// into its column phase, with `inner` (a channel group's positions) innermost.
void schedule_padded_rows(Stage interior, const RVar &x, const Expr &stride, const Expr &input_stride_x,
                          const std::vector<VarOrRVar> &inner, int v) {
    auto dense_rows = [&](Stage rows) {
        rows.vectorize(x, v, TailStrategy::GuardWithIf);
        if (input_stride_x.defined()) {
            for (int step : {1, 2}) rows.specialize(input_stride_x == step);
        }
    };
    if (Internal::is_const_one(stride)) {
        dense_rows(interior);
        return;
    }
    dense_rows(interior.specialize(stride == 1));
    RVar column_pair("column_pair"), column_phase("column_phase");
    std::vector<VarOrRVar> order = inner;
    order.insert(order.end(), {column_phase, column_pair});
    // At most 8 lanes of column pairs: a 16-column row (8x8 outputs) is 8 pairs, which 16
    // lanes would store entirely in the guarded tail, lane by lane.
    Stage pairs = interior.specialize(stride == 2)
                      .split(x, column_pair, column_phase, 2, TailStrategy::GuardWithIf)
                      .reorder(order)
                      .unroll(column_phase)
                      .vectorize(column_pair, std::min(v, 8), TailStrategy::GuardWithIf);
    // A dense source (all the runtime passes at stride 2): each phase's vector is then one
    // dense load and a deinterleave, where a symbolic x stride gathers byte by byte.
    if (input_stride_x.defined()) pairs.specialize(input_stride_x == 1);
}

}  // namespace

// quantize_scales: memory-bound, one read of the tensor, rows spread over the threads; the
// group and tensor maxima reduce the much smaller row results serially.
// Measured (AVX2, 2 threads, 128x64x32x32): part of quantize's 1.4x memcpy time below.
void schedule_quantize_scales(QuantizeScalesPipeline p, const ElementwiseParams &params, const Target &target) {
    const int v = lanes(params, target);
    Var go("go");
    if (!p.blocked) {
        // Each row's max-abs: rfactor the row into v lanes of partial maxima (plain vector
        // max instructions), then one horizontal max per row.
        reduce_rows_in_lanes(p.row_max, p.over_row, p.g, p.o, v, rows_per_task(params, p.row_length));
        p.group_max.compute_root();
        p.tensor_max.compute_root();
        p.group_exponent.compute_root();
    } else {
        // Groups run across the channel axis: vectorize along i instead, where they lie side
        // by side in memory.
        p.row_max.compute_root()
            .vectorize(p.i, v, TailStrategy::GuardWithIf)
            .fuse(p.g, p.o, go)
            .parallel(go, rows_per_task(params, p.row_length), TailStrategy::GuardWithIf);
        p.row_max.update()
            .reorder(p.i, p.over_row.x, p.g, p.o)
            .vectorize(p.i, v, TailStrategy::GuardWithIf)
            .fuse(p.g, p.o, go)
            .parallel(go, rows_per_task(params, p.row_length), TailStrategy::GuardWithIf);
        p.tensor_max.compute_root();
        p.tensor_max.update().atomic().vectorize(p.over_groups.x, v);
        p.group_exponent.compute_root()
            .vectorize(p.i, v, TailStrategy::GuardWithIf)
            .fuse(p.g, p.o, go)
            .parallel(go, rows_per_task(params, p.row_length), TailStrategy::GuardWithIf);
    }
}

// quantize_values, dequantize: one pass, vectorized along the contiguous axis, rows grouped
// into parallel tasks. Each specialization (rounding mode, E = 0) gets the same recipe.
// Lanes default to the natural vector of the pipeline's arithmetic type (double for the
// quantizers: 4 lanes on AVX2, where 8 float-width lanes cost 10-25% more, session 5).
// Measured (AVX2, 2 threads, 128x64x32x32, scales included, bench_quantize, session 5): the
// time of a memcpy of the input times nearest E = 0 1.1, E > 0 2.4; stochastic E = 0 1.9,
// E > 0 3.2 (compute-bound: the exponent-grid tests and the hash); dequantize 0.4.
// Session 22 (Zen 3), the draws in 8-lane vectors of their own and the sign put on in double,
// three alternations against the 4-lane loop: m1e2 stochastic 8.6-9.1 -> 7.1-7.5 ms (2.3x ->
// 1.9x the copy), m3e0 stochastic 8.4-8.7 -> 6.8-7.3, m3e0 nearest 4.3-4.8 -> 4.1-4.4.
void schedule_elementwise(ElementwisePipeline p, const ElementwiseParams &params, const Target &target) {
    const int v = lanes(params, target, p.arithmetic);
    Var go("go");
    Func out = p.output;
    if (p.random.defined()) {
        // The hash of the stochastic draws is 32-bit integer work: in vectors of its own (8
        // lanes on AVX2, twice the doubles'), computed a chunk ahead of the double vectors that
        // read it, rather than in the doubles' 4 lanes or with the doubles split to 8 (whose
        // masks then convert between widths).
        // The chunk is a whole number of double vectors (the split below assumes it): a
        // random_vector_width that is not a multiple of v rounds up.
        const int random_lanes =
            params.random_vector_width > 0 ? params.random_vector_width : target.natural_vector_size(UInt(32));
        const int chunk = (std::max(v, random_lanes) + v - 1) / v * v;
        Var chunks("chunks"), in_chunk("in_chunk"), vectors("vectors");
        out.split(p.i, chunks, in_chunk, chunk, TailStrategy::GuardWithIf)
            .split(in_chunk, vectors, p.i, v)
            .vectorize(p.i)
            .unroll(vectors);
        p.random.compute_at(out, chunks).vectorize(p.i, chunk, TailStrategy::GuardWithIf);
    } else {
        out.vectorize(p.i, v, TailStrategy::GuardWithIf);
    }
    out.fuse(p.g, p.o, go).parallel(go, rows_per_task(params, p.row_length), TailStrategy::GuardWithIf);
    for (const Expr &condition : p.specializations) out.specialize(condition);
}

// batch_norm_statistics, batch_norm_backward: memory-bound like quantize_scales. Each (c, n)
// row is summed by rfactor into vectors of double lanes (one lane per residue of i, then the
// lanes in order: a fixed order, whatever the threads and the target), rows shared out among the threads;
// the per-channel sums over samples are tiny and serial. Backward's element-wise output is
// then scheduled like any element-wise kernel.
void schedule_channel_sums(ChannelSumsPipeline p, const ElementwiseParams &params, const Target &target) {
    // The lane count fixes the order of summation: one count for every target, so every
    // variant gives the same bits (8 doubles: two AVX2 registers, four SSE2 ones).
    const int v = 8;
    reduce_rows_in_lanes(p.row_sums, p.over_row, p.c, p.n, v, rows_per_task(params, p.row_length));
    if (p.channel_sums.defined()) p.channel_sums.compute_root();
    for (Func f : p.channel_outputs) f.compute_root();
    std::vector<Func> elementwise = p.elementwise;
    if (p.row_max_lanes.defined()) {
        // The outputs and the first one's row maxima in one pass: the same loop over rows
        // (fused, compute_with), the maxima recomputing the row's values inline from the
        // inputs the output just loaded (in cache), so the quantization that reads the output
        // next needs no pass of its own for its scales.
        Func out = elementwise.front();
        elementwise.erase(elementwise.begin());
        const Expr task_rows = rows_per_task(params, p.row_length);
        Var go("go"), rows("rows"), row("row");
        // The one loop over rows that every stage of the pass has, for compute_with to fuse.
        auto over_rows = [&](Stage s) {
            s.fuse(p.c, p.n, go).split(go, rows, row, task_rows, TailStrategy::GuardWithIf).parallel(rows);
        };
        out.vectorize(p.i, lanes(params, target), TailStrategy::GuardWithIf);
        over_rows(out);
        Func lane_max = p.row_max_lanes;
        lane_max.bound(p.lane, 0, kRowMaxLanes).compute_root().vectorize(p.lane);
        lane_max.update().reorder(p.lane, p.over_lanes, p.c, p.n).vectorize(p.lane);
        over_rows(lane_max.update());
        lane_max.update().compute_with(out, row);
        // The elements past the rows' whole vectors: none in the ResNets' planes, a few
        // scalars elsewhere.
        lane_max.update(1).unscheduled();
        // The other outputs over the same rows (batch norm add-ReLU backward's grad_residual,
        // which reads the same incoming gradient and mask) join the pass too.
        for (Func f : elementwise) {
            f.vectorize(p.i, lanes(params, target), TailStrategy::GuardWithIf);
            over_rows(f);
            f.compute_with(out, row);
        }
        elementwise.clear();
    }
    for (const Func &f : elementwise) {
        ElementwisePipeline e;
        e.output = f;
        e.i = p.i;
        e.g = p.c;
        e.o = p.n;
        e.row_length = p.row_length;
        schedule_elementwise(e, params, target);
    }
}

}  // namespace lowbit::schedules::x86

namespace lowbit::schedules::x86 {

namespace {

// The output tile of forward and backward-data, `pixels` positions (stored `vector` per
// vector) x tile_y rows x tile_k channels of the accumulator, each thread taking (channel
// tile, sample) pairs; backward-data of a strided layer (`phases` s) stores the s x s phases
// of each position, over tile_k / s^2 channels: the column phases innermost (unrolled), so
// their strided stores merge into dense interleaved vectors (Halide's store interleaving),
// then the row phases (unrolled, rows of their own).
void tile_output(ConvPipeline &p, Stage out, int phases, int pixels, int vector, int tile_y, int tile_k,
                 const Var &xo) {
    Var x = p.x, y = p.y, column("column"), phase("phase"), row("row"), row_phase("row_phase");
    Var xi("xi"), yo("yo"), yi("yi"), ko("ko"), ki("ki"), task("task");
    if (phases > 1) {
        out.split(p.x, column, phase, phases, TailStrategy::GuardWithIf)
            .split(p.y, row, row_phase, phases, TailStrategy::GuardWithIf);
        x = column;
        y = row;
    }
    out.split(x, xo, xi, pixels, TailStrategy::GuardWithIf)
        .split(y, yo, yi, tile_y, TailStrategy::GuardWithIf)
        .split(p.k, ko, ki, std::max(1, tile_k / (phases * phases)), TailStrategy::GuardWithIf);
    if (phases > 1) {
        out.reorder(xi, phase, ki, row_phase, yi, xo, yo, ko, p.n).unroll(phase).unroll(row_phase);
    } else {
        out.reorder(xi, ki, yi, xo, yo, ko, p.n);
    }
    out.vectorize(xi, vector).unroll(ki).unroll(yi).fuse(ko, p.n, task).parallel(task);
}

// tile_output for each case the runtime passes. Each specialization copies the schedule as it
// stands: two phases first (a dense output, which the interleaved stores need), then the
// plain tile for one phase, dense or, where the output may be a strided view (1x1 strided
// layers), storing lane by lane; no code for other cases. All of it twice: adding the addend
// and not (the addend's loads only where they are needed).
void tile_outputs(ConvPipeline &p, int pixels, int vector, int tile_y, int tile_k, const Var &xo) {
    if (!p.phases.defined()) {
        tile_output(p, p.output, 1, pixels, vector, tile_y, tile_k, xo);
        return;
    }
    const Expr dense = p.output_stride_x.defined() ? p.output_stride_x == 1 : Internal::const_true();
    auto tile_variants = [&](Stage out) {
        tile_output(p, out.specialize(p.phases == 2 && dense), 2, pixels, vector, tile_y, tile_k, xo);
        tile_output(p, out, 1, pixels, vector, tile_y, tile_k, xo);
        out.specialize(p.phases == 1 && dense);
        if (p.output_stride_x.defined()) out.specialize(p.phases == 1);
        out.specialize_fail("phases must be 1 or 2 (2 only into a dense output)");
    };
    tile_variants(p.output.specialize(p.accumulate));
    tile_variants(p.output);
}

// The register tile with lanes along x (see schedule_conv): returns the accumulator's update.
Stage tile_position_lanes(ConvPipeline &p, int v, int tile_x, int tile_y, int tile_k) {
    const RDom &r = p.reduction;
    Var xo("xo");
    tile_outputs(p, v * tile_x, v, tile_y, tile_k, xo);

    p.accumulator.compute_at(p.output, xo)
        .bound_extent(p.x, v * tile_x)
        .bound_extent(p.y, tile_y)
        .bound_extent(p.k, tile_k)
        .store_in(MemoryType::Register)
        .vectorize(p.x, v)
        .unroll(p.x)
        .unroll(p.y)
        .unroll(p.k);
    // The window (kx, ky) runs inside the channel pairs (narrow sums: pairs of a group of 4);
    // with K = 3 its kx (window_unroll 1) or kx and ky (window_unroll 2) are unrolled.
    Stage update = p.accumulator.update();
    if (p.narrow_sum.defined()) {
        update = schedule_narrow_sums(p.narrow_sum, p.accumulator, p.chunks, r[0], p.q,
                                      {{p.x, v * tile_x}, {p.k, tile_k}, {p.y, tile_y}}, {r[1], r[2], r[3]}, v);
    } else {
        update.reorder(r[0], p.x, p.k, p.y, r[1], r[2], r[3], p.n);
        if (p.group > 1) update.atomic().vectorize(r[0]);
    }
    update.vectorize(p.x, v).unroll(p.x).unroll(p.k).unroll(p.y);
    return update;
}

// The register tile with lanes along output channels (4-term dot products and float32;
// forward, and backward-data, whose output channels are the layer's inputs, a stride-2
// layer's 4 phases side by side): tile_x pixels x tile_y rows x tile_k channels (whole
// vectors). Each vpdpbusd multiplies a vector of v output channels' weights, the 4 channels
// of a group side by side (packed_weights stored (j, k, ...)), by one pixel's 4 input bytes
// broadcast (float32: each FMA a vector of weights by one input value broadcast); a vector
// of weights serves the tile's pixels and a broadcast its channel vectors. Unlike lanes along
// x, no lane idles on an 8-column map, and stride 2 reads one pixel per broadcast, not a
// gathered row.
// The output is stored along x (NCHW): tile_x pixels of a channel per store (two phases:
// 2 tile_x, interleaved). Session 17, Zen 5, backward-data of 32->64 stride 2: 64-66 G MAC/s
// -> 86-94 (integer), 32 -> 54-56 (float32) beside the position lanes.
Stage tile_channel_lanes(ConvPipeline &p, int v, int tile_x, int tile_y, int tile_k) {
    const RDom &r = p.reduction;
    Var xo("xo");
    tile_outputs(p, tile_x, tile_x, tile_y, tile_k, xo);
    p.accumulator.compute_at(p.output, xo)
        .bound_extent(p.x, tile_x)
        .bound_extent(p.y, tile_y)
        .bound_extent(p.k, tile_k)
        .store_in(MemoryType::Register)
        .reorder_storage(p.k, p.x, p.y, p.n)
        .vectorize(p.k, v)
        .unroll(p.k)
        .unroll(p.x)
        .unroll(p.y);
    Stage update = p.accumulator.update();
    update.reorder(r[0], p.k, p.x, p.y, r[1], r[2], r[3], p.n);
    if (p.group > 1) update.atomic().vectorize(r[0]);
    update.vectorize(p.k, v).unroll(p.k).unroll(p.x).unroll(p.y);
    return update;
}

}  // namespace

// Convolutions as a correlation (forward, backward-data).
// Measured (AVX2 variant, 2 threads, batch 128, ResNet-20 3x3 layers, bench_conv, session 8,
// a fast hour, docs/PERFORMANCE.md): integer forward on unsigned activations (narrow sums)
// 68-108 G MAC/s (0.41-0.76 of the vpmaddubsw peak measured in the same run, 2.1-3.4x
// PyTorch float32), backward-data (narrow sums on offset weights) 68-104 at stride 1
// (0.41-0.63), 27-39 at stride 2; float32 forward 23-50 (0.28-0.60 of the FMA peak).
// AVX-512 VNNI variant (AMD Zen 4, 2 threads, session 11, the tiles of schedules/tuned/):
// integer forward (4-term vpdpbusd) 158-314 G MAC/s on the 3x3 layers, 0.34-0.67 of the
// vpdpbusd peak measured in the same run, 1.8-5.9x PyTorch float32; backward-data 100-250
// (0.22-0.54); float32 forward 53-79.
// AMD Zen 5 (full-width AVX-512, session 12, the same binary but for 16-lane float32 tiles):
// integer forward 114-225 G MAC/s on the 3x3 layers, 0.15-0.31 of its vpdpbusd peak (760
// G/s, twice Zen 4's per core: the ymm integer tiles tuned there use half of it), 0.9-1.7x
// PyTorch float32 (which reaches 100-170 G/s here); float32 forward 37-96 (0.18-0.47 of the
// zmm FMA peak).
// Zen 5, session 14: lanes along output channels (tile_channel_lanes, the
// conv_forward_unsigned_channels_* kernels for 3x3 layers of 32 or more channels) 215-279 G
// MAC/s on the stride-2 layers, 457-461 on 32->32 and 420-497 on 64->64 8x8 (0.6-0.8 of the
// vpdpbusd peak measured in the same run), 1.3-1.5x the position lanes' tiles. Session 16, the
// float32 twins (conv_*_float_channels_*): forward 121-123 G MAC/s on 32->32, 119-121
// on 64->64 (0.6 of the FMA peak), 1.2-1.6x the 16 x 2 x 8 position tile.
//   - each thread takes (output-channel tile, sample) pairs;
//   - the output is tiled as (v * tile_x x positions) x (tile_y rows) x (tile_channels
//     channels); the accumulators of one tile live in registers for the whole reduction
//     (rows, not wider x tiles, keep an 8x8 map's vectors full);
//   - the reduction runs channel pairs innermost, so (pair, v positions) is one 2v-lane
//     widening multiply reduced by pairs: pmaddwd;
//   - operands are packed once per call (compute_root), in parallel over samples.
void schedule_conv(ConvPipeline p, const ConvParams &params, const Target &target) {
    const Type acc_type = p.accumulator.value().type();
    const int v = params.vector_width > 0 ? params.vector_width : target.natural_vector_size(acc_type);
    const int tile_x = std::max(1, params.tile_x), tile_y = std::max(1, params.tile_y);
    const int tile_k = std::max(1, params.tile_channels);
    const RDom &r = p.reduction;
    const bool channel_lanes = params.channel_lanes && (p.group == 4 || p.group == 1) && !p.narrow_sum.defined();
    Stage update = channel_lanes ? tile_channel_lanes(p, v, tile_x, tile_y, tile_k)
                                 : tile_position_lanes(p, v, tile_x, tile_y, tile_k);
    // A constant stride turns the operand loads into dense vector loads (at stride 2 from the
    // tap's column phase, ConvPipeline). Each specialization inherits the schedule above.
    const int window_unroll = params.window_unroll;
    if (p.stride.as<Internal::IntImm>()) {
        // 3x3 windows; backward-data's merged phase sub-kernel of a 3x3 stride-2 layer
        // (runtime/conv.cpp), 2x2, and its 1x1 windows (whose generic loop over a one-tap
        // window cost 1x1 stride-2 layers 20-40%, session 8).
        std::vector<std::pair<int, int>> windows = {{3, 3}};
        if (p.phases.defined()) windows.insert(windows.end(), {{2, 2}, {1, 1}});
        for (const auto &[wx, wy] : windows) {
            Stage window = update.specialize(p.kernel == wx).specialize(p.kernel_y == wy);
            if (window_unroll >= 1) window.unroll(r[1]);
            if (window_unroll >= 2) window.unroll(r[2]);
            // A 3x3 stride-2 layer's merged 2x2 window, 7 of whose 16 (phase, slot) products
            // are zero taps: with the window and the channel tile unrolled, each product's
            // is_phase_tap is a constant, and the zero taps' are not emitted.
            if (wx == 2 && p.window_taps.defined()) window.specialize(p.window_taps == kOddWindowTaps).unroll(r[2]);
        }
    } else {
        for (int stride : {1, 2}) {
            Stage three = update.specialize(p.stride == stride).specialize(p.kernel == 3);
            if (window_unroll >= 1) three.unroll(r[1], 3);
            if (window_unroll >= 2) three.unroll(r[2], 3);
        }
        // 1x1 windows at stride 1, where forward runs every 1x1 layer (a strided one on a view
        // of the pixels it reads): the generic loops over a one-tap window and a symbolic
        // stride cost their address arithmetic on every channel group of a short reduction
        // (session 21, Zen 3, 3 alternating runs: float32 1x1 16->32 s2 13 -> 15-20 G MAC/s,
        // 32->64 s2 14-15 -> 24; integer 32->64 s2 25 -> 28-29, 16->32 s2 within the noise).
        update.specialize(p.stride == 1).specialize(p.kernel == 1 && p.kernel_y == 1);
    }

    const int pair = p.group;
    // Lanes along channels leave the packing its own width: 16 lanes of a 16-column stride-2
    // row are 8 column pairs, all in the guarded tail (session 14: the packing then took longer
    // than the correlation).
    const int pack_v = channel_lanes ? std::min(v, 8) : v;
    // The padded operand: zeros, then the interior, both dense vector loops (ConvPipeline).
    // The zeros round each row up to whole vectors (a few bytes more per row): a row is short
    // (10 to 34 columns here), and a guarded tail stored it lane by lane, each lane behind a
    // test (session 7: the zero fills took 4.2% of a default training step, now 1.6%).
    // Rows innermost, a vector store each: with the vector's loop along x innermost, LLVM
    // turned each row's zeros into a call to memset of 16 to 64 bytes (session 15: memset
    // 3.6% of a default training step's samples).
    Var xo("xo"), xi("xi");
    p.packed_input.compute_root()
        .bound(p.j, 0, pair)
        .split(p.x, xo, xi, pack_v, TailStrategy::RoundUp)
        .reorder(p.j, xi, p.y, p.phase, xo, p.channel_group, p.n)
        .unroll(p.j)
        .vectorize(xi)
        .parallel(p.n);
    Stage interior = p.packed_input.update();
    // The lanes store to distinct places for any stride >= 1 (the runtime checks it),
    // which Halide cannot prove for forward's symbolic column phases: hence
    // allow_race_conditions.
    interior.reorder(p.j, p.interior.x, p.interior.y, p.channel_group, p.n)
        .unroll(p.j)
        .parallel(p.n)
        .allow_race_conditions();
    schedule_padded_rows(interior, p.interior.x, p.stride, p.input_stride_x, {p.j}, pack_v);
    p.packed_weights.compute_root().bound(p.j, 0, pair).unroll(p.j);
    // Lanes along output channels load (j, v channels) as one dense vector.
    if (channel_lanes) p.packed_weights.reorder_storage(p.j, p.k, p.x, p.y, p.channel_group);

    if (p.correction.defined()) {
        // The weight offset's correction: channel sums of the unpadded input (dense vectors
        // along x; from the packed input, the group's channels would be a strided load each),
        // placed as the packed input (zeros, then the interior), then window sums. About one
        // add per input element: small beside the correlation.
        for (Func f : {p.channel_total, p.channel_sum, p.correction}) {
            f.compute_root().vectorize(p.x, v, TailStrategy::GuardWithIf).parallel(p.n);
        }
        p.channel_total.update()
            .reorder(p.x, p.over_channels.x, p.y, p.n)
            .vectorize(p.x, v, TailStrategy::GuardWithIf)
            .parallel(p.n);
        p.channel_sum.update()
            .reorder(p.interior.x, p.interior.y, p.n)
            .allow_race_conditions()  // distinct places for any stride >= 1, as packed_input's
            .vectorize(p.interior.x, v, TailStrategy::GuardWithIf)
            .parallel(p.n);
        p.correction.update()
            .reorder(p.x, p.window.x, p.window.y, p.y, p.n)
            .vectorize(p.x, v, TailStrategy::GuardWithIf)
            .parallel(p.n);
    }
}

// Measured (AVX2, 2 threads, batch 128, ResNet-20 3x3 layers, bench_conv, session 8, a fast
// hour): integer on unsigned activations (narrow sums) 44-99 G MAC/s (0.33-0.60 of the
// vpmaddubsw peak measured in the same run, 1.1-5.3x PyTorch float32), float32 12-38.
// AVX-512 VNNI (Zen 4, session 11; unsigned inputs as 4-term vpdpbusd over groups of 4 x):
// 89-258 G MAC/s (0.19-0.55 of the vpdpbusd peak, 1.1-2.8x PyTorch), float32 41-77.
// float32 3x3 with a window row's 3 taps per tile (tile_taps, session 17, Zen 5): 57-61 G
// MAC/s on 16->16, 83-87 on 32->32 and 64->64 (0.4 of the FMA peak), 1.15-1.5x one tap.
// Weight gradients: each thread takes (o tile, task_channel_tiles c tiles) tasks and runs
// over all samples, each sample's c tiles in turn (so its error slice, loaded once, serves
// them all); per sample and kernel offset, a register tile of (tile_x vectors of output channels) x
// (tile_channels inputs) accumulates over the output positions, pairs of x reduced by
// pmaddwd, then is shifted by the sample's exponents and added to the int32 total.
void schedule_conv(ConvWeightPipeline p, const ConvParams &params, const Target &target) {
    const Type acc_type = p.partial.value().type();
    const int v = params.vector_width > 0 ? params.vector_width : target.natural_vector_size(acc_type);
    const int tile_o = v * std::max(1, params.tile_x), tile_c = std::max(1, params.tile_channels);
    const RDom &r = p.positions;
    Var oo("oo"), oi("oi"), co("co"), ci("ci"), task("task");

    p.output.compute_root();
    // The total is stored output channels innermost, the axis its updates are vectorized
    // along (dense vector loads and stores, not gathers and scattered scalars); output
    // transposes it once.
    p.total.compute_root().reorder_storage(p.o, p.c, p.kx, p.ky);
    const int tile_taps = std::max(1, params.tile_taps);
    // The narrow sums' chunked tile (schedule_narrow_sums) holds one tap: a knob it would
    // silently ignore or compute wrongly is an error, not a search point.
    _halide_user_assert(tile_taps == 1 || !p.narrow_sum.defined())
        << "tile_taps=" << tile_taps << " needs 4-term or float32 weight gradients; the narrow-sum (int16) "
        << "path of this target takes tile_taps=1";
    Var channel_block("channel_block"), channel_tile("channel_tile"), kxo("kxo"), kxi("kxi");
    Stage total = p.total.update();
    total.split(p.o, oo, oi, tile_o, TailStrategy::GuardWithIf)
        .split(p.c, co, ci, tile_c, TailStrategy::GuardWithIf)
        .split(co, channel_block, channel_tile, std::max(1, params.task_channel_tiles), TailStrategy::GuardWithIf);
    if (tile_taps > 1) {
        total.split(p.kx, kxo, kxi, tile_taps, TailStrategy::GuardWithIf)
            .reorder(oi, ci, kxi, kxo, p.ky, channel_tile, p.samples.x, channel_block, oo)
            .unroll(kxi);
    } else {
        total.reorder(oi, ci, p.kx, p.ky, channel_tile, p.samples.x, channel_block, oo);
    }
    total.vectorize(oi, v).unroll(oi).unroll(ci).fuse(channel_block, oo, task).parallel(task);

    // The register tile: tile_x vectors of output channels x tile_channels inputs (x tile_taps
    // taps), so each loaded error vector meets tile_channels (x tile_taps) broadcast inputs
    // and each broadcast tile_x error vectors.
    p.partial.compute_at(p.total, tile_taps > 1 ? kxo : p.kx)
        .bound_extent(p.o, tile_o)
        .bound_extent(p.c, tile_c)
        .bound_extent(p.kx, tile_taps)
        .store_in(MemoryType::Register)
        .vectorize(p.o, v)
        .unroll(p.o)
        .unroll(p.c)
        .unroll(p.kx);
    Stage update = p.partial.update();
    if (p.narrow_sum.defined()) {
        // Narrow sums over chunks of rows: the same tile in int16.
        update = schedule_narrow_sums(p.narrow_sum, p.partial, p.chunks, r[0], p.q, {{p.o, tile_o}, {p.c, tile_c}},
                                      {r[1], r[2]}, v);
    } else {
        update.reorder(r[0], p.o, p.c, p.kx, r[1], r[2], p.ky, p.n);
        if (p.group > 1) update.atomic().vectorize(r[0]);
    }
    update.vectorize(p.o, v).unroll(p.o).unroll(p.c).unroll(p.kx);

    // The errors' pack is a transpose (x groups of one channel become lanes beside the other
    // channels'): the group's positions j and the output channels o form one vector, j dense
    // in the source, so each o is one small dense load (unrolling j and vectorizing o alone
    // loaded byte by byte: 2.3% of a default training step, now 1.4%).
    p.packed_errors.compute_root()
        .bound(p.j, 0, p.group)
        .vectorize(p.j)
        .vectorize(p.o, v, TailStrategy::GuardWithIf)
        .parallel(p.n);
    // The input is packed once (its column phases side by side): zeros, then the interior,
    // vectorized along a row. The lanes store to distinct places for any stride >= 1 (the
    // runtime checks it), which Halide cannot prove for a symbolic stride: hence
    // allow_race_conditions. At stride 1 the stores are dense; at stride 2 the row is split
    // into its even and odd columns (unrolled), each a dense store into its phase.
    // Zeros rounded up to whole vectors and their rows innermost, as ConvPipeline's.
    Var mo("mo"), mi("mi");
    p.packed_input.compute_root()
        .split(p.m, mo, mi, v, TailStrategy::RoundUp)
        .reorder(mi, p.row, p.phase, mo, p.c, p.n)
        .vectorize(mi)
        .parallel(p.n);
    Stage interior = p.packed_input.update();
    interior.reorder(p.interior.x, p.interior.y, p.c, p.n).parallel(p.n).allow_race_conditions();
    schedule_padded_rows(interior, p.interior.x, p.stride, p.input_stride_x, {}, v);
    // The loop over a row's groups of positions is short on small maps (8 columns: 2 groups
    // of 4 narrow-sum positions, 4 pairs): unrolled there, its loop control goes.
    for (int stride : {1, 2}) {
        Stage strided = update.specialize(p.stride == stride);
        if (p.out_width.defined()) strided.specialize(p.out_width == 8).unroll(r[1]);
    }
}

}  // namespace lowbit::schedules::x86

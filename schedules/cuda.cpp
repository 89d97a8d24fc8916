#include "cuda.h"

namespace lowbit::schedules::cuda {

using namespace Halide;

// quantize_scales: one thread per row (simple, not yet tuned), then per group and the tensor.
void schedule_quantize_scales(QuantizeScalesPipeline p, const ElementwiseParams &params) {
    Var go("go"), block("block"), thread("thread");
    const int threads = params.gpu_threads;
    if (!p.blocked) {
        p.row_max.compute_root().fuse(p.g, p.o, go).gpu_tile(go, block, thread, threads, TailStrategy::GuardWithIf);
        p.row_max.update().fuse(p.g, p.o, go).gpu_tile(go, block, thread, threads, TailStrategy::GuardWithIf);
        p.group_max.compute_root().gpu_tile(p.g, block, thread, threads, TailStrategy::GuardWithIf);
        p.group_max.update().gpu_tile(p.g, block, thread, threads, TailStrategy::GuardWithIf);
    } else {
        p.row_max.compute_root().gpu_tile(p.i, block, thread, threads, TailStrategy::GuardWithIf);
        p.row_max.update().gpu_tile(p.i, block, thread, threads, TailStrategy::GuardWithIf);
    }
    p.tensor_max.compute_root().gpu_single_thread();
    p.tensor_max.update().gpu_single_thread();
    if (!p.blocked) {
        p.group_exponent.compute_root().gpu_tile(p.g, block, thread, threads, TailStrategy::GuardWithIf);
    } else {
        p.group_exponent.compute_root().gpu_tile(p.i, block, thread, threads, TailStrategy::GuardWithIf);
    }
}

void schedule_elementwise(ElementwisePipeline p, const ElementwiseParams &params) {
    Var go("go"), bi("bi"), bgo("bgo"), ti("ti"), tgo("tgo");
    Func out = p.output;
    out.fuse(p.g, p.o, go).gpu_tile(p.i, go, bi, bgo, ti, tgo, params.gpu_threads, 1, TailStrategy::GuardWithIf);
    for (const Expr &condition : p.specializations) out.specialize(condition);
}

}  // namespace lowbit::schedules::cuda

namespace lowbit::schedules::cuda {

// A first GPU schedule (correctness; not tuned): one thread per output element, operands
// packed by their own kernels.
void schedule_conv(ConvPipeline p, const ConvParams &params) {
    Var xo("xo"), xi("xi"), task("task");
    p.output.fuse(p.k, p.n, task)
        .gpu_tile(p.x, task, xo, Var("bt"), xi, Var("tt"), params.gpu_threads, 1, TailStrategy::GuardWithIf);
    p.accumulator.compute_at(p.output, xi);
    p.packed_input.compute_root()
        .reorder(p.j, p.phase, p.x, p.y, p.channel_group, p.n)
        .gpu_tile(p.x, p.y, Var("bx"), Var("by"), Var("tx"), Var("ty"), 16, 16, TailStrategy::GuardWithIf);
    // The interior: a thread per (channel group, sample), each copying its plane.
    p.packed_input.update()
        .reorder(p.j, p.interior.x, p.interior.y, p.channel_group, p.n)
        .gpu_blocks(p.n)
        .gpu_threads(p.channel_group);
    p.packed_weights.compute_root().gpu_tile(p.x, Var("b"), Var("t"), 1, TailStrategy::GuardWithIf);
    if (p.correction.defined()) {  // weights offset to uint8 (4-term dot products; none on GPUs yet)
        for (Func f : {p.channel_total, p.channel_sum, p.correction}) {
            f.compute_root().gpu_tile(p.x, p.y, Var("bx"), Var("by"), Var("tx"), Var("ty"), 16, 16,
                                      TailStrategy::GuardWithIf);
        }
        for (Func f : {p.channel_total, p.correction}) {
            f.update().gpu_tile(p.x, p.y, Var("bx"), Var("by"), Var("tx"), Var("ty"), 16, 16,
                                TailStrategy::GuardWithIf);
        }
        p.channel_sum.update()
            .reorder(p.interior.x, p.interior.y, p.n)
            .allow_race_conditions()  // distinct places for any stride >= 1
            .gpu_blocks(p.n)
            .gpu_threads(p.interior.x);
    }
}

void schedule_conv(ConvWeightPipeline p, const ConvParams &params) {
    Var task("task"), b("b"), t("t");
    p.output.compute_root().fuse(p.c, p.o, task).gpu_tile(task, b, t, params.gpu_threads, TailStrategy::GuardWithIf);
    p.total.compute_at(p.output, t);
    p.partial.compute_at(p.output, t);
    p.packed_errors.compute_root().gpu_tile(p.o, b, t, params.gpu_threads, TailStrategy::GuardWithIf);
    p.packed_input.compute_root().gpu_tile(p.c, b, t, params.gpu_threads, TailStrategy::GuardWithIf);
    // The interior: a thread per (channel, sample), each copying its plane.
    p.packed_input.update().reorder(p.interior.x, p.interior.y, p.c, p.n).gpu_blocks(p.n).gpu_threads(p.c);
}

}  // namespace lowbit::schedules::cuda

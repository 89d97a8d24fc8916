// conv_backward_weight (method.md section 1): dW = correlate(E, A), the gradient of
// conv_forward with respect to its weights:
//   dW(kx, ky, c, o) = sum_{n, y, x} E(x, y, o, n) A(x s + kx - p, y s + ky - p, c, n).
// The reduction over N * OH * OW is far past what int32 holds at |q| = 127 (method.md
// section 4), so it is split per sample: each sample's sum over OH * OW positions is exact in
// int32 (the runtime checks OH * OW * 127^2 < 2^31), and samples are combined in double with
// their scales, which may vary per sample and per channel:
//   dW = sum_n partial(n) * error_scale(n, o) * input_scale(n, c), rounded once to float.
// Operands are packed as pairs of consecutive x positions for 2-term dot products. The input
// is packed once, split into `stride` column phases: column m of phase f holds input column
// m s + f - p, so the pair of inputs that meets the errors at (x, x + 1) through tap kx,
// columns (x s + kx - p, (x + 1) s + kx - p), is the adjacent pair (m, m + 1) of phase
// kx mod s, m = x + kx / s: no copy per tap, no gather.
#include "conv_common.h"

namespace {

using namespace Halide;
using namespace lowbit::conv;
using lowbit::schedules::ConvWeightPipeline;

// The shared algorithm: operand is the packed type, acc the per-sample sum's. `input` is
// read only inside its width x height.
template <class Input>
void define_weight_gradient(ConvWeightPipeline &p, Func errors, const Input &input, const Expr &out_w,
                            const Expr &out_h, const Expr &batch, const Expr &stride, const Expr &pad, Type operand,
                            Type acc) {
    Var j = p.j, kx = p.kx, ky = p.ky, c = p.c, o = p.o, n = p.n, x2("x2"), y("y");
    Var m = p.m, phase = p.phase, row = p.row;
    const int pair = p.pairs ? 2 : 1;
    Expr x = pair * x2 + j;
    // Zero past the last output column, so a pair never reads past the row.
    p.packed_errors(j, o, x2, y, n) = select(x < out_w, cast(operand, errors(x, y, o, n)), cast(operand, 0));
    // Zeros (the padding), then the input at its phase-split position: both loops vectorize to
    // dense loads (a boundary condition in one definition would clamp x lane by lane).
    p.packed_input(m, phase, row, c, n) = cast(operand, 0);
    p.interior = RDom({{0, input.dim(0).extent()}, {0, input.dim(1).extent()}}, "interior");
    const Expr column = p.interior.x + pad;
    p.packed_input(column / stride, column % stride, p.interior.y + pad, c, n) =
        cast(operand, input(p.interior.x, p.interior.y, c, n));
    p.positions = RDom({{0, pair}, {0, (out_w + pair - 1) / pair}, {0, out_h}}, "positions");
    const RDom &r = p.positions;
    p.partial(o, c, kx, ky, n) = cast(acc, 0);
    p.partial(o, c, kx, ky, n) +=
        cast(acc, p.packed_errors(r[0], o, r[1], r[2], n)) *
        cast(acc, p.packed_input(pair * r[1] + r[0] + kx / stride, kx % stride, r[2] * stride + ky, c, n));
    p.samples = RDom(0, batch, "samples");
    p.stride = stride;
}

class ConvBackwardWeight : public Generator<ConvBackwardWeight> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> errors{"errors"};            // (x, y, o, n)
    Input<Buffer<int8_t, 4>> input{"input"};              // (x, y, c, n)
    Input<Buffer<double, 2>> error_scale{"error_scale"};  // (n, o)
    Input<Buffer<double, 2>> input_scale{"input_scale"};  // (n, c)
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Output<Buffer<float, 4>> output{"output"};  // (kx, ky, c, o)

    void generate() {
        Func e = BoundaryConditions::constant_exterior(errors, cast<int8_t>(0));
        define_weight_gradient(p, e, input, errors.dim(0).extent(), errors.dim(1).extent(), errors.dim(3).extent(),
                               stride, pad, Int(16), Int(32));
        Var kx = p.kx, ky = p.ky, c = p.c, o = p.o;
        const RDom &rn = p.samples;
        p.total(kx, ky, c, o) = cast<double>(0);
        // strict_float: the samples are added in order with the same rounding on every target.
        p.total(kx, ky, c, o) = strict_float(p.total(kx, ky, c, o) + cast<double>(p.partial(o, c, kx, ky, rn)) *
                                                                         error_scale(rn, o) * input_scale(rn, c));
        output(kx, ky, c, o) = cast<float>(p.total(kx, ky, c, o));
        p.output = output;
        set_estimates();
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    void set_estimates() {
        errors.set_estimates(kActivationEstimate);
        input.set_estimates(kActivationEstimate);
        error_scale.set_estimates({{0, kEstimateBatch}, {0, kEstimateChannels}});
        input_scale.set_estimates({{0, kEstimateBatch}, {0, kEstimateChannels}});
        stride.set_estimate(1);
        pad.set_estimate(1);
        output.set_estimates(kWeightEstimate);
    }
    ConvWeightPipeline p;
};

class ConvBackwardWeightFloat : public Generator<ConvBackwardWeightFloat> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<float, 4>> errors{"errors"};  // (x, y, o, n)
    Input<Buffer<float, 4>> input{"input"};    // (x, y, c, n)
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Output<Buffer<float, 4>> output{"output"};  // (kx, ky, c, o)

    void generate() {
        p.pairs = false;
        Func e = BoundaryConditions::constant_exterior(errors, 0.0f);
        define_weight_gradient(p, e, input, errors.dim(0).extent(), errors.dim(1).extent(), errors.dim(3).extent(),
                               stride, pad, Float(32), Float(32));
        Var kx = p.kx, ky = p.ky, c = p.c, o = p.o;
        const RDom &rn = p.samples;
        p.total(kx, ky, c, o) = 0.0f;
        p.total(kx, ky, c, o) += p.partial(o, c, kx, ky, rn);
        output(kx, ky, c, o) = p.total(kx, ky, c, o);
        p.output = output;
        errors.set_estimates(kActivationEstimate);
        input.set_estimates(kActivationEstimate);
        stride.set_estimate(1);
        pad.set_estimate(1);
        output.set_estimates(kWeightEstimate);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvWeightPipeline p;
};

}  // namespace

HALIDE_REGISTER_GENERATOR(ConvBackwardWeight, conv_backward_weight)
HALIDE_REGISTER_GENERATOR(ConvBackwardWeightFloat, conv_backward_weight_float)

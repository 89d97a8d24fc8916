// conv_backward_weight (method.md section 1): dW = correlate(E, A), the gradient of
// conv_forward with respect to its weights:
//   dW(kx, ky, c, o) = sum_{n, y, x} E(x, y, o, n) A(x s + kx - p, y s + ky - p, c, n).
// The reduction over N * OH * OW is far past what int32 holds at |q| = 127 (method.md
// section 4), so it is split per sample: each sample's sum over OH * OW positions is exact in
// int32 (the runtime checks OH * OW * 127^2 < 2^31). The samples' group scales differ by
// powers of two, so the integer kernels combine the samples exactly, as left shifts:
//   total(kx, ky, c, o) = sum_n partial(n) << (error_shift(o, n) + input_shift(c, n)),
// the shifts being each sample's exponent below the largest of the samples in the call
// (method.md section 4: group factors applied to partial sums). The runtime passes runs of
// samples whose shifted sums cannot leave int32, and scales each run's total once, in double:
// dW = sum over runs of total * error_base(o) * input_base(c) (runtime/conv.cpp). Against
// scaling every sample's sum in double, this is one int32 shift and add per sample and output
// instead of a conversion, two multiplies and a double add: +18% on 8x8 maps, whose samples
// have only 64 positions each (docs/PERFORMANCE.md, session 10).
// Operands are packed as pairs of consecutive x positions for 2-term dot products. The input
// is packed once, split into `stride` column phases: column m of phase f holds input column
// m s + f - p, so the pair of inputs that meets the errors at (x, x + 1) through tap kx,
// columns (x s + kx - p, (x + 1) s + kx - p), is the adjacent pair (m, m + 1) of phase
// kx mod s, m = x + kx / s: no copy per tap, no gather. Unsigned inputs (after a ReLU) pack
// groups of 4 positions instead, for uint8 x int8 narrow sums (ConvBackwardWeightUnsigned).
#include "conv_common.h"

namespace {

using namespace Halide;
using namespace lowbit::conv;
using lowbit::schedules::ConvWeightPipeline;

// Packs both operands in groups of p.group consecutive x positions: the errors as
// `error_type`, the input as `input_type`, read only inside its width x height.
template <class Input>
void define_packed_operands(ConvWeightPipeline &p, Func errors, const Input &input, const Expr &out_w,
                            const Expr &stride, const Expr &pad, Type error_type, Type input_type) {
    Var j = p.j, c = p.c, o = p.o, n = p.n, xg("xg"), y("y");
    Var m = p.m, phase = p.phase, row = p.row;
    Expr x = p.group * xg + j;
    // Zero past the last output column, so a group never reads past the row.
    p.packed_errors(j, o, xg, y, n) = select(x < out_w, cast(error_type, errors(x, y, o, n)), cast(error_type, 0));
    // Zeros (the padding), then the input at its phase-split position: both loops vectorize to
    // dense loads (a boundary condition in one definition would clamp x lane by lane).
    p.packed_input(m, phase, row, c, n) = cast(input_type, 0);
    p.interior = RDom({{0, input.dim(0).extent()}, {0, input.dim(1).extent()}}, "interior");
    const Expr column = p.interior.x + pad;
    p.packed_input(column / stride, column % stride, p.interior.y + pad, c, n) =
        cast(input_type, input(p.interior.x, p.interior.y, c, n));
    p.stride = stride;
    p.out_width = out_w;
}

// The shared algorithm over groups of p.group positions: the errors and the input packed as
// error_type and input_type, acc the per-sample sum's type.
template <class Input>
void define_weight_gradient(ConvWeightPipeline &p, Func errors, const Input &input, const Expr &out_w,
                            const Expr &out_h, const Expr &batch, const Expr &stride, const Expr &pad, Type error_type,
                            Type input_type, Type acc) {
    define_packed_operands(p, errors, input, out_w, stride, pad, error_type, input_type);
    const int g = p.group;
    p.positions = RDom({{0, g}, {0, (out_w + g - 1) / g}, {0, out_h}}, "positions");
    const RDom &r = p.positions;
    Var kx = p.kx, ky = p.ky, c = p.c, o = p.o, n = p.n;
    p.partial(o, c, kx, ky, n) = cast(acc, 0);
    p.partial(o, c, kx, ky, n) +=
        cast(acc, p.packed_errors(r[0], o, r[1], r[2], n)) *
        cast(acc, p.packed_input(g * r[1] + r[0] + kx / stride, kx % stride, r[2] * stride + ky, c, n));
    p.samples = RDom(0, batch, "samples");
}

// The narrow-sum algorithm of unsigned inputs (see ConvWeightPipeline): int8 errors times
// uint8 inputs in groups of 4 x positions, summed in int16 over `chunk` rows at a time. Rows
// past out_h read zero errors.
template <class Input>
void define_narrow_weight_gradient(ConvWeightPipeline &p, Func errors, const Input &input, const Expr &out_w,
                                   const Expr &out_h, const Expr &batch, const Expr &stride, const Expr &pad,
                                   const Expr &chunk) {
    p.group = 4;
    define_packed_operands(p, errors, input, out_w, stride, pad, Int(8), UInt(8));
    p.positions = RDom({{0, 2}, {0, (out_w + 3) / 4}, {0, chunk}}, "positions");
    p.chunks = pair_chunks((out_h + chunk - 1) / chunk);
    const RDom &r = p.positions;
    Var kx = p.kx, ky = p.ky, c = p.c, o = p.o, n = p.n, h("h");
    const Expr j = 2 * p.q + r[0], y = h * chunk + r[2];
    Expr e = p.packed_errors(j, o, r[1], y, n);
    Expr a = p.packed_input(4 * r[1] + j + kx / stride, kx % stride, y * stride + ky, c, n);
    // saturating_add: the form Halide matches to pmaddubsw; nothing saturates (the runtime
    // sizes `chunk`).
    p.narrow_sum(p.q, o, c, kx, ky, n, h) = cast<int16_t>(0);
    p.narrow_sum(p.q, o, c, kx, ky, n, h) =
        saturating_add(p.narrow_sum(p.q, o, c, kx, ky, n, h), cast<int16_t>(a) * cast<int16_t>(e));
    p.partial(o, c, kx, ky, n) = cast<int32_t>(0);
    p.partial(o, c, kx, ky, n) += widen_pair_sum(p.narrow_sum(p.chunks.x, o, c, kx, ky, n, p.chunks.y));
    p.samples = RDom(0, batch, "samples");
}

// total = sum_n partial(n) << (error_shift(o, n) + input_shift(c, n)), exact in int32 (the
// runtime sizes the runs of samples). The shift tables hold channels innermost: the update is
// vectorized along o, so a sample's error shifts are one dense load.
template <class Shifts, class Output>
void define_shifted_total(ConvWeightPipeline &p, const Shifts &error_shift, const Shifts &input_shift, Output &output) {
    Var kx = p.kx, ky = p.ky, c = p.c, o = p.o;
    const RDom &rn = p.samples;
    p.total(kx, ky, c, o) = cast<int32_t>(0);
    p.total(kx, ky, c, o) += p.partial(o, c, kx, ky, rn)
                             << (cast<int32_t>(error_shift(o, rn)) + cast<int32_t>(input_shift(c, rn)));
    output(kx, ky, c, o) = p.total(kx, ky, c, o);
    p.output = output;
}

template <class Gen>
void set_weight_gradient_estimates(Gen &gen) {
    gen.errors.set_estimates(kActivationEstimate);
    gen.input.set_estimates(kActivationEstimate);
    gen.error_shift.set_estimates({{0, kEstimateChannels}, {0, kEstimateBatch}});
    gen.input_shift.set_estimates({{0, kEstimateChannels}, {0, kEstimateBatch}});
    gen.stride.set_estimate(1);
    gen.pad.set_estimate(1);
    gen.output.set_estimates(kWeightEstimate);
}

class ConvBackwardWeight : public Generator<ConvBackwardWeight> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> errors{"errors"};             // (x, y, o, n)
    Input<Buffer<int8_t, 4>> input{"input"};               // (x, y, c, n)
    Input<Buffer<uint8_t, 2>> error_shift{"error_shift"};  // (o, n)
    Input<Buffer<uint8_t, 2>> input_shift{"input_shift"};  // (c, n)
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Output<Buffer<int32_t, 4>> output{"output"};  // (kx, ky, c, o): the shifted total

    void generate() {
        Func e = BoundaryConditions::constant_exterior(errors, cast<int8_t>(0));
        define_weight_gradient(p, e, input, errors.dim(0).extent(), errors.dim(1).extent(), errors.dim(3).extent(),
                               stride, pad, Int(16), Int(16), Int(32));
        p.input_stride_x = any_x_stride(input);  // the pixels a 1x1 strided layer reads
        define_shifted_total(p, error_shift, input_shift, output);
        set_weight_gradient_estimates(*this);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvWeightPipeline p;
};

// The same on unsigned inputs (activations in an unsigned format): uint8 inputs times int8
// errors. With 4-term dot products (AVX-512 VNNI: vpdpbusd) in groups of 4 x positions,
// straight into the int32 per-sample sums; elsewhere as narrow sums (pmaddubsw on AVX2) over
// `chunk` rows of output positions, which the runtime picks so that no int16 sum can overflow
// (the 4-term path ignores it). Narrow sums are exact on every target.
class ConvBackwardWeightUnsigned : public Generator<ConvBackwardWeightUnsigned> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> errors{"errors"};             // (x, y, o, n)
    Input<Buffer<int8_t, 4>> input{"input"};               // (x, y, c, n), every value >= 0
    Input<Buffer<uint8_t, 2>> error_shift{"error_shift"};  // as ConvBackwardWeight's
    Input<Buffer<uint8_t, 2>> input_shift{"input_shift"};
    Input<int> stride{"stride"};
    Input<int> pad{"pad"};
    Input<int> chunk{"chunk"};                    // rows of output positions per int16 sum
    Output<Buffer<int32_t, 4>> output{"output"};  // as ConvBackwardWeight's

    void generate() {
        Func e = BoundaryConditions::constant_exterior(errors, cast<int8_t>(0));
        if (dot_width(get_target(), dot) == 4 && !get_target().has_gpu_feature()) {
            p.group = 4;
            define_weight_gradient(p, e, input, errors.dim(0).extent(), errors.dim(1).extent(), errors.dim(3).extent(),
                                   stride, pad, Int(8), UInt(8), Int(32));
        } else {
            define_narrow_weight_gradient(p, e, input, errors.dim(0).extent(), errors.dim(1).extent(),
                                          errors.dim(3).extent(), stride, pad, chunk);
        }
        p.input_stride_x = any_x_stride(input);  // the pixels a 1x1 strided layer reads
        define_shifted_total(p, error_shift, input_shift, output);
        set_weight_gradient_estimates(*this);
        chunk.set_estimate(16);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
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
        p.group = 1;
        Func e = BoundaryConditions::constant_exterior(errors, 0.0f);
        define_weight_gradient(p, e, input, errors.dim(0).extent(), errors.dim(1).extent(), errors.dim(3).extent(),
                               stride, pad, Float(32), Float(32), Float(32));
        p.input_stride_x = any_x_stride(input);  // the pixels a 1x1 strided layer reads
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
HALIDE_REGISTER_GENERATOR(ConvBackwardWeightUnsigned, conv_backward_weight_unsigned)
HALIDE_REGISTER_GENERATOR(ConvBackwardWeightFloat, conv_backward_weight_float)

// conv_backward_data (method.md section 1): dA = conv_transpose(E, W), the gradient of
// conv_forward with respect to its input.
//
// A forward output y = sum_kx A(y s + kx - p) W(kx) sends E(y) W(kx) back to input
// ix = y s + kx - p. At stride 1, flipping the kernel makes that a correlation, the one
// conv_forward computes:
//   dA(ix) = sum_{kx', o} E(ix + kx' - (K - 1 - p)) W(K - 1 - kx', c, o).
// At stride s the pixels of one phase, ix = s X + phase (per axis), receive only the taps
// kx = (phase + p) mod s + s t: a stride-1 correlation of E with a sub-kernel. The runtime
// merges the s x s phases' sub-kernels into one kernel of s s C output channels (zeros where
// a phase has fewer taps), and the kernels place each phase's result at its pixels as they
// store it (`phases`, see interleave_phases): one call, no multiply meets the zeros between
// the samples of a dilated E, and every store is dense.
//   integer: int8 E and W, int32 sums, dA = acc * error_scale(n) * weight_scale(c), in double.
//            W's group scales vary along the reduction (per output channel o), so the runtime
//            passes them as left shifts, weight_shift(o) = e_max - e_o, applied to the
//            weights before accumulation (method.md section 4; exact while nothing overflows,
//            which the runtime checks). The 4-term u8 x i8 path offsets the shifted weights by
//            +128 to uint8, so there they must stay within int8 (the runtime passes shifts
//            only where they do, and splits W into exponent classes where not).
//   narrow:  the same as narrow sums (pmaddubsw on AVX2, see ConvBackwardDataNarrow): the
//            shifted weights offset to uint8, times int8 errors, int16 sums over chunks of
//            channels, the offset's contribution subtracted.
//   float:   the float32 baseline.
#include "conv_common.h"

namespace {

using namespace Halide;
using namespace lowbit::conv;
using lowbit::schedules::ConvPipeline;

template <class Gen>
void set_integer_backward_data_estimates(Gen &gen) {
    gen.errors.set_estimates(kActivationEstimate);
    gen.weights.set_estimates(kWeightEstimate);
    gen.error_scale.set_estimates({{0, kEstimateBatch}});
    gen.weight_scale.set_estimates({{0, kEstimateChannels}});
    gen.weight_shift.set_estimates({{0, kEstimateChannels}});
    gen.phases.set_estimate(1);
    gen.pad_x.set_estimate(1);
    gen.pad_y.set_estimate(1);
    gen.window_taps.set_estimate(lowbit::kAllWindowTaps);
    gen.addend.set_estimates(kActivationEstimate);
    gen.accumulate.set_estimate(false);
    gen.output.set_estimates(kActivationEstimate);
}

class ConvBackwardData : public Generator<ConvBackwardData> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> errors{"errors"};               // (x, y, o, n): dL/dY
    Input<Buffer<int8_t, 4>> weights{"weights"};             // (kx, ky, c, o)
    Input<Buffer<double, 1>> error_scale{"error_scale"};     // (n)
    Input<Buffer<double, 1>> weight_scale{"weight_scale"};   // (c)
    Input<Buffer<uint8_t, 1>> weight_shift{"weight_shift"};  // (o)
    // 1, or the layer's stride s: the output interleaves s x s phases, the weights (kx, ky,
    // s s C, o) holding phase (px, py) of channel c as channel s (s c + py) + px.
    Input<int> phases{"phases"};
    // Per axis, and the kernel may be rectangular: a phase's sub-kernel (runtime/conv.cpp).
    Input<int> pad_x{"pad_x"};
    Input<int> pad_y{"pad_y"};
    Input<int> window_taps{"window_taps"};     // as ConvBackwardDataNarrow's
    Input<Buffer<float, 4>> addend{"addend"};  // (x, y, c, n), added where `accumulate`
    Input<bool> accumulate{"accumulate"};
    Output<Buffer<float, 4>> output{"output"};  // (x, y, c, n): dL/dA

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, group = p.channel_group;
        const int g = p.group = dot_width(get_target(), dot);
        set_phase_taps(p, phases, window_taps, merged_phase_block(channel_lanes, vector_width));
        Expr kernel_x = weights.dim(0).extent(), kernel_y = weights.dim(1).extent();
        Func e = channel_bounded(errors, errors.dim(2).extent(), cast<int8_t>(0));
        Func w = BoundaryConditions::constant_exterior(weights, cast<int8_t>(0));
        const Expr o = channel_in_group(group, j, g);
        // E shifted by K - 1 - pad (of the comment above).
        define_padded_input(p, errors.dim(0).extent(), errors.dim(1).extent(), kernel_x - 1 - pad_x,
                            kernel_y - 1 - pad_y, 1,
                            [&](Expr ix, Expr iy) { return pack_integer_input(e(ix, iy, o, n), g); });
        Func shift = BoundaryConditions::constant_exterior(weight_shift, cast<uint8_t>(0));
        p.packed_weights(j, x, y, group, k) = pack_integer_weight(
            cast<int16_t>(w(kernel_x - 1 - x, kernel_y - 1 - y, k, o)) << cast<int16_t>(shift(o)), g);
        Expr sum = define_correlation(p, kernel_x, kernel_y, errors.dim(2).extent(), Int(32));
        if (g == 4) sum -= define_offset_correction(p, e, errors.dim(2).extent(), kernel_x, kernel_y, kWeightOffset4);
        sum = interleave_phases(p, sum, phases);
        output(x, y, k, n) = strict_float(
            add_addend(p, cast<float>(cast<double>(sum) * error_scale(n) * weight_scale(k)), addend, accumulate));
        p.output = output;
        output.dim(2).set_min(0);                     // as ConvBackwardDataNarrow's
        p.output_stride_x = any_x_stride(output);     // the pixels a 1x1 strided layer reaches
        addend.dim(0).set_stride(p.output_stride_x);  // the same view, where it is the output

        set_integer_backward_data_estimates(*this);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvPipeline p;
};

// Narrow sums for AVX2, where the int16-pair kernel above runs pmaddwd: pmaddubsw multiplies
// twice the products per instruction but needs one operand unsigned. The errors are signed
// (and their zero padding must stay zero), so the weights are made unsigned instead: the
// shifted weights plus weight_offset (>= -their minimum), with
//   sum_{o, window} E (W + offset) = sum E W + offset * (window sum of E over all o),
// the correction computed once per position (define_offset_correction), not per channel c.
// Summed in int16 over `chunk` groups of 4 output channels o, then in int32; the runtime picks
// offset and chunk so that the weights fit uint8 and no int16 sum can pass 32767
// (2 kernel_x kernel_y chunk qmax_e (max W + offset) <= 32767).
class ConvBackwardDataNarrow : public Generator<ConvBackwardDataNarrow> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<int8_t, 4>> errors{"errors"};               // (x, y, o, n)
    Input<Buffer<int8_t, 4>> weights{"weights"};             // (kx, ky, c, o)
    Input<Buffer<double, 1>> error_scale{"error_scale"};     // (n)
    Input<Buffer<double, 1>> weight_scale{"weight_scale"};   // (c)
    Input<Buffer<uint8_t, 1>> weight_shift{"weight_shift"};  // (o)
    Input<int> weight_offset{"weight_offset"};               // added to the shifted weights
    Input<int> phases{"phases"};                             // as ConvBackwardData's
    Input<int> pad_x{"pad_x"};
    Input<int> pad_y{"pad_y"};
    Input<int> chunk{"chunk"};                 // groups of 4 output channels per int16 sum
    Input<int> window_taps{"window_taps"};     // the merged window's taps per phase (kAllWindowTaps)
    Input<Buffer<float, 4>> addend{"addend"};  // as ConvBackwardData's
    Input<bool> accumulate{"accumulate"};
    Output<Buffer<float, 4>> output{"output"};  // (x, y, c, n)

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, group = p.channel_group;
        p.group = 4;
        set_phase_taps(p, phases, window_taps, 1);  // narrow sums: lanes along x only
        Expr kernel_x = weights.dim(0).extent(), kernel_y = weights.dim(1).extent();
        Expr channels = errors.dim(2).extent();
        Func e = channel_bounded(errors, channels, cast<int8_t>(0));
        Func w = BoundaryConditions::constant_exterior(weights, cast<int8_t>(0));
        Func shift = BoundaryConditions::constant_exterior(weight_shift, cast<uint8_t>(0));
        const Expr o = channel_in_group(group, j, 4);
        define_padded_input(p, errors.dim(0).extent(), errors.dim(1).extent(), kernel_x - 1 - pad_x,
                            kernel_y - 1 - pad_y, 1, [&](Expr ix, Expr iy) { return e(ix, iy, o, n); });
        // A channel past the last o has weight `offset` here, but its errors are zero.
        Expr shifted = cast<int16_t>(w(kernel_x - 1 - x, kernel_y - 1 - y, k, o)) << cast<int16_t>(shift(o));
        p.packed_weights(j, x, y, group, k) = cast<uint8_t>(shifted + cast<int16_t>(weight_offset));
        // Two statements: the correction reads what the correlation records in p.
        Expr sum = define_narrow_correlation(p, kernel_x, kernel_y, channels, chunk);
        sum -= define_offset_correction(p, e, channels, kernel_x, kernel_y, weight_offset);
        sum = interleave_phases(p, sum, phases);
        output(x, y, k, n) = strict_float(
            add_addend(p, cast<float>(cast<double>(sum) * error_scale(n) * weight_scale(k)), addend, accumulate));
        p.output = output;
        // Channel 0 first (as the runtime passes it): a channel tile's phases are then
        // constants, which the tap tests need to fold.
        output.dim(2).set_min(0);

        set_integer_backward_data_estimates(*this);
        weight_offset.set_estimate(7);
        chunk.set_estimate(8);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvPipeline p;
};

class ConvBackwardDataFloat : public Generator<ConvBackwardDataFloat> {
public:
    LOWBIT_CONV_KNOBS
    Input<Buffer<float, 4>> errors{"errors"};    // (x, y, o, n)
    Input<Buffer<float, 4>> weights{"weights"};  // (kx, ky, c, o)
    Input<int> phases{"phases"};                 // as ConvBackwardData's
    Input<int> pad_x{"pad_x"};
    Input<int> pad_y{"pad_y"};
    Input<int> window_taps{"window_taps"};     // as ConvBackwardDataNarrow's
    Input<Buffer<float, 4>> addend{"addend"};  // as ConvBackwardData's
    Input<bool> accumulate{"accumulate"};
    Output<Buffer<float, 4>> output{"output"};  // (x, y, c, n)

    void generate() {
        Var j = p.j, x = p.x, y = p.y, k = p.k, n = p.n, o = p.channel_group;
        p.group = 1;
        set_phase_taps(p, phases, window_taps, merged_phase_block(channel_lanes, vector_width));
        Expr kernel_x = weights.dim(0).extent(), kernel_y = weights.dim(1).extent();
        define_padded_input(p, errors.dim(0).extent(), errors.dim(1).extent(), kernel_x - 1 - pad_x,
                            kernel_y - 1 - pad_y, 1, [&](Expr ix, Expr iy) { return errors(ix, iy, o, n); });
        p.packed_weights(j, x, y, o, k) = weights(kernel_x - 1 - x, kernel_y - 1 - y, k, o);
        Expr sum =
            interleave_phases(p, define_correlation(p, kernel_x, kernel_y, errors.dim(2).extent(), Float(32)), phases);
        output(x, y, k, n) = add_addend(p, sum, addend, accumulate);
        p.output = output;
        output.dim(2).set_min(0);                     // as ConvBackwardDataNarrow's
        p.output_stride_x = any_x_stride(output);     // the pixels a 1x1 strided layer reaches
        addend.dim(0).set_stride(p.output_stride_x);  // the same view, where it is the output

        errors.set_estimates(kActivationEstimate);
        weights.set_estimates(kWeightEstimate);
        phases.set_estimate(1);
        pad_x.set_estimate(1);
        pad_y.set_estimate(1);
        window_taps.set_estimate(lowbit::kAllWindowTaps);
        addend.set_estimates(kActivationEstimate);
        accumulate.set_estimate(false);
        output.set_estimates(kActivationEstimate);
    }

    void schedule() { schedule_conv(get_target(), p, params()); }

private:
    ConvPipeline p;
};

}  // namespace

HALIDE_REGISTER_GENERATOR(ConvBackwardData, conv_backward_data)
HALIDE_REGISTER_GENERATOR(ConvBackwardDataNarrow, conv_backward_data_narrow)
HALIDE_REGISTER_GENERATOR(ConvBackwardDataFloat, conv_backward_data_float)

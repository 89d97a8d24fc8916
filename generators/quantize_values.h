// The value half of quantization (method.md section 3), shared by the quantize generators and
// the fused batch-norm + ReLU + quantize generator: q for one element, by nearest or
// stochastic rounding to the format's representable set, and the element index that seeds
// the stochastic draw. Both generators must agree bit for bit, so both use this.
#pragma once

#include "Halide.h"
#include "format.h"
#include "halide_ops.h"

namespace lowbit::quantize_generators {

using namespace Halide;

// The default error format m1e2 (M = 1, E = 2, D = 1), which has a rounding loop of its own.
inline Expr is_m1e2(const Expr &mantissa_max, const Expr &exponent_steps, const Expr &shift) {
    return mantissa_max == 1 && exponent_steps == 3 && shift == 1;
}

// Element values q, by nearest or stochastic rounding to the format's representable set.
// The format arrives as runtime values (no library per format); the runtime checks it.
struct FormatInputs {
    Expr mantissa_max, exponent_steps, shift, qmax, has_sign;
};

inline Expr quantized_value(const Expr &x, const Expr &tensor_scale, const Expr &group_exponent, const FormatInputs &f,
                            const Expr &stochastic, const Expr &random) {
    const lowbit::FormatRuntime<HalideOps> format{f.mantissa_max, f.exponent_steps, f.shift};
    Expr group_scale = lowbit::group_scale<HalideOps>(cast<double>(tensor_scale), group_exponent);
    Expr u = lowbit::value_in_steps<HalideOps>(cast<double>(x), cast<double>(f.qmax), group_scale, f.has_sign);
    Expr a = abs(u);
    Expr nearest = lowbit::round_magnitude_nearest<HalideOps>(a, format);
    // The m1e2 loop (value_specializations) takes the short way; every other format walks
    // the grids. Where the format is not known to be m1e2, the select keeps both.
    Expr stochastic_value = select(is_m1e2(f.mantissa_max, f.exponent_steps, f.shift),
                                   lowbit::round_m1e2_magnitude_stochastic<HalideOps>(a, random),
                                   lowbit::round_magnitude_stochastic<HalideOps>(a, format, random));
    // IEEE semantics for every float operation (strict_float): the result must not depend on
    // the target's FMA or reassociation, so that every compiled variant gives identical
    // values. The select on the rounding mode stays outside, where a specialization on
    // `stochastic` folds it (the simplifier leaves strict_float's insides alone), so that the
    // nearest loops do not compute the draws.
    Expr magnitude = select(stochastic, strict_float(stochastic_value), strict_float(nearest));
    // u's sign bit on the magnitude, in double: one and and one or per vector, where a
    // select on u < 0 after the conversion to int spends a compare, a mask narrowing and a
    // negation (-0.0 converts to 0 like 0.0).
    Expr sign = reinterpret<uint64_t>(strict_float(u)) & Expr(uint64_t(1) << 63);
    Expr signed_value = reinterpret<double>(reinterpret<uint64_t>(magnitude) | sign);
    return select(strict_float(tensor_scale == 0.0f), cast<int8_t>(0), cast<int8_t>(cast<int>(signed_value)));
}

inline Expr element_index(const Var &i, const Var &g, const Var &o, const Expr &extent_i, const Expr &extent_g) {
    return cast<uint32_t>(i) +
           cast<uint32_t>(extent_i) * (cast<uint32_t>(g) + cast<uint32_t>(extent_g) * cast<uint32_t>(o));
}

// The stochastic draw of every element of an (i, g, o) view, a Func of its own so that a
// schedule can compute it in 32-bit vectors, twice as wide as quantized_value's doubles
// (ElementwisePipeline::random). Nearest rounding never calls it.
inline Func element_randoms(const Var &i, const Var &g, const Var &o, const Expr &extent_i, const Expr &extent_g,
                            const Expr &key0, const Expr &key1) {
    Func random("random");
    random(i, g, o) = lowbit::element_random<HalideOps>(element_index(i, g, o, extent_i, extent_g), key0, key1);
    return random;
}

// The cases of quantized_value worth their own loops (a generator's Inputs, see
// LOWBIT_QUANTIZE_VALUE_INPUTS), first match first. Fixed point (E = 0) has a uniform grid:
// no exponent-grid tests. The default error format, m1e2 rounded stochastically, the most
// expensive quantization of a default training step, takes its short way
// (round_m1e2_magnitude_stochastic), signed (as errors are: the sign's select folds too); the
// other stochastic formats say they are not m1e2, so that the select between the two ways
// folds in their loop too (an unsigned um1e2 takes the unspecialized loop, which has both).
template <class Gen>
std::vector<Expr> value_specializations(const Gen &g) {
    const Expr m1e2 = is_m1e2(g.mantissa_max, g.exponent_steps, g.shift_bits);
    return {g.stochastic && m1e2 && g.has_sign, g.stochastic && g.exponent_steps == 0, g.stochastic && !m1e2,
            !g.stochastic && g.exponent_steps == 0, !g.stochastic};
}

#define LOWBIT_QUANTIZE_VALUE_INPUTS             \
    Input<float> tensor_scale{"tensor_scale"};   \
    Input<int> mantissa_max{"mantissa_max"};     \
    Input<int> exponent_steps{"exponent_steps"}; \
    Input<int> shift_bits{"shift_bits"};         \
    Input<int> qmax{"qmax"};                     \
    Input<bool> has_sign{"has_sign"};            \
    Input<bool> stochastic{"stochastic"};        \
    Input<uint32_t> key0{"key0"};                \
    Input<uint32_t> key1{"key1"};                \
    Output<Buffer<int8_t, 3>> values{"values"};

}  // namespace lowbit::quantize_generators

// The precision of one layer's convolution arithmetic (method.md section 1): float32, or
// low-bit with one format and rounding per operand kind (activations A, weights W, errors E).
#pragma once

#include <string>

#include "format.h"

namespace lowbit::nn {

struct LayerPrecision {
    bool low_bit = false;
    Format activations, weights, errors;
    Rounding activation_rounding = Rounding::nearest, weight_rounding = Rounding::nearest;
    Rounding error_rounding = Rounding::stochastic;
};

// The unsigned variant of `f` with the same number of bits: the sign bit becomes a mantissa
// bit (m3e0 -> um4e0, m1e2 -> um2e2), doubling the levels for non-negative data. `f` itself
// when that variant would not fit the int8 kernels (m7e0 -> um8e0 has qmax 255).
inline Format unsigned_same_bits(Format f) {
    if (!f.has_sign) return f;
    Format u = f;
    u.has_sign = false;
    u.mantissa_bits++;
    return u.fits_int8() ? u : f;
}

// How a whole network is quantized: every convolution by default, the first and last layers
// optionally kept float32, the classifier's linear layer float32 unless asked (method.md).
//
// Every layer but the first takes its input from a ReLU (possibly through pooling), so its
// activations are non-negative: with unsigned_activations they use the unsigned variant of
// the activation format of the same width. The first layer sees the normalized image, which
// is signed, and keeps the signed format.
struct PrecisionPolicy {
    LayerPrecision body;
    bool float_first_last = false;
    bool quantize_linear = false;
    bool unsigned_activations = false;

    static PrecisionPolicy float32() { return PrecisionPolicy{}; }
    LayerPrecision first_conv() const { return float_first_last ? LayerPrecision{} : body; }
    // A layer whose input is known non-negative.
    LayerPrecision conv() const { return after_relu(body); }
    LayerPrecision linear(bool last) const {
        return (!quantize_linear || (last && float_first_last)) ? LayerPrecision{} : after_relu(body);
    }

private:
    LayerPrecision after_relu(LayerPrecision p) const {
        if (unsigned_activations) p.activations = unsigned_same_bits(p.activations);
        return p;
    }
};

// "float32", or "A=m3e0/g3/sample W=... E=..." with the roundings.
std::string describe(const LayerPrecision &p);
// The body's precision, then what differs elsewhere: "..., after a ReLU A=um4e0/g3/sample,
// first conv and classifier float32".
std::string describe(const PrecisionPolicy &p);

}  // namespace lowbit::nn

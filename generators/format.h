// The LB(M, E, D, G, axis) number format family of docs/FORMATS.md (method.md section 2)
// and its rounding (section 3): the one place that knows the format arithmetic.
//
// Plain C++17 with no Halide dependency, so the generators, the runtime and the tests all
// include it. The rounding and the random hash are templates over an "Ops" policy: the
// runtime instantiates them on double / uint32_t (ScalarOps below), the generators on
// Halide::Expr, so the kernels and the host compute the very same expressions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {

// Which elements share a group exponent (method.md section 2, "Group").
enum class GroupAxis : uint8_t {
    none,     // one group for the whole tensor
    sample,   // one group per index of axis 0 (the batch index n)
    channel,  // one group per channel: axis 1 of activations and errors, axis 0 of weights
    block,    // runs of `block` consecutive elements along the channel axis
};

enum class Rounding : uint8_t { nearest, stochastic };

// The integer kernels hold element values as int8, so they take formats with qmax <= 127
// (method.md section 4). Such a format has at most 3 exponent steps (E <= 2).
inline constexpr int64_t kInt8Qmax = 127;
inline constexpr int kMaxExponentSteps = 3;
// Group exponents are stored as uint8, so G <= 8.
inline constexpr int kMaxGroupBits = 8;

// D defaults to 2 when E = 1 and to 1 when E >= 2; with E = 0 it is unused (stored as 0).
constexpr int default_shift(int exponent_bits) { return exponent_bits == 0 ? 0 : exponent_bits == 1 ? 2 : 1; }

struct Format {
    // false for the unsigned variant (written with a leading `u`, e.g. `um4e0`): no sign bit,
    // q = m * 2^(D x) >= 0, for tensors known to be non-negative (activations after a ReLU).
    // Negative inputs round to 0, the nearest representable value. An extension of method.md's
    // family (see docs/FORMATS.md): the bit the sign would take becomes a mantissa bit.
    bool has_sign = true;
    int mantissa_bits = 3;  // M: unsigned mantissa m in [0, 2^M - 1]
    int exponent_bits = 0;  // E: exponent field x in [0, 2^E - 1]
    int shift = 0;          // D: bits shifted per exponent step
    int group_bits = 0;     // G: group exponent e_g in [0, 2^G - 1]
    GroupAxis axis = GroupAxis::none;
    int block = 0;  // K, for GroupAxis::block only

    // b = 1 + E + M bits per element (E + M without a sign).
    constexpr int bits() const { return int(has_sign) + exponent_bits + mantissa_bits; }
    constexpr int64_t mantissa_max() const { return (int64_t{1} << mantissa_bits) - 1; }
    // 2^E - 1: the largest exponent field, i.e. the number of shifts above the finest step.
    constexpr int exponent_steps() const { return (1 << exponent_bits) - 1; }
    // qmax = (2^M - 1) * 2^(D * (2^E - 1)).
    constexpr int64_t qmax() const { return mantissa_max() << (shift * exponent_steps()); }
    constexpr int max_group_exponent() const { return (1 << group_bits) - 1; }
    constexpr bool fits_int8() const { return qmax() <= kInt8Qmax; }

    friend constexpr bool operator==(const Format &a, const Format &b) {
        return a.has_sign == b.has_sign && a.mantissa_bits == b.mantissa_bits && a.exponent_bits == b.exponent_bits &&
               a.shift == b.shift && a.group_bits == b.group_bits && a.axis == b.axis && a.block == b.block;
    }
    friend constexpr bool operator!=(const Format &a, const Format &b) { return !(a == b); }
};

// Throws std::invalid_argument naming the offending field when the format is not a
// member of the family this project supports (M >= 1, bits <= 16, exact qmax, G <= 8).
void validate(const Format &format);

// Parses the grammar of docs/FORMATS.md: an element part, `m<M>e<E>[d<D>]` or an alias
// (`fx8`, `sfx4`, ...), then an optional group part: `/none`, `/g<G>/sample`,
// `/g<G>/channel`, `/g<G>/block<K>`. Throws std::invalid_argument on bad input.
Format parse_format(const std::string &text);
// The canonical spelling: `m2e1` (D printed only when not the default), then the group part
// unless it is /none, e.g. `m3e0/g3/sample`.
std::string to_string(const Format &format);
std::string to_string(GroupAxis axis);
std::string to_string(Rounding rounding);
Rounding parse_rounding(const std::string &text);
// The readable aliases and what they stand for, for help texts and docs.
struct FormatAlias {
    const char *name;
    const char *element;
};
const std::vector<FormatAlias> &format_aliases();

// The sorted set of representable element values q (negative ones included unless the
// format is unsigned), each q = sign * m * 2^(D x); duplicates (e.g. 2 * 2^0 = 1 * 2^1)
// appear once.
std::vector<int64_t> representable_values(const Format &format);

// ---------------------------------------------------------------------------------------
// Rounding to the representable set, written once for host scalars and Halide vectors.
//
// For a magnitude a = |u| <= qmax, let x be the smallest exponent field whose range
// [0, (2^M - 1) 2^(D x)] holds a; its grid step is 2^(D x). The neighbours of a are then
//   hi = ceil(a / step) * step
//   lo = max(floor(a / step) * step, (2^M - 1) 2^(D (x - 1)))   (the top of the finer grid)
// and nothing representable lies strictly between them: every coarser grid is a subset of
// the multiples of `step`, every finer grid ends at or below that top.
//
// Ops supplies the operations that differ between scalars and Halide Exprs:
//   Real, Int, U32 types; select(c, a, b); floor; ceil; max; to_real(Int); pow2(Int) -> Real
//   (exact 2^n); u32(literal); step_bound(exponent_steps), how many grid tops to test: the
//   steps themselves on the host, kMaxExponentSteps (the int8 formats' most) in a kernel.
template <class Ops>
struct FormatRuntime {
    // The format's numbers as the kernel sees them: runtime values (Params) in a
    // generator, plain ints on the host.
    typename Ops::Int mantissa_max;    // 2^M - 1
    typename Ops::Int exponent_steps;  // 2^E - 1, at most kMaxExponentSteps
    typename Ops::Int shift;           // D
};

template <class Ops>
struct Neighbours {
    typename Ops::Real lo, hi;
};

template <class Ops>
Neighbours<Ops> magnitude_neighbours(const typename Ops::Real &a, const FormatRuntime<Ops> &f) {
    using Real = typename Ops::Real;
    using Int = typename Ops::Int;
    // Walk up the grids: past each top that a exceeds, the step (and its inverse) grows by
    // 2^D. Every candidate is a per-format constant, so a kernel only selects among them.
    Real step = Real(1.0), inverse_step = Real(1.0);
    Real top_below = Real(0.0);  // top of the grid below the one that holds a; 0 for the finest
    for (int k = 0; k < Ops::step_bound(f.exponent_steps); k++) {
        const Real top = Ops::to_real(f.mantissa_max) * Ops::pow2(f.shift * k);
        const auto above = (Int(k) < f.exponent_steps) && (a > top);
        step = Ops::select(above, Ops::pow2(f.shift * (k + 1)), step);
        inverse_step = Ops::select(above, Ops::pow2(-(f.shift * (k + 1))), inverse_step);
        top_below = Ops::select(above, top, top_below);
    }
    const Real in_steps = a * inverse_step;  // a / step, exactly: a power of two
    const Real hi = Ops::ceil(in_steps) * step;
    const Real lo = Ops::max(Ops::floor(in_steps) * step, top_below);
    return {lo, hi};
}

// Nearest: the closer neighbour; ties go away from zero (to hi).
template <class Ops>
typename Ops::Real round_magnitude_nearest(const typename Ops::Real &a, const FormatRuntime<Ops> &f) {
    const Neighbours<Ops> n = magnitude_neighbours(a, f);
    return Ops::select(a - n.lo < n.hi - a, n.lo, n.hi);
}

// Stochastic: hi with probability (a - lo) / (hi - lo), decided by a uniform 32-bit random
// number r as r (hi - lo) < (a - lo) 2^32. Both sides are exact in double (r < 2^32 times a
// small integer; a - lo is exact because lo is an integer at most a), so this is exactly
// r < p 2^32 with no division: unbiased up to 2^-32 in p.
template <class Ops>
typename Ops::Real round_magnitude_stochastic(const typename Ops::Real &a, const FormatRuntime<Ops> &f,
                                              const typename Ops::U32 &random) {
    using Real = typename Ops::Real;
    const Neighbours<Ops> n = magnitude_neighbours(a, f);
    // hi == lo means a is representable: then it is returned as it is.
    const auto up = Ops::to_real_u32(random) * (n.hi - n.lo) < (a - n.lo) * Real(4294967296.0);
    return Ops::select(up, n.hi, n.lo);
}

// The default error format, m1e2, whose grid is {0, 1, 2, 4, 8}: the same rule and the same
// outcome as round_magnitude_stochastic for every a in [0, 8] and every r, without walking the
// grids. For a >= 1 the neighbours are t = 2^floor(log2 a), the bits of a with its fraction
// cleared, and 2t (at a = t the draw cannot go up: a - lo = 0); below 1 they are 0 and 1.
// A third of the instructions of the general loop went to the walk (session 9).
template <class Ops>
typename Ops::Real round_m1e2_magnitude_stochastic(const typename Ops::Real &a, const typename Ops::U32 &random) {
    using Real = typename Ops::Real;
    const auto below_one = a < Real(1.0);
    const Real t = Ops::clear_fraction(a);
    const Real lo = Ops::select(below_one, Real(0.0), t);
    const Real hi = Ops::select(below_one, Real(1.0), t + t);
    const auto up = Ops::to_real_u32(random) * (hi - lo) < (a - lo) * Real(4294967296.0);
    return Ops::select(up, hi, lo);
}

// ---------------------------------------------------------------------------------------
// A kernel that writes a tensor may also report the tensor's row maxima, from which its
// quantization takes the scales without a pass of its own (batch norm backward's grad_input,
// runtime RowMaxima): the max-abs bits of each (c, n) row, in this many lanes (lane l over the
// row's elements l, l + lanes, ...), the host taking the maximum of the lanes.
inline constexpr int kRowMaxLanes = 8;

// Backward-data of a stride-2 layer merges the 4 phases' sub-kernels into one 2x2 window
// (runtime/conv.cpp), in which a phase of a 3x3 layer has 1, 2, 2 or 4 taps. The runtime
// tells the backward-data kernels which slots are taps, per axis: bit 2 phase + slot (slots
// in the kernel's flipped order), all four bits where every slot is one.
inline constexpr int kAllWindowTaps = 0b1111;
// A 3x3 layer with padding 1: phase 0 has the one tap in slot 0, phase 1 both slots.
inline constexpr int kOddWindowTaps = 0b1101;

// Group exponents (method.md section 2): e_g = min(2^G - 1, floor(log2(S / max|X_g|))), and
// 2^G - 1 for an all-zero group. Exact: floor(log2) of the quotient is the binary exponent of
// a double, and S / g in double never rounds up to a power of two for float S and g (their
// 24-bit mantissas keep the quotient at least 2^-24 below one).
template <class Ops>
typename Ops::Int group_exponent(const typename Ops::Real &tensor_scale, const typename Ops::Real &group_max_abs,
                                 const typename Ops::Int &max_group_exponent) {
    const typename Ops::Int e = Ops::binary_exponent(tensor_scale / group_max_abs);
    return Ops::select(group_max_abs == typename Ops::Real(0.0), max_group_exponent, Ops::min(e, max_group_exponent));
}

// The scale of one group: S * 2^-e_g (exact, a power-of-two change of S), so that an element
// stands for q * group_scale / qmax.
template <class Ops>
typename Ops::Real group_scale(const typename Ops::Real &tensor_scale, const typename Ops::Int &group_exponent) {
    return tensor_scale * Ops::pow2(-group_exponent);
}

// u = v * qmax * 2^e_g / S, computed as (v * qmax) / (S * 2^-e_g): v * qmax is exact in
// double for qmax < 2^29, S * 2^-e_g is exact, so u is the correctly rounded quotient and
// exact ties stay ties. An unsigned format's set has nothing below 0, so a negative u is
// clamped to 0: its nearest value and both its stochastic neighbours.
template <class Ops>
typename Ops::Real value_in_steps(const typename Ops::Real &v, const typename Ops::Real &qmax,
                                  const typename Ops::Real &group_scale, const typename Ops::Bool &has_sign) {
    const typename Ops::Real u = v * qmax / group_scale;
    return Ops::select(has_sign, u, Ops::max(u, typename Ops::Real(0.0)));
}

// Dequantized value: q * group_scale / qmax, rounded once from double to float.
template <class Ops>
typename Ops::Real dequantized_value(const typename Ops::Real &q, const typename Ops::Real &qmax,
                                     const typename Ops::Real &group_scale) {
    return q * group_scale / qmax;
}

// ---------------------------------------------------------------------------------------
// The random source of stochastic rounding: a counter-based hash of (seed, step, tensor id,
// element index), so a run is reproducible whatever the threads, schedule or target.
// The host folds (seed, step, tensor id) into two 32-bit keys once per tensor; each element
// then costs two rounds of a bijective 32-bit mixer (Wellons' "lowbias32").
struct RandomKey {
    uint32_t k0, k1;
};

constexpr uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

constexpr RandomKey random_key(uint64_t seed, uint64_t step, uint32_t tensor_id) {
    const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ tensor_id);
    return {uint32_t(h), uint32_t(h >> 32)};
}

template <class Ops>
typename Ops::U32 mix32(typename Ops::U32 x) {
    x = x ^ (x >> 16);
    x = x * Ops::u32(0x7feb352du);
    x = x ^ (x >> 15);
    x = x * Ops::u32(0x846ca68bu);
    x = x ^ (x >> 16);
    return x;
}

// Element index: the element's position in the tensor's row-major order (mod 2^32).
template <class Ops>
typename Ops::U32 element_random(const typename Ops::U32 &index, const typename Ops::U32 &k0,
                                 const typename Ops::U32 &k1) {
    return mix32<Ops>(mix32<Ops>(index + k0) ^ k1);
}

// ---------------------------------------------------------------------------------------
// The scalar instantiation, used by the runtime's host paths.
struct ScalarOps {
    using Real = double;
    using Int = int;
    using U32 = uint32_t;
    using Bool = bool;
    template <class T>
    static T select(bool c, T a, T b) {
        return c ? a : b;
    }
    static double floor(double v) { return std::floor(v); }
    static double ceil(double v) { return std::ceil(v); }
    static double max(double a, double b) { return std::max(a, b); }
    static int min(int a, int b) { return std::min(a, b); }
    static double to_real(int v) { return double(v); }
    static double to_real_u32(uint32_t v) { return double(v); }
    static double pow2(int n) { return std::ldexp(1.0, n); }
    // floor(log2(v)) for finite v > 0; a large value for +inf so that min() caps it.
    static int binary_exponent(double v) { return std::isinf(v) ? (1 << 20) : std::ilogb(v); }
    // v with its fraction bits cleared: 2^floor(log2(v)) for finite v > 0 (normal).
    static double clear_fraction(double v) {
        uint64_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        bits &= 0xfff0000000000000ull;
        std::memcpy(&v, &bits, sizeof bits);
        return v;
    }
    static uint32_t u32(uint32_t v) { return v; }
    static int step_bound(int exponent_steps) { return exponent_steps; }
};

inline FormatRuntime<ScalarOps> scalar_runtime(const Format &f) {
    return {int(f.mantissa_max()), f.exponent_steps(), f.shift};
}

// Host versions of the per-group and per-element arithmetic, the same expressions the
// kernels compute.
inline int group_exponent(float tensor_scale, float group_max_abs, int max_group_exponent) {
    return group_exponent<ScalarOps>(tensor_scale, group_max_abs, max_group_exponent);
}

inline double group_scale(float tensor_scale, int group_exponent) {
    return group_scale<ScalarOps>(tensor_scale, group_exponent);
}

inline int64_t quantize_element(float v, const Format &f, double group_scale, Rounding rounding, uint32_t random) {
    if (group_scale == 0.0) return 0;
    const double u = value_in_steps<ScalarOps>(v, double(f.qmax()), group_scale, f.has_sign);
    const double a = std::fabs(u);
    const double m = rounding == Rounding::nearest
                         ? round_magnitude_nearest<ScalarOps>(a, scalar_runtime(f))
                         : round_magnitude_stochastic<ScalarOps>(a, scalar_runtime(f), random);
    return int64_t(u < 0 ? -m : m);
}

inline float dequantize_element(int64_t q, const Format &f, double group_scale) {
    return float(dequantized_value<ScalarOps>(q, double(f.qmax()), group_scale));
}

}  // namespace lowbit

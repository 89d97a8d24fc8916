// The Ops policy of format.h for Halide: the format arithmetic instantiated on Exprs, so a
// generator computes exactly the expressions the host reference computes.
#pragma once

#include "Halide.h"
#include "format.h"

namespace lowbit {

struct HalideOps {
    using Real = Halide::Expr;  // Float(64)
    using Int = Halide::Expr;   // Int(32)
    using U32 = Halide::Expr;   // UInt(32)
    using Bool = Halide::Expr;  // Bool()
    static Halide::Expr select(const Halide::Expr &c, const Halide::Expr &a, const Halide::Expr &b) {
        return Halide::select(c, a, b);
    }
    static Halide::Expr floor(const Halide::Expr &v) { return Halide::floor(v); }
    static Halide::Expr ceil(const Halide::Expr &v) { return Halide::ceil(v); }
    static Halide::Expr max(const Halide::Expr &a, const Halide::Expr &b) { return Halide::max(a, b); }
    static Halide::Expr min(const Halide::Expr &a, const Halide::Expr &b) { return Halide::min(a, b); }
    static Halide::Expr to_real(const Halide::Expr &v) { return Halide::cast<double>(v); }
    static Halide::Expr to_real_u32(const Halide::Expr &v) { return Halide::cast<double>(v); }
    // 2^n for n in [-1022, 1023], built from the bits of a double: exact and cheap.
    static Halide::Expr pow2(const Halide::Expr &n) {
        return Halide::reinterpret<double>(Halide::cast<uint64_t>(n + 1023) << 52);
    }
    // floor(log2(v)) for v >= 1 (the only use: S / max_g), read off the exponent field.
    // +inf has field 2047, i.e. 1024, which min() then caps.
    static Halide::Expr binary_exponent(const Halide::Expr &v) {
        Halide::Expr bits = Halide::reinterpret<uint64_t>(v);
        return Halide::cast<int>((bits >> 52) & 0x7ff) - 1023;
    }
    // v with its fraction bits cleared: 2^floor(log2(v)) for finite v > 0 (normal).
    static Halide::Expr clear_fraction(const Halide::Expr &v) {
        return Halide::reinterpret<double>(
            Halide::reinterpret<uint64_t>(v) &
            Halide::Internal::make_const(Halide::UInt(64), uint64_t(0xfff0000000000000ull)));
    }
    static Halide::Expr u32(uint32_t v) { return Halide::Expr(v); }
    // The format is a runtime value: test every grid top an int8 format can have.
    static int step_bound(const Halide::Expr &) { return kMaxExponentSteps; }
};

}  // namespace lowbit

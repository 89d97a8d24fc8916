// A plain reference of the LB formats, written straight from method.md sections 2 and 3 and
// sharing no code with generators/format.h: enumeration instead of arithmetic, exact
// comparisons instead of grid formulas. Slow and obviously right; tests only.
#pragma once

#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

namespace lowbit::reference {

struct ElementFormat {
    int M, E, D;
    bool has_sign = true;  // false: the unsigned variant, q = m * 2^(D x) >= 0 only
    int64_t qmax() const {
        int64_t top = 0;
        for (int x = 0; x < (1 << E); x++) top = std::max(top, ((int64_t{1} << M) - 1) << (D * x));
        return top;
    }
};

// Section 2: q = sign * m * 2^(D x), x in [0, 2^E - 1], m in [0, 2^M - 1]; sorted, unique.
// The unsigned variant has no negative values, so a negative u rounds to 0 (the nearest, and
// both neighbours) with no special case below.
inline std::vector<int64_t> representable(const ElementFormat &f) {
    std::set<int64_t> s;
    for (int x = 0; x < (1 << f.E); x++) {
        for (int64_t m = 0; m < (int64_t{1} << f.M); m++) {
            s.insert(m << (f.D * x));
            if (f.has_sign) s.insert(-(m << (f.D * x)));
        }
    }
    return {s.begin(), s.end()};
}

// Section 2: e_g = min(2^G - 1, floor(log2(S / max|X_g|))), 2^G - 1 for an all-zero group:
// the largest e with max * 2^e <= S, found by counting (exact: powers of two scale exactly).
inline int group_exponent(float S, float group_max, int G) {
    const int cap = (1 << G) - 1;
    if (group_max == 0.0f) return cap;
    int e = 0;
    while (e < cap && std::ldexp((long double)group_max, e + 1) <= (long double)S) e++;
    return e;
}

// Section 3, nearest: the representable q closest to u = v qmax 2^e / S, ties away from zero.
// Distances are compared as |v qmax 2^e - q S|, both products exact in long double.
inline int64_t round_nearest(float v, float S, int e, const ElementFormat &f, const std::vector<int64_t> &set) {
    if (S == 0.0f) return 0;
    const long double target = std::ldexp((long double)v * (long double)f.qmax(), e);
    int64_t best = 0;
    long double best_d = INFINITY;
    for (int64_t q : set) {
        const long double d = std::fabs(target - (long double)q * (long double)S);
        if (d < best_d || (d == best_d && std::llabs(q) > std::llabs(best))) {
            best = q;
            best_d = d;
        }
    }
    return best;
}

// Section 3, stochastic: the two representable neighbours lo <= u <= hi.
inline void neighbours(long double u, const std::vector<int64_t> &set, int64_t &lo, int64_t &hi) {
    lo = set.front();
    hi = set.back();
    for (int64_t q : set) {
        if (q <= u) lo = q;
        if (q >= u) {
            hi = q;
            break;
        }
    }
}

}  // namespace lowbit::reference

// The format arithmetic of generators/format.h against the plain reference of method.md
// (tests/reference/format_reference.h): grammar, representable sets, host rounding.
#include <gtest/gtest.h>

#include <random>

#include "format.h"
#include "reference/format_reference.h"

namespace lowbit {
namespace {

// Every element format with at most 8 bits that the family supports.
std::vector<Format> formats_up_to_8_bits() {
    std::vector<Format> all;
    for (bool has_sign : {true, false}) {
        for (int bits = 2; bits <= 8; bits++) {
            for (int e = 0; e + int(has_sign) + 1 <= bits; e++) {
                for (int d = 1; d <= (e == 0 ? 1 : 3); d++) {
                    Format f;
                    f.has_sign = has_sign;
                    f.mantissa_bits = bits - int(has_sign) - e;
                    f.exponent_bits = e;
                    f.shift = e == 0 ? 0 : d;
                    try {
                        validate(f);
                        all.push_back(f);
                    } catch (const std::invalid_argument &) {
                    }
                }
            }
        }
    }
    return all;
}

reference::ElementFormat ref(const Format &f) { return {f.mantissa_bits, f.exponent_bits, f.shift, f.has_sign}; }

TEST(FormatGrammar, ParsesElementAndGroupParts) {
    const Format a = parse_format("m3e0");
    EXPECT_EQ(a.mantissa_bits, 3);
    EXPECT_EQ(a.exponent_bits, 0);
    EXPECT_EQ(a.bits(), 4);
    EXPECT_EQ(a.qmax(), 7);
    EXPECT_EQ(a.axis, GroupAxis::none);

    const Format b = parse_format("m2e1");  // shiftable fixed point, default D = 2
    EXPECT_EQ(b.shift, 2);
    EXPECT_EQ(b.qmax(), 12);
    EXPECT_EQ(parse_format("m3e1d3").shift, 3);
    EXPECT_EQ(parse_format("m3e1d3").qmax(), 56);
    EXPECT_EQ(parse_format("m1e2").shift, 1);  // D = 1 when E >= 2
    EXPECT_EQ(parse_format("m1e2").qmax(), 8);
    EXPECT_EQ(parse_format("m4e2").qmax(), 120);  // method.md: fits int8
    EXPECT_EQ(parse_format("m5e1").qmax(), 124);

    const Format g = parse_format("m1e2/g2/sample");
    EXPECT_EQ(g.axis, GroupAxis::sample);
    EXPECT_EQ(g.group_bits, 2);
    EXPECT_EQ(g.max_group_exponent(), 3);
    EXPECT_EQ(parse_format("fx4/g3/channel").axis, GroupAxis::channel);
    const Format k = parse_format("m3e0/g8/block32");
    EXPECT_EQ(k.axis, GroupAxis::block);
    EXPECT_EQ(k.block, 32);
    EXPECT_EQ(k.group_bits, 8);
    EXPECT_EQ(parse_format("m3e0/none"), parse_format("m3e0"));

    // The unsigned variant: the sign bit becomes a mantissa bit.
    const Format u = parse_format("um4e0/g3/sample");
    EXPECT_FALSE(u.has_sign);
    EXPECT_EQ(u.bits(), 4);
    EXPECT_EQ(u.qmax(), 15);
    EXPECT_EQ(u.axis, GroupAxis::sample);
    EXPECT_EQ(parse_format("um2e2").bits(), 4);
    EXPECT_EQ(parse_format("um2e2").qmax(), 24);
    EXPECT_NE(parse_format("um3e0"), parse_format("m3e0"));
}

TEST(FormatGrammar, AliasesAndRoundTrip) {
    EXPECT_EQ(parse_format("fx8"), parse_format("m7e0"));
    EXPECT_EQ(parse_format("fx4"), parse_format("m3e0"));
    EXPECT_EQ(parse_format("fx2"), parse_format("m1e0"));
    EXPECT_EQ(parse_format("sfx4"), parse_format("m2e1d2"));
    EXPECT_EQ(parse_format("ufx4"), parse_format("um4e0"));
    EXPECT_EQ(parse_format("ufx8").qmax(), 255);
    for (const char *text : {"m3e0", "m2e1", "m3e1d3", "m1e2", "m1e2d2", "m3e0/g3/sample", "m2e1/g2/channel",
                             "m7e0/g8/block32", "um4e0/g3/sample", "um2e2d2"}) {
        EXPECT_EQ(to_string(parse_format(text)), text);
    }
    for (const Format &f : formats_up_to_8_bits()) EXPECT_EQ(parse_format(to_string(f)), f);
}

TEST(FormatGrammar, RejectsBadInputWithTheText) {
    for (const char *text : {"",
                             "m",
                             "m3",
                             "m3e",
                             "x3e0",
                             "m3e0/",
                             "m3e0/g3",
                             "m3e0/g3/",
                             "m3e0/g3/width",
                             "m3e0/g9/sample",
                             "m3e0/gx/sample",
                             "m3e0/g3/block",
                             "m3e0/g3/block0",
                             "m0e1",
                             "m3e0d2",
                             "m1e6",
                             "m3e0x",
                             "m3e1d0",
                             "fx9",
                             "m20e0",
                             "u",
                             "um",
                             "uum3e0",
                             "ux3e0",
                             "um0e1",
                             "um17e0",
                             "ufx9"}) {
        try {
            parse_format(text);
            ADD_FAILURE() << "accepted '" << text << "'";
        } catch (const std::invalid_argument &e) {
            EXPECT_NE(std::string(e.what()).find(std::string("'") + text + "'"), std::string::npos) << e.what();
        }
    }
}

TEST(RepresentableValues, MatchTheEnumerationOfMethodMd) {
    for (const Format &f : formats_up_to_8_bits()) {
        SCOPED_TRACE(to_string(f));
        const std::vector<int64_t> expected = reference::representable(ref(f));
        EXPECT_EQ(representable_values(f), expected);
        EXPECT_EQ(f.qmax(), ref(f).qmax());
        EXPECT_EQ(f.qmax(), expected.back());
    }
    // Spot checks by hand: shiftable 4-bit fixed point and the later paper's 4-bit point.
    EXPECT_EQ(representable_values(parse_format("m2e1")),
              (std::vector<int64_t>{-12, -8, -4, -3, -2, -1, 0, 1, 2, 3, 4, 8, 12}));
    EXPECT_EQ(representable_values(parse_format("m1e2")), (std::vector<int64_t>{-8, -4, -2, -1, 0, 1, 2, 4, 8}));
    EXPECT_EQ(representable_values(parse_format("um2e1")), (std::vector<int64_t>{0, 1, 2, 3, 4, 8, 12}));
}

// The host rounding (the same templates the kernels instantiate) picks the closest value
// with ties away from zero, on a dense sweep including every midpoint, for every format.
TEST(HostRounding, NearestPicksTheClosestValueForEveryFormat) {
    for (const Format &f : formats_up_to_8_bits()) {
        SCOPED_TRACE(to_string(f));
        const std::vector<int64_t> set = reference::representable(ref(f));
        const double qmax = double(f.qmax());
        std::vector<double> units;  // values of u to try
        for (size_t k = 0; k + 1 < set.size(); k++) {
            const double lo = double(set[k]), hi = double(set[k + 1]);
            for (double t : {0.0, 0.25, 0.4999, 0.5, 0.5001, 0.75}) units.push_back(lo + t * (hi - lo));
        }
        units.push_back(qmax);
        for (double u : {-qmax, -0.5, -0.3}) units.push_back(u);  // unsigned formats: all to 0
        for (double u : units) {
            const float v = float(u / qmax);  // S = 1, e = 0
            const int64_t expected = reference::round_nearest(v, 1.0f, 0, ref(f), set);
            EXPECT_EQ(quantize_element(v, f, 1.0, Rounding::nearest, 0), expected) << "u = " << u;
        }
    }
}

TEST(HostRounding, StochasticGivesOnlyTheNeighbours) {
    std::mt19937 rng(7);
    for (const char *name : {"m3e0", "m2e1", "m1e2", "m4e2", "m3e1d3", "um4e0", "um2e1"}) {
        const Format f = parse_format(name);
        const std::vector<int64_t> set = reference::representable(ref(f));
        std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
        for (int k = 0; k < 20000; k++) {
            const float v = dist(rng);
            const long double u = (long double)v * f.qmax();
            int64_t lo, hi;
            reference::neighbours(u, set, lo, hi);
            const int q = quantize_element(v, f, 1.0, Rounding::stochastic, uint32_t(rng()));
            EXPECT_TRUE(q == lo || q == hi) << name << " v=" << v << " q=" << q;
        }
    }
}

// m1e2's short way (the default error format's loop) against the neighbours of the reference
// and method.md's rule in long double, on magnitudes at and beside every grid value, at the
// draw's thresholds, and at random, with draws at the extremes, at each threshold and at random.
TEST(HostRounding, M1e2ShortWayMatchesTheRule) {
    const std::vector<int64_t> set = reference::representable(ref(parse_format("m1e2")));
    std::mt19937_64 rng(9);
    std::vector<double> magnitudes = {0.0, 1e-300, 1e-9, 0.5, 3.0, 6.0, 7.999999};
    for (double grid : {1.0, 2.0, 4.0, 8.0}) {
        magnitudes.insert(magnitudes.end(), {grid, std::nextafter(grid, 0.0), std::nextafter(grid, 9.0)});
    }
    std::uniform_real_distribution<double> uniform(0.0, 8.0), unit(0.0, 1.0);
    for (int k = 0; k < 20000; k++) magnitudes.insert(magnitudes.end(), {uniform(rng), unit(rng)});
    for (double a : magnitudes) {
        if (a > 8.0) continue;
        int64_t lo, hi;
        reference::neighbours((long double)a, set, lo, hi);
        const long double threshold = ((long double)a - lo) * 4294967296.0L;  // exact
        std::vector<uint32_t> draws = {0u, 1u, 0xffffffffu, uint32_t(rng())};
        if (hi > lo) {
            const long double r = std::floor(threshold / (hi - lo));
            for (long double d : {-1.0L, 0.0L, 1.0L}) {
                if (r + d >= 0 && r + d <= 4294967295.0L) draws.push_back(uint32_t(r + d));
            }
        }
        for (uint32_t r : draws) {
            const bool up = (long double)r * (hi - lo) < threshold;
            ASSERT_EQ(round_m1e2_magnitude_stochastic<ScalarOps>(a, r), double(up ? hi : lo))
                << "a = " << a << " r = " << r;
        }
    }
}

TEST(HostGroupExponent, MatchesCounting) {
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> mant(1.0f, 2.0f);
    std::uniform_int_distribution<int> expo(-60, 60);
    for (int k = 0; k < 20000; k++) {
        const float S = std::ldexp(mant(rng), expo(rng));
        const float g = std::min(S, std::ldexp(mant(rng), expo(rng)));
        for (int G : {0, 1, 3, 8}) {
            EXPECT_EQ(group_exponent(S, g, (1 << G) - 1), reference::group_exponent(S, g, G)) << S << " " << g;
        }
    }
    EXPECT_EQ(group_exponent(1.0f, 0.0f, 7), 7);  // all-zero group
    EXPECT_EQ(group_exponent(1.0f, 1.0f, 7), 0);
    EXPECT_EQ(group_exponent(1.0f, 0.5f, 7), 1);
    EXPECT_EQ(group_exponent(1.0f, std::nextafter(0.5f, 1.0f), 7), 0);
    EXPECT_EQ(group_exponent(1e30f, 1e-30f, 255), reference::group_exponent(1e30f, 1e-30f, 8));
}

TEST(RandomKey, DependsOnEveryInput) {
    const RandomKey a = random_key(1, 2, 3);
    for (RandomKey b : {random_key(2, 2, 3), random_key(1, 3, 3), random_key(1, 2, 4)}) {
        EXPECT_TRUE(a.k0 != b.k0 || a.k1 != b.k1);
    }
    // mix32 is a bijection on 32 bits: distinct inputs give distinct outputs (sampled).
    std::set<uint32_t> seen;
    for (uint32_t i = 0; i < 100000; i++) seen.insert(mix32<ScalarOps>(i));
    EXPECT_EQ(seen.size(), 100000u);
}

}  // namespace
}  // namespace lowbit

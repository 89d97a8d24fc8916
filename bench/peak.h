// The machine's measured arithmetic peaks on `threads` threads: the widest integer dot
// product the CPU has (AVX-512 VNNI vpdpbusd, else AVX2 vpmaddwd), the uint8 x int8 one of
// unsigned inputs (vpdpbusd, else AVX2 vpmaddubsw into int16 sums) and float32 FMA (zmm where
// the CPU has AVX-512, else ymm), counted in multiply-adds per second. Register-only loops
// with independent accumulators, one function per instruction set (the intrinsics need their
// target attribute on the function that calls them).
#pragma once

#include <immintrin.h>

#include <chrono>
#include <thread>
#include <vector>

namespace lowbit {

struct Peaks {
    const char *integer_name, *unsigned_name, *float_name;
    double integer_gmacs, unsigned_gmacs, float_gmacs;
};

namespace detail {

constexpr long kPeakIterations = 20'000'000;

__attribute__((target("avx2,fma"))) inline float fma_loop(float seed) {
    __m256 acc[10];
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_ps(seed + i);
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
    for (long k = 0; k < kPeakIterations; k++) {
        for (int i = 0; i < 10; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    float s = 0;
    for (int i = 0; i < 10; i++) s += _mm256_cvtss_f32(acc[i]);
    return s;
}

// The same on zmm: on CPUs with full-width AVX-512 units (Zen 5, Intel server parts) twice
// the ymm rate, so a peak measured on ymm alone would flatter zmm kernels by 2x; on Zen 4,
// which splits a zmm operation in two, the same rate as ymm.
__attribute__((target("avx512f"))) inline float fma512_loop(float seed) {
    __m512 acc[10];
    for (int i = 0; i < 10; i++) acc[i] = _mm512_set1_ps(seed + i);
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
    for (long k = 0; k < kPeakIterations; k++) {
        for (int i = 0; i < 10; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    float s = 0;
    for (int i = 0; i < 10; i++) s += _mm512_cvtss_f32(acc[i]);
    return s;
}

// The two-step integer peaks (a product instruction, then an add into the accumulator, as
// the kernels run them). Each accumulator is also the product's first operand: with constant
// operands the products are loop-invariant and the compiler hoists them (session 6 found the
// AVX2 loops measuring the adds alone). 10 chains of product + add hide the latency.
__attribute__((target("avx2"))) inline int madd_loop(int seed) {
    __m256i acc[10];
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_epi32(seed + i);
    const __m256i b = _mm256_set1_epi16(5);
    for (long k = 0; k < kPeakIterations; k++) {
        for (int i = 0; i < 10; i++) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(acc[i], b));
    }
    int s = 0;
    for (int i = 0; i < 10; i++) s += _mm256_cvtsi256_si32(acc[i]);
    return s;
}

__attribute__((target("avx2"))) inline int maddubs_loop(int seed) {
    __m256i acc[10];
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_epi16(int16_t(seed + i));
    const __m256i b = _mm256_set1_epi8(5);
    for (long k = 0; k < kPeakIterations; k++) {
        for (int i = 0; i < 10; i++) acc[i] = _mm256_adds_epi16(acc[i], _mm256_maddubs_epi16(acc[i], b));
    }
    int s = 0;
    for (int i = 0; i < 10; i++) s += _mm256_cvtsi256_si32(acc[i]);
    return s;
}

__attribute__((target("avx512f,avx512vnni"))) inline int dpbusd_loop(int seed) {
    __m512i acc[10];
    for (int i = 0; i < 10; i++) acc[i] = _mm512_set1_epi32(seed + i);
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    for (long k = 0; k < kPeakIterations; k++) {
        for (int i = 0; i < 10; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    }
    int s = 0;
    for (int i = 0; i < 10; i++) s += _mm_cvtsi128_si32(_mm512_castsi512_si128(acc[i]));
    return s;
}

// Multiply-adds per second of `body` run on `threads` threads at once.
template <class Body>
double rate(int threads, double macs_per_thread, Body body) {
    std::vector<std::thread> pool;
    volatile double sink = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; t++) pool.emplace_back([&, t] { sink = sink + double(body(t)); });
    for (auto &th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return threads * macs_per_thread / s / 1e9;
}

}  // namespace detail

inline Peaks measure_peaks(int threads) {
    using namespace detail;
    Peaks p{};
    if (__builtin_cpu_supports("avx512f")) {
        p.float_name = "float32 FMA zmm";
        p.float_gmacs = rate(threads, 10.0 * 16 * kPeakIterations, [](int t) { return fma512_loop(float(t)); });
    } else {
        p.float_name = "float32 FMA ymm";
        p.float_gmacs = rate(threads, 10.0 * 8 * kPeakIterations, [](int t) { return fma_loop(float(t)); });
    }
    if (__builtin_cpu_supports("avx512vnni")) {
        p.integer_name = "int8 vpdpbusd";
        p.integer_gmacs = rate(threads, 10.0 * 64 * kPeakIterations, [](int t) { return dpbusd_loop(t); });
        p.unsigned_name = p.integer_name;
        p.unsigned_gmacs = p.integer_gmacs;
    } else {
        p.integer_name = "int16 vpmaddwd";
        p.integer_gmacs = rate(threads, 10.0 * 16 * kPeakIterations, [](int t) { return madd_loop(t); });
        p.unsigned_name = "uint8 vpmaddubsw";
        p.unsigned_gmacs = rate(threads, 10.0 * 32 * kPeakIterations, [](int t) { return maddubs_loop(t); });
    }
    return p;
}

}  // namespace lowbit

#include "dispatch.h"

#include "memory.h"

#include <HalideRuntime.h>
#include <cpuid.h>
#include <fmt/format.h>

#include <cstdlib>
#include <mutex>

namespace lowbit {

namespace {

// Every variant, best first.
constexpr Isa kAllIsas[] = {Isa::avx512_vnni, Isa::avx2, Isa::baseline};

// The Halide features each variant's machine code needs. The avx512_vnni variant is compiled
// with avx512_sapphirerapids (which selects vpdpbusd) but its code is generated for the Cannon
// Lake AVX-512 set plus VNNI (cmake/LowbitKernels.cmake), so it needs what Halide checks for
// avx512_cannonlake and the VNNI bit, not the BF16 that Halide's sapphirerapids check asks for:
// Ice Lake runs it too.
std::vector<halide_target_feature_t> features_of(Isa isa) {
    switch (isa) {
        case Isa::avx512_vnni:
            return {halide_target_feature_avx,
                    halide_target_feature_avx2,
                    halide_target_feature_avx512,
                    halide_target_feature_avx512_cannonlake,
                    halide_target_feature_avx512_skylake,
                    halide_target_feature_f16c,
                    halide_target_feature_fma,
                    halide_target_feature_sse41};
        case Isa::avx2:
            return {halide_target_feature_avx, halide_target_feature_avx2, halide_target_feature_f16c,
                    halide_target_feature_fma, halide_target_feature_sse41};
        case Isa::baseline:
            return {};
    }
    return {};
}

std::optional<Isa> initial_forced_isa() {
    const char *env = std::getenv("LOWBIT_ISA");
    if (env == nullptr || *env == '\0') return std::nullopt;
    const Isa isa = parse_isa(env);
    if (!cpu_supports(isa)) {
        throw std::runtime_error(fmt::format("LOWBIT_ISA={}: this CPU cannot run that variant", env));
    }
    return isa;
}

std::optional<Isa> &forced() {
    static std::optional<Isa> isa = initial_forced_isa();
    return isa;
}

// AMD Zen 4 (family 0x19 with AVX-512) splits zmm operations into 256-bit halves; the other
// AVX-512 CPUs (Intel's, AMD Zen 5 of family 0x1a) run them whole.
bool detect_full_width_avx512() {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return true;
    const bool amd = ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163;  // "AuthenticAMD"
    if (!amd || __get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return true;
    const unsigned base_family = (eax >> 8) & 0xf, extended_family = (eax >> 20) & 0xff;
    const unsigned family = base_family == 0xf ? base_family + extended_family : base_family;
    return family != 0x19;
}

std::optional<bool> initial_full_width() {
    const char *env = std::getenv("LOWBIT_FULL_WIDTH");
    if (env == nullptr || *env == '\0') return std::nullopt;
    const std::string value = env;
    if (value != "0" && value != "1") {
        throw std::runtime_error(fmt::format("LOWBIT_FULL_WIDTH={}: expected 0 or 1", value));
    }
    return value == "1";
}

std::optional<bool> &forced_full_width() {
    static std::optional<bool> full = initial_full_width();
    return full;
}

// Halide reports errors on whichever thread hits them, a pool worker included, so the message
// is kept in one place for the calling thread to pick up.
std::mutex halide_error_mutex;
std::string last_halide_error;

void keep_halide_error(void *, const char *message) {
    std::lock_guard<std::mutex> lock(halide_error_mutex);
    last_halide_error += message;
}

}  // namespace

const char *to_string(Isa isa) {
    switch (isa) {
        case Isa::avx512_vnni:
            return "avx512_vnni";
        case Isa::avx2:
            return "avx2";
        case Isa::baseline:
            return "baseline";
    }
    return "?";
}

Isa parse_isa(const std::string &name) {
    for (Isa isa : kAllIsas) {
        if (name == to_string(isa)) return isa;
    }
    throw std::invalid_argument(fmt::format("unknown ISA variant '{}': expected avx512_vnni, avx2 or baseline", name));
}

bool cpu_supports(Isa isa) {
    constexpr int words = (halide_target_feature_end + 63) / 64;
    uint64_t mask[words] = {};
    for (halide_target_feature_t f : features_of(isa)) mask[f / 64] |= uint64_t{1} << (f % 64);
    if (halide_can_use_target_features(words, mask) == 0) return false;
    // AVX512_VNNI: CPUID leaf 7, ECX bit 11 (with the OS's AVX-512 state, which Halide's
    // check of the AVX-512 features above has seen to).
    return isa != Isa::avx512_vnni || __builtin_cpu_supports("avx512vnni");
}

std::vector<Isa> supported_isas() {
    std::vector<Isa> isas;
    for (Isa isa : kAllIsas) {
        if (cpu_supports(isa)) isas.push_back(isa);
    }
    return isas;
}

// Baseline needs no feature, so the list is never empty.
Isa best_isa() { return supported_isas().front(); }

void force_isa(std::optional<Isa> isa) {
    if (isa && !cpu_supports(*isa)) {
        throw std::invalid_argument(fmt::format("this CPU cannot run the {} variant", to_string(*isa)));
    }
    forced() = isa;
}

std::optional<Isa> forced_isa() { return forced(); }

bool full_width_avx512() {
    static const bool detected = detect_full_width_avx512();
    return forced_full_width().value_or(detected);
}

void force_full_width_avx512(std::optional<bool> full) { forced_full_width() = full; }

void set_num_threads(int threads) { halide_set_num_threads(threads); }

namespace detail {

void install_halide_handlers() {
    static std::once_flag once;
    std::call_once(once, [] {
        halide_set_error_handler(keep_halide_error);
        // The kernels' temporaries (packed operands, partial sums) recur with the same sizes
        // every training step: the caching allocator of memory.h serves them (installed before
        // the first kernel runs, so no block crosses allocators).
        halide_set_custom_malloc([](void *, size_t bytes) -> void * {
            try {
                return allocate(bytes);
            } catch (const std::bad_alloc &) {
                return nullptr;  // Halide reports the failed allocation itself
            }
        });
        halide_set_custom_free([](void *, void *p) { deallocate(p); });
    });
}

std::string take_last_halide_error() {
    std::lock_guard<std::mutex> lock(halide_error_mutex);
    std::string message = std::move(last_halide_error);
    last_halide_error.clear();
    return message.empty() ? "unknown Halide error" : message;
}

size_t select_variant(const char *kernel, const std::vector<Isa> &isas) {
    if (const std::optional<Isa> isa = forced()) {
        // The forced variant, or where the kernel has none (backward-data's narrow sums are
        // built for AVX2 and baseline only), its best variant below: each variant's features are a
        // subset of those above it, so that one runs wherever the forced one does.
        for (size_t i = 0; i < isas.size(); i++) {
            if (int(isas[i]) >= int(*isa)) return i;
        }
        throw std::runtime_error(
            fmt::format("kernel {} has no variant at or below the forced {}", kernel, to_string(*isa)));
    }
    for (size_t i = 0; i < isas.size(); i++) {
        if (cpu_supports(isas[i])) return i;
    }
    throw std::runtime_error(fmt::format("kernel {}: no compiled variant runs on this CPU", kernel));
}

}  // namespace detail

}  // namespace lowbit

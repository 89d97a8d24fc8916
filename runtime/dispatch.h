// Run-time selection among a kernel's ahead-of-time variants.
//
// Each kernel is compiled once per CPU variant (cmake/LowbitKernels.cmake); the generated
// <kernel>_variants.h lists them best first as a Kernel<Fn>. Calling it runs the first variant
// this CPU can execute, or the variant forced by force_isa() / the LOWBIT_ISA environment
// variable, and records which one ran (last_isa) so tests can see what they exercised.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

enum class Isa { avx512_vnni, avx2, baseline };

const char *to_string(Isa isa);
// Throws std::invalid_argument for an unknown name.
Isa parse_isa(const std::string &name);
// Whether this CPU has every feature the variant was compiled for (Halide's own check).
bool cpu_supports(Isa isa);
// The best variant this CPU runs, ignoring any forcing.
Isa best_isa();
// Every variant this CPU runs, best first (to force each in turn: tests, benchmarks).
std::vector<Isa> supported_isas();
// Forces every kernel to one variant (std::nullopt: pick the best); a kernel compiled without
// it runs its best variant below it (Isa lists them best first). Throws if the CPU cannot run
// the forced variant. Initially read from LOWBIT_ISA when set.
void force_isa(std::optional<Isa> isa);
std::optional<Isa> forced_isa();

// Whether this CPU runs 512-bit (zmm) operations at full width, so that the 16-lane kernels
// chosen by shape (conv_*_wide, conv_backward_weight_unsigned_16_wide; runtime/conv.cpp) pay
// on the shapes they were measured on. False on AMD Zen 4 (family 0x19), which executes each
// zmm operation as two 256-bit halves: there 16 lanes buy nothing over 8 and idle half of
// each vector on narrow maps (session 11). Meaningful only where the avx512_vnni variant
// runs. Initially read from LOWBIT_FULL_WIDTH (0 or 1) when set.
bool full_width_avx512();
// Overrides the detection (tests: both tile widths on any VNNI CPU); std::nullopt: detect.
void force_full_width_avx512(std::optional<bool> full);

// A Halide pipeline returned an error; what() holds Halide's message.
class KernelError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {
// Installs an error handler that keeps Halide's messages for KernelError (once).
void install_halide_handlers();
std::string take_last_halide_error();
// Index into `isas` of the variant to run; throws if none can run.
size_t select_variant(const char *kernel, const std::vector<Isa> &isas);
}  // namespace detail

template <class Fn>
class Kernel {
public:
    struct Variant {
        Isa isa;
        Fn fn;
    };
    Kernel(const char *name, std::vector<Variant> variants) : name_(name), variants_(std::move(variants)) {
        for (const Variant &v : variants_) isas_.push_back(v.isa);
    }

    template <class... Args>
    void operator()(Args &&...args) const {
        detail::install_halide_handlers();
        const Variant &v = variants_[detail::select_variant(name_, isas_)];
        const int result = v.fn(std::forward<Args>(args)...);
        last_.store(int(v.isa), std::memory_order_relaxed);
        calls_.fetch_add(1, std::memory_order_relaxed);
        if (result != 0) {
            throw KernelError(std::string(name_) + " (" + to_string(v.isa) +
                              ") failed: " + detail::take_last_halide_error());
        }
    }

    const char *name() const { return name_; }
    // The variant the next call runs (forcing included); throws if none can run.
    Isa selected_isa() const { return isas_[detail::select_variant(name_, isas_)]; }
    const std::vector<Isa> &isas() const { return isas_; }
    // The variant of the most recent call, if any.
    std::optional<Isa> last_isa() const {
        const int last = last_.load(std::memory_order_relaxed);
        return last < 0 ? std::nullopt : std::optional<Isa>(Isa(last));
    }

    // How many calls have run so far (benchmarks: which kernel a pass used).
    uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }

private:
    const char *name_;
    std::vector<Variant> variants_;
    std::vector<Isa> isas_;
    mutable std::atomic<int> last_{-1};
    mutable std::atomic<uint64_t> calls_{0};
};

// Sets the Halide thread pool size (0: one thread per core). Kernels are deterministic
// whatever the count.
void set_num_threads(int threads);

}  // namespace lowbit

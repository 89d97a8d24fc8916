// Memory for tensors and for the kernels' own temporaries (installed as Halide's allocator).
//
// A training step allocates the same large buffers in the same order every step: packed
// operands, outputs, gradients. From malloc they fragment its heap (freed temporaries between
// long-lived saved tensors), and from fresh mmaps every call pays page faults; so blocks of at
// least kCachedBytes are mmap'd, kept when freed, and handed out again, as PyTorch's caching
// allocator does: the smallest free block that fits serves a request, a remainder of at least
// kCachedBytes is split off and stays free, and freed neighbours merge. Splitting matters for
// memory: without it a freed 8 MiB block sat idle while 2 MiB requests mapped new memory.
// Measured on ResNet-20 training steps (bench_train_step, 2 threads): caching took 4-bit steps
// from 150 to 175-200 images/s; splitting and merging took the 4-bit peak RSS from 219 to
// 187 MiB, the same peak as with no cache at all, at the same speed.
// Thread-safe. Under AddressSanitizer everything goes to malloc, so ASan sees every buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace lowbit {

inline constexpr size_t kCachedBytes = size_t(256) << 10;
// Freed large blocks beyond this many bytes are returned to the system instead of kept.
inline constexpr size_t kCacheLimitBytes = size_t(1) << 30;

// `bytes` (may be 0) aligned to 128 bytes; readable 8 bytes before and after, as Halide
// requires of its allocator. Throws std::bad_alloc.
void *allocate(size_t bytes);
// Memory from allocate(), or null.
void deallocate(void *p);

struct MemoryStats {
    size_t cached_bytes = 0;  // freed large blocks kept for reuse
    size_t reused = 0;        // large requests served from the cache
    size_t mapped = 0;        // large requests that mapped new memory
};
MemoryStats memory_stats();
// False under AddressSanitizer (everything from malloc).
bool memory_cache_enabled();
// Returns every cached block to the system.
void release_cached_memory();

// std::allocator, but resize leaves new elements of trivial types unset: for buffers a
// kernel overwrites whole. A quantized tensor's int8 values were zero-filled by
// vector::resize on the calling thread alone: memset fell from 6.2 to 3.6% of a default
// training step's samples (session 15, perf). Over allocate() instead, the block cache kept
// 7 MiB more at the peak for no measurable speed.
template <class T>
struct KernelAllocator {
    using value_type = T;
    KernelAllocator() = default;
    template <class U>
    KernelAllocator(const KernelAllocator<U> &) noexcept {}
    T *allocate(size_t n) { return std::allocator<T>().allocate(n); }
    void deallocate(T *p, size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
    // Default-initialization: nothing for trivial types.
    template <class U>
    void construct(U *p) noexcept(std::is_nothrow_default_constructible_v<U>) {
        ::new (static_cast<void *>(p)) U;
    }
    template <class U, class... Args>
    void construct(U *p, Args &&...args) {
        ::new (static_cast<void *>(p)) U(std::forward<Args>(args)...);
    }
    template <class U>
    bool operator==(const KernelAllocator<U> &) const noexcept {
        return true;
    }
    template <class U>
    bool operator!=(const KernelAllocator<U> &) const noexcept {
        return false;
    }
};

// int8 values that a kernel writes whole (quantized tensors' q).
using KernelBytes = std::vector<int8_t, KernelAllocator<int8_t>>;

}  // namespace lowbit

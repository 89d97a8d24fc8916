#include "memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace lowbit {

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUseCache = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kUseCache = false;
#else
constexpr bool kUseCache = true;
#endif
#else
constexpr bool kUseCache = true;
#endif

// Each block starts with this header; the caller's pointer is kHeader bytes in, so it keeps
// the block's 128-byte alignment (mmap gives pages, aligned_alloc is asked for 128).
constexpr size_t kHeader = 128;
constexpr uint64_t kMagicSmall = 0x6c6f77626974736dULL, kMagicLarge = 0x6c6f77626974734cULL;

struct Header {
    uint64_t magic;
    size_t block_bytes;  // the whole block, header included
};

struct Cache {
    std::mutex mutex;
    std::map<size_t, std::vector<void *>> free_blocks;  // by block size
    MemoryStats stats;
};

Cache &cache() {
    static Cache *c = new Cache;  // never destroyed: kernels may free during static destruction
    return *c;
}

void *finish(void *block, size_t block_bytes, uint64_t magic) {
    auto *h = static_cast<Header *>(block);
    h->magic = magic;
    h->block_bytes = block_bytes;
    return static_cast<char *>(block) + kHeader;
}

}  // namespace

void *allocate(size_t bytes) {
    // Room for the header, 64 readable bytes past the end, rounded to the alignment.
    const size_t block_bytes = (bytes + kHeader + 64 + 127) / 128 * 128;
    if (!kUseCache || bytes < kCachedBytes) {
        void *block = std::aligned_alloc(128, block_bytes);
        if (block == nullptr) throw std::bad_alloc();
        return finish(block, block_bytes, kMagicSmall);
    }
    const size_t page = 4096, mapped_bytes = (block_bytes + page - 1) / page * page;
    Cache &c = cache();
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        // The smallest cached block that fits, if it wastes less than half of itself.
        auto it = c.free_blocks.lower_bound(mapped_bytes);
        if (it != c.free_blocks.end() && it->first < 2 * mapped_bytes) {
            void *block = it->second.back();
            it->second.pop_back();
            c.stats.cached_bytes -= it->first;
            if (it->second.empty()) c.free_blocks.erase(it);
            c.stats.reused++;
            return static_cast<char *>(block) + kHeader;
        }
        c.stats.mapped++;
    }
    void *block = mmap(nullptr, mapped_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED) throw std::bad_alloc();
    return finish(block, mapped_bytes, kMagicLarge);
}

void deallocate(void *p) {
    if (p == nullptr) return;
    void *block = static_cast<char *>(p) - kHeader;
    const Header h = *static_cast<Header *>(block);
    if (h.magic == kMagicSmall) {
        std::free(block);
        return;
    }
    if (h.magic != kMagicLarge) std::abort();  // not ours: a bug, not recoverable
    Cache &c = cache();
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        if (c.stats.cached_bytes + h.block_bytes <= kCacheLimitBytes) {
            c.free_blocks[h.block_bytes].push_back(block);
            c.stats.cached_bytes += h.block_bytes;
            return;
        }
    }
    munmap(block, h.block_bytes);
}

bool memory_cache_enabled() { return kUseCache; }

MemoryStats memory_stats() {
    Cache &c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    return c.stats;
}

void release_cached_memory() {
    Cache &c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto &[bytes, blocks] : c.free_blocks) {
        for (void *block : blocks) munmap(block, bytes);
    }
    c.free_blocks.clear();
    c.stats.cached_bytes = 0;
}

}  // namespace lowbit

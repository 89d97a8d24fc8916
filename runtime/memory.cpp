#include "memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <utility>
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

// Free large blocks, by address (to merge neighbours) and by size (best fit). A free block
// may span several mappings: adjacent page ranges of ours are all readable and writable, so
// they serve as one block and munmap releases them as one.
struct Cache {
    std::mutex mutex;
    std::map<char *, size_t> by_address;
    std::set<std::pair<size_t, char *>> by_size;
    MemoryStats stats;

    void insert(char *block, size_t bytes) {
        by_address.emplace(block, bytes);
        by_size.emplace(bytes, block);
        stats.cached_bytes += bytes;
    }
    void erase(std::map<char *, size_t>::iterator it) {
        by_size.erase({it->second, it->first});
        stats.cached_bytes -= it->second;
        by_address.erase(it);
    }
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
    const size_t page = 4096, wanted = (block_bytes + page - 1) / page * page;
    Cache &c = cache();
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        // The smallest free block that fits; a remainder worth caching is split off and stays
        // free, so a large freed block also serves smaller requests (no new mapping for them).
        auto fit = c.by_size.lower_bound({wanted, nullptr});
        if (fit != c.by_size.end()) {
            char *block = fit->second;
            size_t bytes_given = fit->first;
            c.erase(c.by_address.find(block));
            if (bytes_given - wanted >= kCachedBytes) {
                c.insert(block + wanted, bytes_given - wanted);
                bytes_given = wanted;
            }
            c.stats.reused++;
            return finish(block, bytes_given, kMagicLarge);
        }
        c.stats.mapped++;
    }
    void *block = mmap(nullptr, wanted, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (block == MAP_FAILED) throw std::bad_alloc();
    return finish(block, wanted, kMagicLarge);
}

void deallocate(void *p) {
    if (p == nullptr) return;
    char *block = static_cast<char *>(p) - kHeader;
    const Header h = *reinterpret_cast<Header *>(block);
    if (h.magic == kMagicSmall) {
        std::free(block);
        return;
    }
    if (h.magic != kMagicLarge) std::abort();  // not ours: a bug, not recoverable
    Cache &c = cache();
    size_t bytes = h.block_bytes;
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        // Merge with free neighbours, so that freed pieces serve larger requests again.
        auto next = c.by_address.find(block + bytes);
        if (next != c.by_address.end()) {
            bytes += next->second;
            c.erase(next);
        }
        auto prev = c.by_address.lower_bound(block);
        if (prev != c.by_address.begin()) {
            --prev;
            if (prev->first + prev->second == block) {
                block = prev->first;
                bytes += prev->second;
                c.erase(prev);
            }
        }
        if (c.stats.cached_bytes + bytes <= kCacheLimitBytes) {
            c.insert(block, bytes);
            return;
        }
    }
    munmap(block, bytes);
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
    for (const auto &[block, bytes] : c.by_address) munmap(block, bytes);
    c.by_address.clear();
    c.by_size.clear();
    c.stats.cached_bytes = 0;
}

}  // namespace lowbit

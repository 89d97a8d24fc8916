// The caching allocator of runtime/memory.h: alignment, reuse of freed large blocks by the next
// request that fits, the waste bound, and the statistics.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "memory.h"

namespace lowbit {
namespace {

bool aligned128(const void *p) { return reinterpret_cast<uintptr_t>(p) % 128 == 0; }

TEST(Memory, SmallAndZeroSizedBlocksAreAlignedAndUsable) {
    for (size_t bytes : {size_t(0), size_t(1), size_t(100), size_t(4096), kCachedBytes - 1}) {
        auto *p = static_cast<unsigned char *>(allocate(bytes));
        ASSERT_NE(p, nullptr);
        EXPECT_TRUE(aligned128(p)) << bytes;
        std::memset(p, 0xab, bytes + 8);  // Halide may read (and we write) a little past the end
        deallocate(p);
    }
    deallocate(nullptr);
}

TEST(Memory, FreedLargeBlocksServeTheNextRequestThatFits) {
    if (!memory_cache_enabled()) GTEST_SKIP() << "caching is off under AddressSanitizer";
    release_cached_memory();
    const size_t bytes = size_t(3) << 20;
    void *a = allocate(bytes);
    EXPECT_TRUE(aligned128(a));
    std::memset(a, 1, bytes);
    const MemoryStats before = memory_stats();
    deallocate(a);
    EXPECT_GE(memory_stats().cached_bytes, before.cached_bytes + bytes);
    void *b = allocate(bytes - 1000);  // fits the freed block
    EXPECT_EQ(b, a);
    EXPECT_EQ(memory_stats().reused, before.reused + 1);
    deallocate(b);
    void *small = allocate(bytes / 3);  // would waste more than half of it: a new block
    EXPECT_NE(small, a);
    void *big = allocate(bytes * 2);  // larger than anything cached
    EXPECT_NE(big, a);
    deallocate(small);
    deallocate(big);
    release_cached_memory();
    EXPECT_EQ(memory_stats().cached_bytes, 0u);
}

}  // namespace
}  // namespace lowbit

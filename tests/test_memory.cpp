// The caching allocator of runtime/memory.h: alignment, reuse of freed large blocks by the next
// request that fits, splitting and merging of free blocks, and the statistics.
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
    void *big = allocate(bytes * 2);  // larger than anything cached: a new mapping
    EXPECT_NE(big, a);
    EXPECT_EQ(memory_stats().mapped, before.mapped + 1);
    deallocate(big);
    release_cached_memory();
    EXPECT_EQ(memory_stats().cached_bytes, 0u);
}

// A smaller request takes the front of a larger free block and leaves the rest free; freed
// neighbours merge again, so the whole block serves a large request afterwards. No new
// mappings on the way.
TEST(Memory, LargeBlocksSplitForSmallerRequestsAndMergeWhenFreed) {
    if (!memory_cache_enabled()) GTEST_SKIP() << "caching is off under AddressSanitizer";
    release_cached_memory();
    const size_t bytes = size_t(4) << 20;
    auto *whole = static_cast<char *>(allocate(bytes));
    deallocate(whole);
    const MemoryStats before = memory_stats();
    auto *first = static_cast<char *>(allocate(bytes / 4));
    auto *second = static_cast<char *>(allocate(bytes / 4));
    EXPECT_EQ(first, whole);
    EXPECT_GT(second, first);
    EXPECT_LT(second, whole + bytes);
    EXPECT_TRUE(aligned128(second));
    std::memset(first, 1, bytes / 4 + 8);
    std::memset(second, 2, bytes / 4 + 8);
    EXPECT_EQ(static_cast<unsigned char>(first[bytes / 4 - 1]), 1);  // the pieces do not overlap
    EXPECT_LT(memory_stats().cached_bytes, before.cached_bytes);
    deallocate(second);
    deallocate(first);
    EXPECT_EQ(memory_stats().cached_bytes, before.cached_bytes);
    void *again = allocate(bytes - 1000);  // only the merged block fits
    EXPECT_EQ(again, whole);
    EXPECT_EQ(memory_stats().mapped, before.mapped);
    deallocate(again);
    release_cached_memory();
    EXPECT_EQ(memory_stats().cached_bytes, 0u);
}

}  // namespace
}  // namespace lowbit

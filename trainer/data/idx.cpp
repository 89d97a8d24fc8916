#include "idx.h"

#include <fmt/format.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace lowbit {

namespace {

struct GzCloser {
    void operator()(gzFile f) const { gzclose(f); }
};

// Reads exactly n bytes or throws naming the file.
void read_exactly(gzFile f, const std::string &path, void *out, size_t n, const char *what) {
    size_t done = 0;
    while (done < n) {
        const unsigned chunk = unsigned(std::min<size_t>(n - done, 1u << 30));
        const int got = gzread(f, static_cast<char *>(out) + done, chunk);
        if (got < 0) {
            int code = 0;
            throw DataError(fmt::format("{}: read error: {}", path, gzerror(f, &code)));
        }
        if (got == 0) throw DataError(fmt::format("{}: truncated: {} ends after {} of {} bytes", path, what, done, n));
        done += size_t(got);
    }
}

}  // namespace

IdxArray read_idx(const std::string &path, int64_t max_items) {
    // gzopen reads uncompressed files as they are, so both spellings of the data set work.
    std::unique_ptr<gzFile_s, GzCloser> f(gzopen(path.c_str(), "rb"));
    if (!f) throw DataError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    unsigned char magic[4];
    read_exactly(f.get(), path, magic, 4, "the header");
    if (magic[0] != 0 || magic[1] != 0) throw DataError(fmt::format("{}: not an IDX file (bad magic)", path));
    if (magic[2] != 0x08)
        throw DataError(
            fmt::format("{}: IDX element type 0x{:02x} not supported (expected unsigned bytes, 0x08)", path, magic[2]));
    const int rank = magic[3];
    if (rank < 1 || rank > 4) throw DataError(fmt::format("{}: IDX rank {} not supported", path, rank));
    IdxArray a;
    int64_t total = 1;
    for (int d = 0; d < rank; d++) {
        unsigned char b[4];
        read_exactly(f.get(), path, b, 4, "the header");
        const int64_t extent = (int64_t(b[0]) << 24) | (int64_t(b[1]) << 16) | (int64_t(b[2]) << 8) | b[3];
        if (d == 0 && max_items >= 0)
            a.shape.push_back(std::min(extent, max_items));
        else
            a.shape.push_back(extent);
        if (extent > (int64_t(1) << 31) || (total *= std::max<int64_t>(a.shape.back(), 1)) > (int64_t(1) << 34))
            throw DataError(fmt::format("{}: implausible IDX extents", path));
    }
    total = 1;
    for (int64_t e : a.shape) total *= e;
    a.data.resize(size_t(total));
    read_exactly(f.get(), path, a.data.data(), a.data.size(), "the data");
    return a;
}

}  // namespace lowbit

// .npy reading and writing: round trips, files written by NumPy itself (tests/data, made by
// NumPy's np.save), and bad files that must give a clear error naming the file.
#include <gtest/gtest.h>

#include <fstream>

#include "npy.h"

namespace lowbit {
namespace {

std::string data_file(const char *name) { return std::string(LOWBIT_TEST_DATA) + "/" + name; }
std::string temp_file(const char *name) { return testing::TempDir() + "/" + name; }

void write_bytes(const std::string &path, const std::string &bytes) { std::ofstream(path, std::ios::binary) << bytes; }

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

// The error of reading `path`, which must name the file and contain `expected`.
void expect_error(const std::string &path, const std::string &expected) {
    try {
        read_npy(path);
        ADD_FAILURE() << "read " << path << " without error";
    } catch (const NpyError &e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(path), std::string::npos) << what;
        EXPECT_NE(what.find(expected), std::string::npos) << what;
    }
}

TEST(Npy, RoundTripsEveryRank) {
    for (const Shape &shape : {Shape{}, Shape{5}, Shape{2, 3}, Shape{2, 3, 4, 5}, Shape{0, 3}}) {
        Tensor t(shape);
        for (int64_t k = 0; k < t.numel(); k++) t[k] = float(k) * 0.25f - 3.0f;
        const std::string path = temp_file("round.npy");
        write_npy(path, t);
        const Tensor r = read_npy(path);
        EXPECT_EQ(r.shape(), shape);
        for (int64_t k = 0; k < t.numel(); k++) EXPECT_EQ(r[k], t[k]);
    }
}

TEST(Npy, WritesNonContiguousTensorsInLogicalOrder) {
    std::vector<float> storage = {0, 1, 2, 3, 4, 5};
    // The transpose of a 2x3 row-major array: shape (3, 2), strides (1, 3).
    const Tensor t = Tensor::wrap(storage.data(), {3, 2}, {1, 3});
    const std::string path = temp_file("transposed.npy");
    write_npy(path, t);
    const Tensor r = read_npy(path);
    EXPECT_EQ(r.shape(), (Shape{3, 2}));
    const float expected[] = {0, 3, 1, 4, 2, 5};
    for (int k = 0; k < 6; k++) EXPECT_EQ(r[k], expected[k]);
}

TEST(Npy, ReadsFilesWrittenByNumPy) {
    const Tensor f = read_npy(data_file("fortran.npy"));  // arange(24).reshape(2, 3, 4), Fortran order
    ASSERT_EQ(f.shape(), (Shape{2, 3, 4}));
    for (int64_t k = 0; k < 24; k++) EXPECT_EQ(f[k], float(k));
    const Tensor s = read_npy(data_file("scalar.npy"));
    EXPECT_EQ(s.rank(), 0);
    EXPECT_EQ(s[0], 2.5f);
    const Tensor v2 = read_npy(data_file("version2.npy"));
    ASSERT_EQ(v2.shape(), (Shape{2, 3}));
    EXPECT_EQ(v2[5], 5.0f);
    const Int8Array q = read_npy_int8(data_file("int8.npy"));
    EXPECT_EQ(q.shape, (Shape{2, 3}));
    EXPECT_EQ(q.data, (std::vector<int8_t>{-128, 0, 127, 1, -2, 3}));
}

TEST(Npy, WritesWhatNumPyWrites) {
    // np.save of a (2, 3) int8 array: the same header bytes, padded to 64.
    const std::string path = temp_file("int8.npy");
    const int8_t values[] = {-128, 0, 127, 1, -2, 3};
    write_npy(path, {2, 3}, values);
    EXPECT_EQ(read_bytes(path), read_bytes(data_file("int8.npy")));
}

TEST(Npy, BadFilesGiveClearErrors) {
    expect_error(data_file("float64.npy"), "dtype '<f8' not supported");
    expect_error(data_file("bigendian.npy"), "dtype '>f4' not supported");
    expect_error(temp_file("missing.npy"), "cannot open");

    const std::string good = read_bytes(data_file("version2.npy"));
    const std::string bad_magic = temp_file("bad_magic.npy");
    write_bytes(bad_magic, "PK\x03\x04 not numpy at all");
    expect_error(bad_magic, "bad magic");
    const std::string truncated = temp_file("truncated.npy");
    write_bytes(truncated, good.substr(0, good.size() - 3));
    expect_error(truncated, "truncated");
    const std::string short_header = temp_file("short_header.npy");
    write_bytes(short_header, good.substr(0, 40));
    expect_error(short_header, "truncated header");
    const std::string huge = temp_file("huge.npy");
    std::string h = "\x93NUMPY\x01";
    h += std::string("\x00\x46\x00", 3);
    h += "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 3), }";
    write_bytes(huge, h);
    expect_error(huge, "malformed header");
    const std::string no_shape = temp_file("no_shape.npy");
    std::string n = "\x93NUMPY\x01";
    n += std::string("\x00\x20\x00", 3);
    n += "{'descr': '<f4', 'fortran_order':";
    write_bytes(no_shape, n);
    expect_error(no_shape, "malformed header");
}

TEST(Npy, FailedWriteLeavesTheOldFile) {
    const std::string path = temp_file("keep.npy");
    write_npy(path, Tensor({2}));
    const std::string before = read_bytes(path);
    EXPECT_THROW(write_npy(temp_file("no_such_dir/x.npy"), Tensor({2})), NpyError);
    EXPECT_EQ(read_bytes(path), before);
}

}  // namespace
}  // namespace lowbit

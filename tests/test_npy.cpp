// .npy reading and writing: round trips, files written by NumPy itself (embedded below, made
// once with NumPy 1.24 so the test needs no Python), hand-made header variants, and bad files,
// which must give an NpyError naming the file and never crash.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

#include "npy.h"

namespace lowbit {
namespace {

template <size_t N>
std::string bytes(const char (&literal)[N]) {
    return std::string(literal, N - 1);  // keeps the embedded NULs
}

// np.save(f, np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)))
const std::string kFortran = bytes(
    "\x93NUMPY\x01\x00v\x00"
    "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }                           "
    "                             \n"
    "\x00\x00\x00\x00\x00\x00\x40\x41\x00\x00\x80\x40\x00\x00\x80\x41\x00\x00\x00\x41\x00\x00"
    "\xa0\x41\x00\x00\x80\x3f\x00\x00\x50\x41\x00\x00\xa0\x40\x00\x00\x88\x41\x00\x00\x10\x41"
    "\x00\x00\xa8\x41\x00\x00\x00\x40\x00\x00\x60\x41\x00\x00\xc0\x40\x00\x00\x90\x41\x00\x00"
    "\x20\x41\x00\x00\xb0\x41\x00\x00\x40\x40\x00\x00\x70\x41\x00\x00\xe0\x40\x00\x00\x98\x41"
    "\x00\x00\x30\x41\x00\x00\xb8\x41");

// np.save(f, np.arange(6, dtype=np.float32).reshape(2, 3))
const std::string kCOrder = bytes(
    "\x93NUMPY\x01\x00v\x00"
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                             "
    "                             \n"
    "\x00\x00\x00\x00\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40\x00\x00"
    "\xa0\x40");

// np.save(f, np.float32(2.5))
const std::string kScalar = bytes(
    "\x93NUMPY\x01\x00v\x00"
    "{'descr': '<f4', 'fortran_order': False, 'shape': (), }                                 "
    "                             \n"
    "\x00\x00\x20\x40");

// np.lib.format.write_array(f, np.array([[-1.5, 0, 0.25], [1, 2.5, 1024]], np.float32), (2, 0))
const std::string kVersion2 = bytes(
    "\x93NUMPY\x02\x00t\x00\x00\x00"
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                             "
    "                           \n"
    "\x00\x00\xc0\xbf\x00\x00\x00\x00\x00\x00\x80\x3e\x00\x00\x80\x3f\x00\x00\x20\x40\x00\x00"
    "\x80\x44");

// np.lib.format.write_array(f, np.array([0.5, -0.5, 8], np.float32), (3, 0))
const std::string kVersion3 = bytes(
    "\x93NUMPY\x03\x00t\x00\x00\x00"
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }                               "
    "                           \n"
    "\x00\x00\x00\x3f\x00\x00\x00\xbf\x00\x00\x00\x41");

// np.save(f, np.array([[-128, 0, 127], [1, -2, 3]], np.int8))
const std::string kInt8 = bytes(
    "\x93NUMPY\x01\x00v\x00"
    "{'descr': '|i1', 'fortran_order': False, 'shape': (2, 3), }                             "
    "                             \n"
    "\x80\x00\x7f\x01\xfe\x03");

// np.save(f, np.arange(2.0))
const std::string kFloat64 = bytes(
    "\x93NUMPY\x01\x00v\x00"
    "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }                               "
    "                             \n"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xf0\x3f");

// np.save(f, np.arange(2, dtype='>f4'))
const std::string kBigEndian = bytes(
    "\x93NUMPY\x01\x00v\x00"
    "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }                               "
    "                             \n"
    "\x00\x00\x00\x00\x3f\x80\x00\x00");

std::string temp_file(const std::string &name) { return testing::TempDir() + "npy_" + name; }

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

// Writes `contents` to a temporary file named `name`; returns its path.
std::string file_with(const std::string &name, const std::string &contents) {
    const std::string path = temp_file(name);
    std::ofstream(path, std::ios::binary) << contents;
    return path;
}

// A version 1.0 file with the header dictionary `dict` (NumPy's padding and '\n' are optional).
std::string npy_v1(const std::string &dict, const std::string &payload) {
    const size_t len = dict.size();
    return bytes("\x93NUMPY\x01\x00") + char(len & 0xff) + char(len >> 8) + dict + payload;
}

// Calls `read` on `path`, which must throw an NpyError naming the file and containing `expected`.
template <class Read>
void expect_error(Read read, const std::string &path, const std::string &expected) {
    try {
        read(path);
        ADD_FAILURE() << "read " << path << " without error, expected: " << expected;
    } catch (const NpyError &e) {
        const std::string what = e.what();
        EXPECT_EQ(what.rfind(path + ": ", 0), 0u) << what;
        EXPECT_NE(what.find(expected), std::string::npos) << what << "\n  expected: " << expected;
    }
}

void expect_error(const std::string &path, const std::string &expected) { expect_error(read_npy, path, expected); }

void expect_values(const Tensor &t, const std::vector<float> &expected) {
    ASSERT_EQ(t.numel(), int64_t(expected.size()));
    for (size_t k = 0; k < expected.size(); k++) EXPECT_EQ(t[int64_t(k)], expected[k]) << "element " << k;
}

TEST(Npy, RoundTripsEveryRank) {
    for (const Shape &shape : {Shape{}, Shape{1}, Shape{5}, Shape{2, 3}, Shape{2, 3, 4, 5}, Shape{0, 3}}) {
        Tensor t(shape);
        for (int64_t k = 0; k < t.numel(); k++) t[k] = float(k) * 0.25f - 3.0f;
        const std::string path = temp_file("round.npy");
        write_npy(path, t);
        const Tensor r = read_npy(path);
        EXPECT_EQ(r.shape(), shape);
        EXPECT_EQ(r.numel(), t.numel());
        for (int64_t k = 0; k < t.numel(); k++) EXPECT_EQ(r[k], t[k]);
    }
}

TEST(Npy, RoundTripsInt8) {
    const std::vector<int8_t> values = {-128, -1, 0, 1, 127, 42};
    const std::string path = temp_file("round_int8.npy");
    for (const Shape &shape : {Shape{6}, Shape{1, 2, 3}}) {
        write_npy(path, shape, values.data());
        const Int8Array a = read_npy_int8(path);
        EXPECT_EQ(a.shape, shape);
        EXPECT_EQ(a.data, values);
    }
    write_npy(path, Shape{0}, nullptr);
    EXPECT_EQ(read_npy_int8(path).shape, Shape{0});
}

TEST(Npy, WritesNonContiguousTensorsInLogicalOrder) {
    std::vector<float> storage = {0, 1, 2, 3, 4, 5};
    const std::string path = temp_file("strided.npy");
    // The transpose of a 2x3 row-major array: shape (3, 2), strides (1, 3).
    write_npy(path, Tensor::wrap(storage.data(), {3, 2}, {1, 3}));
    Tensor r = read_npy(path);
    EXPECT_EQ(r.shape(), (Shape{3, 2}));
    expect_values(r, {0, 3, 1, 4, 2, 5});
    // Every other element.
    write_npy(path, Tensor::wrap(storage.data(), {3}, {2}));
    r = read_npy(path);
    EXPECT_EQ(r.shape(), Shape{3});
    expect_values(r, {0, 2, 4});
}

TEST(Npy, ReadsFilesWrittenByNumPy) {
    const Tensor f = read_npy(file_with("fortran.npy", kFortran));
    EXPECT_EQ(f.shape(), (Shape{2, 3, 4}));
    for (int64_t k = 0; k < 24; k++) EXPECT_EQ(f[k], float(k));
    EXPECT_EQ(f.at({1, 2, 3}), 23.0f);

    const Tensor s = read_npy(file_with("scalar.npy", kScalar));
    EXPECT_EQ(s.rank(), 0);
    expect_values(s, {2.5f});

    const Tensor v2 = read_npy(file_with("v2.npy", kVersion2));
    EXPECT_EQ(v2.shape(), (Shape{2, 3}));
    expect_values(v2, {-1.5f, 0, 0.25f, 1, 2.5f, 1024});

    const Tensor v3 = read_npy(file_with("v3.npy", kVersion3));
    EXPECT_EQ(v3.shape(), Shape{3});
    expect_values(v3, {0.5f, -0.5f, 8});

    const Int8Array q = read_npy_int8(file_with("int8.npy", kInt8));
    EXPECT_EQ(q.shape, (Shape{2, 3}));
    EXPECT_EQ(q.data, (std::vector<int8_t>{-128, 0, 127, 1, -2, 3}));
}

TEST(Npy, WritesWhatNumPyWrites) {
    const std::string path = temp_file("as_numpy.npy");
    Tensor c({2, 3});
    for (int64_t k = 0; k < 6; k++) c[k] = float(k);
    write_npy(path, c);
    EXPECT_EQ(read_bytes(path), kCOrder);

    Tensor s = Tensor::uninitialized({});
    s[0] = 2.5f;
    write_npy(path, s);
    EXPECT_EQ(read_bytes(path), kScalar);

    const int8_t values[] = {-128, 0, 127, 1, -2, 3};
    write_npy(path, {2, 3}, values);
    EXPECT_EQ(read_bytes(path), kInt8);
    EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0) << "temporary file left behind";
}

TEST(Npy, WritesVersion2ForHeadersOver64KiB) {
    // Only an absurd rank makes the header that long: 30000 extents of 1 ("1, " each).
    const Shape shape(30000, 1);
    const int8_t value = 7;
    const std::string path = temp_file("v2_written.npy");
    write_npy(path, shape, &value);
    const std::string b = read_bytes(path);
    ASSERT_GT(b.size(), 12u);
    EXPECT_EQ(b.substr(0, 8), bytes("\x93NUMPY\x02\x00"));
    const size_t len = size_t(uint8_t(b[8])) | size_t(uint8_t(b[9])) << 8 | size_t(uint8_t(b[10])) << 16 |
                       size_t(uint8_t(b[11])) << 24;
    EXPECT_GT(len, 65535u);
    EXPECT_EQ((12 + len) % 64, 0u);
    ASSERT_EQ(b.size(), 12 + len + 1);
    EXPECT_EQ(b[12 + len - 1], '\n');
    EXPECT_EQ(b.back(), 7);
    // NumPy allows at most 64 dimensions, and so does the reader.
    expect_error(read_npy_int8, path, "more than 64 dimensions");
}

TEST(Npy, ParsesHeaderVariants) {
    const std::string one = bytes("\x00\x00\x80\x3f");  // 1.0f
    const std::string six = one + one + one + one + one + one;
    struct Case {
        const char *dict;
        Shape shape;
    };
    for (const Case &c : std::vector<Case>{
             {"{'shape': (6,), 'fortran_order': False, 'descr': '<f4'}", {6}},
             {"{'descr':'<f4','fortran_order':False,'shape':(6,),}", {6}},
             {"{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (6)}", {6}},
             {"{ 'descr' : '<f4' ,\t'fortran_order' : True , 'shape' : ( 2 , 3 , ) }   ", {2, 3}},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 6, 1), }", {1, 6, 1}},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }", {2, 3}},
             {"{'descr': '<f4', 'fortran_order': True, 'shape': (), }    \n", {}},
         }) {
        const Tensor t = read_npy(file_with("variant.npy", npy_v1(c.dict, six)));
        EXPECT_EQ(t.shape(), c.shape) << c.dict;
    }
}

TEST(Npy, BadFilesGiveClearErrors) {
    expect_error(temp_file("missing.npy"), "cannot open: No such file or directory");
    expect_error(testing::TempDir(), "cannot read");  // a directory
    expect_error(file_with("empty.npy", ""), "bad magic");
    expect_error(file_with("zip.npy", "PK\x03\x04 not numpy at all"), "not a .npy file (bad magic)");

    expect_error(file_with("f8.npy", kFloat64), "dtype '<f8' not supported, expected float32 ('<f4')");
    expect_error(file_with("big.npy", kBigEndian), "dtype '>f4' (big-endian) not supported");
    expect_error(file_with("int8_as_f4.npy", kInt8), "dtype '|i1' not supported");
    expect_error(read_npy_int8, file_with("f4_as_int8.npy", kCOrder), "dtype '<f4' not supported, expected int8");

    // kCOrder: 128-byte header, 6 elements (24 bytes).
    expect_error(file_with("short_data.npy", kCOrder.substr(0, 128 + 21)),
                 "truncated: header says 6 elements (24 bytes), file holds 21");
    expect_error(file_with("no_data.npy", kCOrder.substr(0, 128)), "file holds 0");
    for (size_t n : {7, 9, 60, 127})
        expect_error(file_with("short_header.npy", kCOrder.substr(0, n)), "truncated header");
    expect_error(file_with("short_v2.npy", kVersion2.substr(0, 11)), "truncated header");

    std::string version = kCOrder;
    version[6] = 4;
    expect_error(file_with("version.npy", version), "format version 4.0 not supported");
    std::string huge_len = kVersion2;
    huge_len[10] = '\x7f';
    expect_error(file_with("huge_len.npy", huge_len), "malformed header");

    const std::string four = bytes("\x00\x00\x00\x00");
    struct Case {
        const char *dict, *expected;
    };
    for (const Case &c : std::vector<Case>{
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "negative extent"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", "overflows"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }", "too many elements"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1000,), }", "header says 1000 elements"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (a,), }", "expected an integer"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': 1, }", "expected '('"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1 1), }", "expected ')'"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1", "expected ')'"},
             {"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", "neither True nor False"},
             {"{'descr': '<f4', 'shape': (1,), }", "no 'fortran_order' key"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", "unexpected key 'x'"},
             {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "given twice"},
             {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", "structured"},
             {"{'descr': '<f4, 'fortran_order': False, 'shape': (1,), }", "malformed header"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x", "text after the dictionary"},
             {"{'descr': '<f4' 'fortran_order': False, 'shape': (1,), }", "expected '}'"},
             {"'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", "expected '{'"},
             {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "expected '}'"},
             {"{'descr': '<f4", "unterminated string"},
             {"", "expected '{'"},
         }) {
        expect_error(file_with("bad_header.npy", npy_v1(c.dict, four)), c.expected);
    }
    std::string rank65 = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    for (int d = 0; d < 65; d++) rank65 += "1,";
    expect_error(file_with("rank65.npy", npy_v1(rank65 + ")}", four)), "more than 64 dimensions");
    expect_error(file_with("long_string.npy", npy_v1("{'descr': '" + std::string(100, 'f') + "'}", four)),
                 "longer than 64");
}

// What a fuzzer would try first: every truncation and many single-byte corruptions of a valid
// file must either read or throw NpyError; anything else (a crash, another exception) fails.
TEST(Npy, SurvivesCorruptedFiles) {
    const std::string path = temp_file("corrupt.npy");
    auto try_read = [&] {
        try {
            read_npy(path);
            return true;
        } catch (const NpyError &) {
            return false;
        }
    };
    for (size_t n = 0; n < kFortran.size(); n++) {
        file_with("corrupt.npy", kFortran.substr(0, n));
        EXPECT_FALSE(try_read()) << "read the first " << n << " bytes";
    }
    // Corrupt one header byte at a time in place (rewriting whole files is slow on some disks).
    file_with("corrupt.npy", kFortran);
    std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
    for (size_t i = 0; i < 128; i++) {
        for (const char c : {'\0', '\xff', '9', '-', ',', ')', '}', '\'', ' ', 'L'}) {
            file.seekp(std::streamoff(i)).put(c).flush();
            try_read();
        }
        file.seekp(std::streamoff(i)).put(kFortran[i]).flush();
    }
}

TEST(Npy, FailedWriteLeavesTheOldFile) {
    const std::string path = temp_file("keep.npy");
    write_npy(path, Tensor({2}));
    const std::string before = read_bytes(path);
    // A directory where the temporary file would go makes the write fail.
    ASSERT_EQ(mkdir((path + ".tmp").c_str(), 0755), 0);
    try {
        write_npy(path, Tensor({3}));
        ADD_FAILURE() << "write succeeded";
    } catch (const NpyError &e) {
        EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
    }
    rmdir((path + ".tmp").c_str());
    EXPECT_EQ(read_bytes(path), before);
    EXPECT_THROW(write_npy(temp_file("no_such_dir/x.npy"), Tensor({2})), NpyError);
    EXPECT_THROW(write_npy(path, Tensor()), NpyError);
    EXPECT_THROW(write_npy(path, Shape{-1}, nullptr), NpyError);
}

}  // namespace
}  // namespace lowbit

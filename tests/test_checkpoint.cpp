// Checkpoint files: exact round trips (NaN payloads and -0.0 included), the documented layout, and
// damaged files (cut at every length, every byte flipped, crafted headers with a valid CRC), which
// must give a CheckpointError naming the file and never crash. Also the atomic writer under them.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "atomic_file.h"
#include "checkpoint.h"

namespace lowbit {
namespace {

using nlohmann::json;

class CheckpointTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string pattern = ::testing::TempDir() + "lowbit_checkpoint_XXXXXX";
        ASSERT_NE(mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
        dir_ = pattern;
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }

    std::string file(const std::string &name) const { return dir_ + "/" + name; }

    std::string dir_;
};

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
}

bool exists(const std::string &path) { return ::access(path.c_str(), F_OK) == 0; }

float from_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

uint64_t le(const std::string &bytes, size_t at, size_t width) {
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++) v |= uint64_t(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
    return v;
}

void append_le(std::string &out, uint64_t value, size_t width) {
    for (size_t i = 0; i < width; i++) out += char((value >> (8 * i)) & 0xff);
}

void append_crc(std::string &bytes) {
    const uLong crc = crc32(0, reinterpret_cast<const Bytef *>(bytes.data()), uInt(bytes.size()));
    append_le(bytes, crc, 4);
}

// A file as the format describes it, from a header text and data of our choosing, with a valid CRC:
// for headers the writer would never produce. `header_length` overrides the length field.
std::string craft(const std::string &header, const std::string &data, uint64_t header_length = ~uint64_t(0)) {
    std::string out("LOWBITCK", 8);
    append_le(out, 1, 4);
    append_le(out, header_length == ~uint64_t(0) ? header.size() : header_length, 8);
    out += header;
    out.resize((out.size() + 63) / 64 * 64, '\0');
    out += data;
    append_crc(out);
    return out;
}

std::string float_bytes(std::initializer_list<float> values) {
    std::string out;
    for (const float v : values) out.append(reinterpret_cast<const char *>(&v), sizeof v);
    return out;
}

// Loading `path` throws a CheckpointError starting with "PATH: " and containing `expected`.
void expect_load_error(const std::string &path, const std::string &expected) {
    try {
        load_checkpoint(path);
        ADD_FAILURE() << "loaded " << path << ", expected an error containing '" << expected << "'";
    } catch (const CheckpointError &e) {
        const std::string what = e.what();
        EXPECT_EQ(what.rfind(path + ": ", 0), 0u) << what;
        EXPECT_NE(what.find(expected), std::string::npos) << what << "\nexpected: " << expected;
    }
}

Checkpoint small_checkpoint() {
    Checkpoint c;
    c.meta = {{"epoch", 3}, {"step", 1234}};
    c.arrays["bias"] = {0.5f, -1.0f};
    c.arrays["weight"] = {1.0f, 2.0f, 3.0f};
    return c;
}

void expect_same_bits(const std::vector<float> &got, const std::vector<float> &want, const std::string &name) {
    ASSERT_EQ(got.size(), want.size()) << name;
    for (size_t i = 0; i < want.size(); i++) {
        uint32_t g, w;
        std::memcpy(&g, &got[i], 4);
        std::memcpy(&w, &want[i], 4);
        ASSERT_EQ(g, w) << name << "[" << i << "]";
    }
}

TEST_F(CheckpointTest, RoundTripKeepsMetaAndEveryBit) {
    Checkpoint c;
    c.meta = {{"config", {{"format", "m3e0"}, {"lr", 0.1}, {"layers", {16, 32, 64}}}},
              {"epoch", 7},
              {"step", 123456789012345ull},
              {"name", "résumé \"quoted\"\n"},
              {"done", false}};
    c.arrays["empty"] = {};
    c.arrays["one"] = {42.5f};
    std::vector<float> big(100000);
    for (size_t i = 0; i < big.size(); i++) big[i] = std::sin(float(i)) * 1e3f;
    c.arrays["big"] = big;
    c.arrays["special"] = {from_bits(0x7fc00000),  // quiet NaN
                           from_bits(0xffc00001),  // negative NaN with a payload
                           from_bits(0x7f800001),  // signalling NaN
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           -0.0f,
                           0.0f,
                           std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::max(),
                           std::numeric_limits<float>::lowest()};
    c.arrays["a name with spaces/and.dots"] = {1.0f, 2.0f};
    const std::string path = file("round.ckpt");
    save_checkpoint(path, c);
    EXPECT_FALSE(exists(path + ".tmp"));

    const Checkpoint back = load_checkpoint(path);
    EXPECT_EQ(back.meta, c.meta) << back.meta.dump();
    ASSERT_EQ(back.arrays.size(), c.arrays.size());
    for (const auto &[name, values] : c.arrays) {
        ASSERT_EQ(back.arrays.count(name), 1u) << name;
        expect_same_bits(back.arrays.at(name), values, name);
    }
}

TEST_F(CheckpointTest, EmptyCheckpointRoundTrips) {
    const std::string path = file("empty.ckpt");
    save_checkpoint(path, Checkpoint{});
    const Checkpoint back = load_checkpoint(path);
    EXPECT_TRUE(back.meta.is_null());
    EXPECT_TRUE(back.arrays.empty());
}

TEST_F(CheckpointTest, FileFollowsTheDocumentedLayout) {
    const std::string path = file("layout.ckpt");
    save_checkpoint(path, small_checkpoint());
    const std::string bytes = read_bytes(path);
    ASSERT_GE(bytes.size(), 68u);
    EXPECT_EQ(bytes.substr(0, 8), "LOWBITCK");
    EXPECT_EQ(le(bytes, 8, 4), 1u);
    const uint64_t header_length = le(bytes, 12, 8);
    ASSERT_LE(20 + header_length, bytes.size());
    const json header = json::parse(bytes.substr(20, header_length));
    EXPECT_EQ(header["meta"], small_checkpoint().meta);
    const json arrays = json::array(
        {{{"name", "bias"}, {"count", 2}, {"offset", 0}}, {{"name", "weight"}, {"count", 3}, {"offset", 8}}});
    EXPECT_EQ(header["arrays"], arrays) << header.dump();
    const size_t data_start = (20 + header_length + 63) / 64 * 64;
    for (size_t i = 20 + header_length; i < data_start; i++) EXPECT_EQ(bytes[i], '\0') << "padding byte " << i;
    ASSERT_EQ(bytes.size(), data_start + 5 * 4 + 4);
    EXPECT_EQ(bytes.substr(data_start, 20), float_bytes({0.5f, -1.0f, 1.0f, 2.0f, 3.0f}));
    std::string body = bytes.substr(0, bytes.size() - 4);
    append_crc(body);
    EXPECT_EQ(body, bytes) << "trailing CRC-32";
    // The test's own crafting helper writes what the writer writes, so crafted files test the reader.
    EXPECT_EQ(craft(bytes.substr(20, header_length), float_bytes({0.5f, -1.0f, 1.0f, 2.0f, 3.0f})), bytes);
}

TEST_F(CheckpointTest, MissingFileNamesTheOsError) {
    expect_load_error(file("missing.ckpt"), "cannot open: No such file or directory");
    expect_load_error(dir_, "cannot read");  // a directory
}

TEST_F(CheckpointTest, OtherFilesAreNotCheckpoints) {
    const std::string path = file("other");
    write_bytes(path, "\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
    expect_load_error(path, "not a lowbit checkpoint (bad magic)");
    write_bytes(path, "LOWBITCX");
    expect_load_error(path, "not a lowbit checkpoint (bad magic)");
    write_bytes(path, "X");
    expect_load_error(path, "not a lowbit checkpoint (bad magic)");
}

TEST_F(CheckpointTest, OtherVersionsAreRefused) {
    const std::string path = file("version.ckpt");
    save_checkpoint(path, small_checkpoint());
    std::string bytes = read_bytes(path);
    bytes[8] = 2;
    write_bytes(path, bytes);
    expect_load_error(path, "unsupported version 2");
    bytes[8] = 0;
    bytes[11] = char(0x80);
    write_bytes(path, bytes);
    expect_load_error(path, "unsupported version 2147483648");
}

TEST_F(CheckpointTest, EveryTruncationIsRefused) {
    const std::string path = file("whole.ckpt"), cut = file("cut.ckpt");
    save_checkpoint(path, small_checkpoint());
    const std::string bytes = read_bytes(path);
    const size_t data_start = (20 + le(bytes, 12, 8) + 63) / 64 * 64;
    for (size_t size = 0; size < bytes.size(); size++) {
        SCOPED_TRACE("cut to " + std::to_string(size) + " bytes");
        write_bytes(cut, bytes.substr(0, size));
        const std::string has = ", file has " + std::to_string(size) + ")";
        // Once the header is whole, the reader knows the exact size.
        expect_load_error(cut, size >= data_start + 4
                                   ? "truncated (expected " + std::to_string(bytes.size()) + " bytes" + has
                                   : "truncated (expected at least ");
        expect_load_error(cut, has);
    }
}

TEST_F(CheckpointTest, EveryFlippedByteIsRefused) {
    const std::string path = file("whole.ckpt"), bad = file("flipped.ckpt");
    save_checkpoint(path, small_checkpoint());
    const std::string bytes = read_bytes(path);
    const size_t header_end = 20 + le(bytes, 12, 8);
    for (size_t i = 0; i < bytes.size(); i++) {
        for (const unsigned char mask : {0x01, 0x80, 0xff}) {
            SCOPED_TRACE("byte " + std::to_string(i) + " ^ " + std::to_string(mask));
            std::string flipped = bytes;
            flipped[i] = char(flipped[i] ^ mask);
            write_bytes(bad, flipped);
            if (i < 8) {
                expect_load_error(bad, "bad magic");
            } else if (i < 12) {
                expect_load_error(bad, "unsupported version");
            } else if (i < header_end) {
                // A damaged length or count may make the file look cut off; either way it is refused.
                try {
                    load_checkpoint(bad);
                    ADD_FAILURE() << "loaded";
                } catch (const CheckpointError &e) {
                    const std::string what = e.what();
                    EXPECT_EQ(what.rfind(bad + ": ", 0), 0u) << what;
                    EXPECT_TRUE(what.find("checksum mismatch (corrupt)") != std::string::npos ||
                                what.find("truncated") != std::string::npos)
                        << what;
                }
            } else {
                expect_load_error(bad, "checksum mismatch (corrupt)");  // padding, data, the CRC itself
            }
        }
    }
}

TEST_F(CheckpointTest, CraftedHeadersWithValidCrcAreChecked) {
    const std::string path = file("crafted.ckpt");
    const std::string two = float_bytes({1.0f, 2.0f});
    auto expect_refused = [&](const std::string &header, const std::string &data, const std::string &expected) {
        SCOPED_TRACE(header);
        write_bytes(path, craft(header, data));
        expect_load_error(path, "malformed header: ");
        expect_load_error(path, expected);
    };
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":3,"offset":0}]})", two, "runs past the data (8 bytes)");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":1,"offset":8}]})", two, "runs past the data");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":0,"offset":9}]})", two, "runs past the data");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":18446744073709551615,"offset":0}]})", two,
                   "runs past the data");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":1,"offset":18446744073709551615}]})", two,
                   "runs past the data");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":4611686018427387904,"offset":4}]})", two,
                   "runs past the data");
    expect_refused(R"({"meta":{},"arrays":[{"name":"a","count":2,"offset":0},{"name":"b","count":1,"offset":4}]})", two,
                   "arrays \"a\" and \"b\" overlap");
    expect_refused(R"({"meta":{},"arrays":[{"name":"a","count":1,"offset":0},{"name":"a","count":1,"offset":4}]})", two,
                   "array \"a\" given twice");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":-1,"offset":0}]})", two, "'count'");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":1.0,"offset":0}]})", two, "'count'");
    expect_refused(R"({"meta":{},"arrays":[{"name":"w","count":1}]})", two, "'offset'");
    expect_refused(R"({"meta":{},"arrays":[{"count":1,"offset":0}]})", two, "'name'");
    expect_refused(R"({"meta":{},"arrays":[{"name":7,"count":1,"offset":0}]})", two, "'name'");
    expect_refused(R"({"meta":{},"arrays":[7]})", two, "not a JSON object");
    expect_refused(R"({"meta":{},"arrays":{}})", two, "no 'arrays' list");
    expect_refused(R"({"arrays":[]})", two, "no 'meta'");
    expect_refused(R"([1, 2])", two, "not a JSON object");
    expect_refused(R"({"meta":{},"arrays":[)", two, "parse error");
    expect_refused("", two, "parse error");
    expect_refused("{\"meta\":\"\xff\",\"arrays\":[]}", two, "parse error");  // not UTF-8

    // A header length running past the end of an otherwise intact file.
    write_bytes(path, craft(R"({"meta":{},"arrays":[]})", two, 1000));
    expect_load_error(path, "malformed header: its length 1000 runs past the end of the file");
    write_bytes(path, craft(R"({"meta":{},"arrays":[]})", two, ~uint64_t(0) - 10));
    expect_load_error(path, "malformed header: its length");

    // Gaps and any order of offsets are fine.
    write_bytes(path,
                craft(R"({"meta":5,"arrays":[{"name":"b","count":1,"offset":4},{"name":"a","count":0,"offset":8},)"
                      R"({"name":"c","count":1,"offset":0}]})",
                      float_bytes({1.0f, 2.0f, 3.0f})));
    const Checkpoint c = load_checkpoint(path);
    EXPECT_EQ(c.meta, json(5));
    EXPECT_EQ(c.arrays.at("a"), std::vector<float>{});
    EXPECT_EQ(c.arrays.at("b"), std::vector<float>{2.0f});
    EXPECT_EQ(c.arrays.at("c"), std::vector<float>{1.0f});
}

TEST_F(CheckpointTest, SavingOverAnExistingFileReplacesIt) {
    const std::string path = file("replace.ckpt");
    save_checkpoint(path, small_checkpoint());
    Checkpoint next;
    next.meta = {{"epoch", 4}};
    next.arrays["weight"] = {9.0f};
    save_checkpoint(path, next);
    const Checkpoint back = load_checkpoint(path);
    EXPECT_EQ(back.meta, next.meta);
    EXPECT_EQ(back.arrays, next.arrays);
    EXPECT_FALSE(exists(path + ".tmp"));
}

TEST_F(CheckpointTest, FailedSaveLeavesTheOldFile) {
    const std::string path = file("keep.ckpt");
    save_checkpoint(path, small_checkpoint());
    const std::string before = read_bytes(path);
    Checkpoint next;
    next.arrays["x"] = {1.0f};

    // A directory where the temporary would go.
    ASSERT_EQ(mkdir((path + ".tmp").c_str(), 0755), 0);
    try {
        save_checkpoint(path, next);
        ADD_FAILURE() << "saved";
    } catch (const CheckpointError &e) {
        EXPECT_EQ(std::string(e.what()), path + ": cannot create " + path + ".tmp: Is a directory");
    }
    ASSERT_EQ(rmdir((path + ".tmp").c_str()), 0);
    EXPECT_EQ(read_bytes(path), before);

    // Meta that JSON cannot hold: refused before anything is written.
    Checkpoint bad_meta = next;
    bad_meta.meta = {{"name", "\xff"}};
    try {
        save_checkpoint(path, bad_meta);
        ADD_FAILURE() << "saved";
    } catch (const CheckpointError &e) {
        EXPECT_EQ(std::string(e.what()).rfind(path + ": cannot save: ", 0), 0u) << e.what();
    }
    EXPECT_EQ(read_bytes(path), before);
    EXPECT_FALSE(exists(path + ".tmp"));

    // A directory that does not exist.
    const std::string nowhere = file("no_such_dir/x.ckpt");
    try {
        save_checkpoint(nowhere, next);
        ADD_FAILURE() << "saved";
    } catch (const CheckpointError &e) {
        EXPECT_EQ(std::string(e.what()), nowhere + ": cannot create " + nowhere + ".tmp: No such file or directory");
    }

    // The path is a directory: the temporary is written, then the rename fails and it is removed.
    const std::string directory = file("a_directory");
    ASSERT_EQ(mkdir(directory.c_str(), 0755), 0);
    try {
        save_checkpoint(directory, next);
        ADD_FAILURE() << "saved";
    } catch (const CheckpointError &e) {
        EXPECT_EQ(std::string(e.what()), directory + ": cannot write: Is a directory");
    }
    EXPECT_FALSE(exists(directory + ".tmp"));
    struct stat st;
    ASSERT_EQ(stat(directory.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
}

TEST_F(CheckpointTest, AtomicWriteConcatenatesParts) {
    const std::string path = file("parts.bin");
    const std::string a = "hello, ", b = "world";
    write_file_atomically(path, {{a.data(), a.size()}, {nullptr, 0}, {b.data(), b.size()}});
    EXPECT_EQ(read_bytes(path), "hello, world");
    write_file_atomically(path, std::vector<ByteSpan>{{b.data(), b.size()}});
    EXPECT_EQ(read_bytes(path), "world");
    write_file_atomically(path, {});
    EXPECT_EQ(read_bytes(path), "");
    EXPECT_FALSE(exists(path + ".tmp"));
    // A relative path: the directory synced is the current one.
    const std::string cwd = std::filesystem::current_path();
    ASSERT_EQ(chdir(dir_.c_str()), 0);
    EXPECT_NO_THROW(write_file_atomically("relative.bin", {{a.data(), a.size()}}));
    ASSERT_EQ(chdir(cwd.c_str()), 0);
    EXPECT_EQ(read_bytes(file("relative.bin")), a);
    try {
        write_file_atomically(file("missing/x"), {{a.data(), a.size()}});
        ADD_FAILURE() << "written";
    } catch (const std::runtime_error &e) {
        EXPECT_EQ(std::string(e.what()).rfind(file("missing/x") + ": ", 0), 0u) << e.what();
        EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace lowbit

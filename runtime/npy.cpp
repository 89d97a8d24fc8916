#include "npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string_view>

#include "atomic_file.h"

namespace lowbit {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// Real headers stay under 2 KiB (NumPy itself refuses over 10000 bytes unless told otherwise);
// the cap bounds the work a hostile file can cause.
constexpr size_t kMaxHeaderLen = 1 << 20;
// NumPy's own limit (NPY_MAXDIMS: 32 in NumPy 1.x, 64 in 2.x).
constexpr size_t kMaxRank = 64;
// No dtype string is longer; a longer one is garbage, not worth quoting in a message.
constexpr size_t kMaxStringLen = 64;

[[noreturn]] void fail(const std::string &path, const std::string &what) {
    throw NpyError(fmt::format("{}: {}", path, what));
}

// The file, with its read errors as NpyErrors.
std::string read_file(const std::string &path) {
    try {
        return read_whole_file(path);
    } catch (const std::runtime_error &e) {
        throw NpyError(e.what());
    }
}

struct Header {
    std::string descr;
    bool fortran_order = false;
    Shape shape;
    size_t data_offset = 0;  // from the start of the file
};

// The header dictionary, e.g. "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }":
// just the Python literals NumPy writes there (quoted strings, True/False, a tuple of
// non-negative integers), keys in any order, optional whitespace and trailing commas. Every
// access is bounds-checked, for hostile files.
class DictParser {
public:
    DictParser(const std::string &path, std::string_view text) : path_(path), text_(text) {}

    Header parse() {
        Header h;
        bool seen_descr = false, seen_order = false, seen_shape = false;
        expect('{', "at the start of the header");
        while (!eat('}')) {
            const std::string key = quoted("a key");
            expect(':', fmt::format("after '{}'", key));
            if (key == "descr") {
                once(seen_descr, key);
                h.descr = quoted("'descr' (structured dtypes are not supported)");
            } else if (key == "fortran_order") {
                once(seen_order, key);
                h.fortran_order = boolean();
            } else if (key == "shape") {
                once(seen_shape, key);
                h.shape = shape();
            } else {
                error(fmt::format("unexpected key '{}'", key));
            }
            if (!eat(',')) {
                expect('}', "after a value");
                break;
            }
        }
        skip_space();  // the padding
        if (pos_ != text_.size()) error("text after the dictionary");
        if (!seen_descr || !seen_order || !seen_shape)
            error(fmt::format("no '{}' key", !seen_descr ? "descr" : !seen_order ? "fortran_order" : "shape"));
        return h;
    }

private:
    [[noreturn]] void error(const std::string &what) const { fail(path_, "malformed header: " + what); }

    void skip_space() {
        while (pos_ < text_.size() &&
               (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
            pos_++;
    }
    bool at(char c) {
        skip_space();
        return pos_ < text_.size() && text_[pos_] == c;
    }
    bool eat(char c) {
        if (!at(c)) return false;
        pos_++;
        return true;
    }
    void expect(char c, const std::string &where) {
        if (!eat(c)) error(fmt::format("expected '{}' {}", c, where));
    }
    void once(bool &seen, const std::string &key) {
        if (seen) error(fmt::format("'{}' given twice", key));
        seen = true;
    }

    // A quoted string without escapes: NumPy's keys and dtype strings never need any.
    std::string quoted(const std::string &what) {
        if (!at('\'') && !at('"')) error("expected a quoted string for " + what);
        const char quote = text_[pos_++];
        std::string s;
        for (; pos_ < text_.size() && text_[pos_] != quote; pos_++) {
            const char c = text_[pos_];
            if (c < 0x20 || c > 0x7e) error("unprintable character in a string");
            if (s.size() == kMaxStringLen) error(fmt::format("string longer than {} characters", kMaxStringLen));
            s += c;
        }
        if (pos_ == text_.size()) error("unterminated string");
        pos_++;
        return s;
    }

    bool boolean() {
        skip_space();
        for (const bool value : {true, false}) {
            const std::string_view word = value ? "True" : "False";
            if (text_.substr(pos_, word.size()) == word) {
                pos_ += word.size();
                return value;
            }
        }
        error("'fortran_order' is neither True nor False");
    }

    // "()", "(3,)", "(2, 3)", "(2, 3,)"; also "(3)", which Python reads as a plain 3.
    Shape shape() {
        expect('(', "for 'shape'");
        Shape s;
        while (!eat(')')) {
            if (s.size() == kMaxRank) error(fmt::format("more than {} dimensions", kMaxRank));
            s.push_back(extent());
            if (!eat(',')) {
                expect(')', "after an extent in 'shape'");
                break;
            }
        }
        return s;
    }

    int64_t extent() {
        if (at('-')) error("negative extent in 'shape'");
        if (pos_ == text_.size() || !std::isdigit(static_cast<unsigned char>(text_[pos_])))
            error("expected an integer in 'shape'");
        int64_t value = 0;
        for (; pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_])); pos_++) {
            const int digit = text_[pos_] - '0';
            if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) error("extent in 'shape' overflows");
            value = value * 10 + digit;
        }
        if (pos_ < text_.size() && text_[pos_] == 'L') pos_++;  // Python 2 long, as in "(3L,)"
        return value;
    }

    const std::string &path_;
    std::string_view text_;
    size_t pos_ = 0;
};

Header parse_header(const std::string &path, const std::string &bytes) {
    if (bytes.size() < kMagicLen || bytes.compare(0, kMagicLen, kMagic) != 0) fail(path, "not a .npy file (bad magic)");
    if (bytes.size() < kMagicLen + 2) fail(path, "truncated header: no format version");
    const unsigned major = static_cast<unsigned char>(bytes[6]), minor = static_cast<unsigned char>(bytes[7]);
    if (major < 1 || major > 3 || minor != 0)
        fail(path, fmt::format(".npy format version {}.{} not supported (only 1.0, 2.0, 3.0)", major, minor));
    // Little-endian header length: 2 bytes in version 1.0, 4 since.
    const size_t len_bytes = major == 1 ? 2 : 4;
    const size_t prefix = kMagicLen + 2 + len_bytes;
    if (bytes.size() < prefix) fail(path, "truncated header: no header length");
    size_t header_len = 0;
    for (size_t i = 0; i < len_bytes; i++)
        header_len |= size_t(static_cast<unsigned char>(bytes[kMagicLen + 2 + i])) << (8 * i);
    if (header_len > kMaxHeaderLen)
        fail(path, fmt::format("malformed header: {} bytes long, more than the {} allowed", header_len, kMaxHeaderLen));
    if (bytes.size() - prefix < header_len)
        fail(path,
             fmt::format("truncated header: {} bytes announced, file holds {}", header_len, bytes.size() - prefix));
    Header h = DictParser(path, std::string_view(bytes).substr(prefix, header_len)).parse();
    h.data_offset = prefix + header_len;
    return h;
}

void check_dtype(const std::string &path, const Header &h, const char *descr, const char *name) {
    if (h.descr == descr) return;
    fail(path, fmt::format("dtype '{}'{} not supported, expected {} ('{}')", h.descr,
                           h.descr.size() > 0 && h.descr[0] == '>' ? " (big-endian)" : "", name, descr));
}

// The element count of `h`, checked against the bytes the file holds. Shapes whose nonzero
// extents multiply past any possible file size are refused even when another extent is 0, so
// stride arithmetic on them cannot overflow later.
int64_t checked_count(const std::string &path, const std::string &bytes, const Header &h, size_t elem) {
    const int64_t limit = std::numeric_limits<int64_t>::max() / int64_t(elem);
    int64_t count = 1, bound = 1;
    for (const int64_t extent : h.shape) {
        const int64_t e = std::max<int64_t>(extent, 1);
        if (e > limit / bound) fail(path, fmt::format("shape {} has too many elements", shape_string(h.shape)));
        bound *= e;
        count *= extent;
    }
    const uint64_t need = uint64_t(count) * elem, have = bytes.size() - h.data_offset;
    if (have < need)
        fail(path, fmt::format("truncated: header says {} elements ({} bytes), file holds {}", count, need, have));
    return count;
}

// Copies `count` elements of `elem` bytes from the file's payload to `dst` in row-major order.
void copy_row_major(const std::string &bytes, const Header &h, int64_t count, size_t elem, void *dst) {
    const char *src = bytes.data() + h.data_offset;
    char *out = static_cast<char *>(dst);
    const size_t rank = h.shape.size();
    if (!h.fortran_order || rank < 2 || count == 0) {
        if (count > 0) std::memcpy(out, src, size_t(count) * elem);
        return;
    }
    // Fortran order: the first index varies fastest. Walk the row-major index, keeping the
    // Fortran offset of the element in step (no overflow: every extent is >= 1 here).
    std::vector<int64_t> index(rank, 0), stride(rank);
    int64_t s = 1;
    for (size_t d = 0; d < rank; d++) {
        stride[d] = s;
        s *= h.shape[d];
    }
    int64_t offset = 0;
    for (int64_t flat = 0; flat < count; flat++) {
        std::memcpy(out + size_t(flat) * elem, src + size_t(offset) * elem, elem);
        for (size_t d = rank; d-- > 0;) {
            offset += stride[d];
            if (++index[d] < h.shape[d]) break;
            offset -= stride[d] * h.shape[d];
            index[d] = 0;
        }
    }
}

// The header np.save writes for a C-order array, byte for byte: the dictionary with its keys
// sorted, spaces that leave room for axis 0 to grow to 21 digits in place, then spaces and '\n'
// up to a multiple of 64 bytes (NumPy always pads by at least one space).
std::string npy_header(const char *descr, const Shape &shape) {
    std::string dims;
    for (size_t d = 0; d < shape.size(); d++) dims += fmt::format(d == 0 ? "{}" : ", {}", shape[d]);
    if (shape.size() == 1) dims += ',';  // a 1-tuple in Python: "(3,)"
    std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
    if (!shape.empty()) dict.append(21 - std::min<size_t>(21, fmt::formatted_size("{}", shape[0])), ' ');
    // Version 1.0 stores the header length in 2 bytes; only a longer header needs 2.0 (4 bytes).
    size_t prefix = kMagicLen + 2 + 2;
    auto padded = [&] { return dict.size() + 1 + 64 - (prefix + dict.size() + 1) % 64; };
    const bool v2 = padded() > 0xffff;
    if (v2) prefix += 2;
    const size_t header_len = padded();
    std::string out(kMagic, kMagicLen);
    out += char(v2 ? 2 : 1);
    out += '\0';
    for (size_t i = 0; i < prefix - kMagicLen - 2; i++) out += char((header_len >> (8 * i)) & 0xff);
    out += dict;
    out.append(header_len - dict.size() - 1, ' ');
    out += '\n';
    return out;
}

// The header and the data, atomically (see atomic_file.h), failing with an NpyError: the
// writer's message already starts with the path.
void write_npy_file(const std::string &path, const std::string &header, const void *data, size_t bytes) {
    try {
        write_file_atomically(path, {{header.data(), header.size()}, {data, bytes}});
    } catch (const std::runtime_error &e) {
        throw NpyError(e.what());
    }
}

}  // namespace

Tensor read_npy(const std::string &path) {
    const std::string bytes = read_file(path);
    const Header h = parse_header(path, bytes);
    check_dtype(path, h, "<f4", "float32");
    const int64_t count = checked_count(path, bytes, h, sizeof(float));
    Tensor t = Tensor::uninitialized(h.shape);
    copy_row_major(bytes, h, count, sizeof(float), t.data());
    return t;
}

Int8Array read_npy_int8(const std::string &path) {
    const std::string bytes = read_file(path);
    const Header h = parse_header(path, bytes);
    check_dtype(path, h, "|i1", "int8");
    const int64_t count = checked_count(path, bytes, h, 1);
    Int8Array a{h.shape, std::vector<int8_t>(size_t(count))};
    copy_row_major(bytes, h, count, 1, a.data.data());
    return a;
}

void write_npy(const std::string &path, const Tensor &tensor) {
    // A default-constructed Tensor has rank 0 but no element; a rank-0 file must hold one.
    if (tensor.rank() == 0 && tensor.numel() == 0) fail(path, "cannot write an empty (default-constructed) Tensor");
    const Tensor t = tensor.contiguous();
    write_npy_file(path, npy_header("<f4", t.shape()), t.data(), size_t(t.numel()) * sizeof(float));
}

void write_npy(const std::string &path, const Shape &shape, const int8_t *data) {
    int64_t count = 0;
    try {
        count = shape_numel(shape);
    } catch (const std::invalid_argument &e) {
        fail(path, e.what());
    }
    if (data == nullptr && count > 0) fail(path, "null data");
    write_npy_file(path, npy_header("|i1", shape), data, size_t(count));
}

}  // namespace lowbit

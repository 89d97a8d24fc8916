#include "npy.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

namespace lowbit {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMaxHeader = 1 << 20;  // far beyond any real header; bounds hostile input

struct Header {
    std::string descr;
    bool fortran_order = false;
    Shape shape;
    size_t data_offset = 0;
};

[[noreturn]] void fail(const std::string &path, const std::string &what) {
    throw NpyError(fmt::format("{}: {}", path, what));
}

std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, fmt::format("cannot open: {}", std::strerror(errno)));
    std::ostringstream s;
    s << in.rdbuf();
    if (in.bad()) fail(path, "read error");
    return s.str();
}

// The value text after `'key':` in the header dictionary, up to the matching delimiter.
std::string dict_value(const std::string &path, const std::string &dict, const std::string &key) {
    size_t pos = dict.find("'" + key + "'");
    if (pos == std::string::npos) fail(path, fmt::format("malformed header: no '{}' key", key));
    pos = dict.find(':', pos);
    if (pos == std::string::npos) fail(path, fmt::format("malformed header: no value for '{}'", key));
    pos++;
    while (pos < dict.size() && dict[pos] == ' ') pos++;
    if (pos >= dict.size()) fail(path, fmt::format("malformed header: no value for '{}'", key));
    const char open = dict[pos];
    if (open == '\'' || open == '"') {
        const size_t end = dict.find(open, pos + 1);
        if (end == std::string::npos) fail(path, "malformed header: unterminated string");
        return dict.substr(pos + 1, end - pos - 1);
    }
    if (open == '(') {
        const size_t end = dict.find(')', pos);
        if (end == std::string::npos) fail(path, "malformed header: unterminated shape tuple");
        return dict.substr(pos + 1, end - pos - 1);
    }
    size_t end = pos;
    while (end < dict.size() && dict[end] != ',' && dict[end] != '}') end++;
    std::string v = dict.substr(pos, end - pos);
    while (!v.empty() && v.back() == ' ') v.pop_back();
    return v;
}

Header parse_header(const std::string &path, const std::string &bytes) {
    if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) fail(path, "not a .npy file (bad magic)");
    const int major = static_cast<unsigned char>(bytes[6]);
    size_t header_len, offset;
    if (major == 1) {
        header_len = size_t(static_cast<unsigned char>(bytes[8])) | size_t(static_cast<unsigned char>(bytes[9])) << 8;
        offset = 10;
    } else if (major == 2 || major == 3) {
        if (bytes.size() < 12) fail(path, "truncated header");
        header_len = 0;
        for (int i = 0; i < 4; i++) header_len |= size_t(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
        offset = 12;
    } else {
        fail(path, fmt::format(".npy format version {} not supported", major));
    }
    if (header_len > kMaxHeader) fail(path, fmt::format("malformed header: length {} is implausible", header_len));
    if (bytes.size() < offset + header_len)
        fail(path, fmt::format("truncated header: {} bytes announced, {} present", header_len, bytes.size() - offset));
    const std::string dict = bytes.substr(offset, header_len);
    if (dict.find('{') == std::string::npos) fail(path, "malformed header: no dictionary");

    Header h;
    h.data_offset = offset + header_len;
    h.descr = dict_value(path, dict, "descr");
    const std::string order = dict_value(path, dict, "fortran_order");
    if (order == "True")
        h.fortran_order = true;
    else if (order != "False")
        fail(path, fmt::format("malformed header: fortran_order '{}'", order));
    const std::string shape = dict_value(path, dict, "shape");
    size_t pos = 0;
    while (pos < shape.size()) {
        while (pos < shape.size() && (shape[pos] == ' ' || shape[pos] == ',')) pos++;
        if (pos >= shape.size()) break;
        if (!std::isdigit(static_cast<unsigned char>(shape[pos])))
            fail(path, fmt::format("malformed header: shape '({})'", shape));
        int64_t extent = 0;
        while (pos < shape.size() && std::isdigit(static_cast<unsigned char>(shape[pos]))) {
            if (extent > (std::numeric_limits<int64_t>::max() - 9) / 10)
                fail(path, "malformed header: extent overflows");
            extent = extent * 10 + (shape[pos++] - '0');
        }
        if (pos < shape.size() && shape[pos] == 'L') pos++;  // Python 2 longs
        h.shape.push_back(extent);
        if (h.shape.size() > 32) fail(path, "malformed header: more than 32 dimensions");
    }
    return h;
}

// Payload of `count` elements of `size` bytes, converted from Fortran order if needed.
std::vector<char> payload(const std::string &path, const std::string &bytes, const Header &h, size_t size) {
    int64_t count;
    try {
        count = shape_numel(h.shape);
    } catch (const std::invalid_argument &) {
        fail(path, fmt::format("shape {} has too many elements", shape_string(h.shape)));
    }
    if (uint64_t(count) > (std::numeric_limits<uint64_t>::max() / size))
        fail(path, fmt::format("shape {} has too many elements", shape_string(h.shape)));
    const uint64_t need = uint64_t(count) * size;
    const uint64_t have = bytes.size() - h.data_offset;
    if (have < need)
        fail(path, fmt::format("truncated: header says {} elements ({} bytes), file holds {}", count, need, have));
    std::vector<char> data(bytes.begin() + long(h.data_offset), bytes.begin() + long(h.data_offset + need));
    if (!h.fortran_order || h.shape.size() < 2) return data;
    // Fortran order: the first index runs fastest. Walk the C-order index and gather.
    std::vector<char> c_order(data.size());
    const size_t rank = h.shape.size();
    std::vector<int64_t> index(rank, 0), f_stride(rank, 1);
    for (size_t d = 1; d < rank; d++) f_stride[d] = f_stride[d - 1] * h.shape[d - 1];
    for (int64_t flat = 0; flat < count; flat++) {
        int64_t src = 0;
        for (size_t d = 0; d < rank; d++) src += index[d] * f_stride[d];
        std::memcpy(&c_order[size_t(flat) * size], &data[size_t(src) * size], size);
        for (size_t d = rank; d-- > 0;) {
            if (++index[d] < h.shape[d]) break;
            index[d] = 0;
        }
    }
    return c_order;
}

std::string dtype_error(const std::string &descr, const char *expected) {
    return fmt::format("dtype '{}' not supported, expected {}", descr, expected);
}

std::string header_for(const char *descr, const Shape &shape) {
    std::string dims;
    for (int64_t d : shape) dims += fmt::format("{}, ", d);
    if (shape.size() > 1)
        dims.resize(dims.size() - 2);  // (3,) keeps its comma
    else if (shape.empty())
        dims.clear();
    else
        dims.pop_back();
    std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
    // Magic, version, length, dictionary, padded with spaces to a multiple of 64, then '\n'.
    const bool v2 = dict.size() + 11 > 65535;
    const size_t prefix = v2 ? 12 : 10;
    const size_t total = ((prefix + dict.size() + 1 + 63) / 64) * 64;
    dict.append(total - prefix - dict.size() - 1, ' ');
    dict.push_back('\n');
    std::string out(kMagic, 6);
    out.push_back(char(v2 ? 2 : 1));
    out.push_back(0);
    const size_t len = dict.size();
    for (size_t i = 0; i < (v2 ? 4u : 2u); i++) out.push_back(char((len >> (8 * i)) & 0xff));
    return out + dict;
}

void write_atomically(const std::string &path, const std::string &header, const void *data, size_t bytes) {
    const std::string tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail(path, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
    auto write_all = [&](const void *p, size_t n) {
        const char *c = static_cast<const char *>(p);
        while (n > 0) {
            const ssize_t w = ::write(fd, c, n);
            if (w < 0) {
                if (errno == EINTR) continue;
                const int err = errno;
                ::close(fd);
                ::unlink(tmp.c_str());
                fail(path, fmt::format("write error: {}", std::strerror(err)));
            }
            c += w;
            n -= size_t(w);
        }
    };
    write_all(header.data(), header.size());
    write_all(data, bytes);
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        ::unlink(tmp.c_str());
        fail(path, fmt::format("cannot flush: {}", std::strerror(errno)));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        fail(path, fmt::format("cannot rename {} into place: {}", tmp, std::strerror(err)));
    }
}

}  // namespace

Tensor read_npy(const std::string &path) {
    const std::string bytes = read_file(path);
    const Header h = parse_header(path, bytes);
    if (h.descr != "<f4") fail(path, dtype_error(h.descr, "float32 ('<f4')"));
    const std::vector<char> data = payload(path, bytes, h, sizeof(float));
    Tensor t = Tensor::uninitialized(h.shape);
    if (!data.empty()) std::memcpy(t.data(), data.data(), data.size());
    return t;
}

Int8Array read_npy_int8(const std::string &path) {
    const std::string bytes = read_file(path);
    const Header h = parse_header(path, bytes);
    if (h.descr != "|i1" && h.descr != "<i1") fail(path, dtype_error(h.descr, "int8 ('|i1')"));
    const std::vector<char> data = payload(path, bytes, h, 1);
    Int8Array a;
    a.shape = h.shape;
    a.data.resize(data.size());
    if (!data.empty()) std::memcpy(a.data.data(), data.data(), data.size());
    return a;
}

void write_npy(const std::string &path, const Tensor &tensor) {
    const Tensor t = tensor.contiguous();
    write_atomically(path, header_for("<f4", t.shape()), t.data(), size_t(t.numel()) * sizeof(float));
}

void write_npy(const std::string &path, const Shape &shape, const int8_t *data) {
    write_atomically(path, header_for("|i1", shape), data, size_t(shape_numel(shape)));
}

}  // namespace lowbit

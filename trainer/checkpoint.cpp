#include "checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>

#include "atomic_file.h"

namespace lowbit {

namespace {

using nlohmann::json;

// Array elements are copied to and from the file as they lie in memory, which is the file's
// little-endian order only on a little-endian host.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "checkpoints assume a little-endian host");

constexpr char kMagic[8] = {'L', 'O', 'W', 'B', 'I', 'T', 'C', 'K'};
constexpr uint32_t kVersion = 1;
constexpr size_t kVersionAt = 8, kHeaderLengthAt = 12, kHeaderAt = 20;
constexpr uint64_t kAlignment = 64;
constexpr size_t kCrcSize = 4;
// The smallest file that can be well-formed: the prefix padded to one alignment unit, then the CRC.
constexpr uint64_t kMinFileSize = kAlignment + kCrcSize;
// Array names quoted in messages are cut to this many bytes: a hostile name could be huge.
constexpr size_t kMaxQuotedName = 64;

[[noreturn]] void fail(const std::string &path, const std::string &what) { throw CheckpointError(path + ": " + what); }

[[noreturn]] void fail_truncated(const std::string &path, bool at_least, uint64_t expected, uint64_t size) {
    fail(path, "truncated (expected " + std::string(at_least ? "at least " : "") + std::to_string(expected) +
                   " bytes, file has " + std::to_string(size) + ")");
}

[[noreturn]] void fail_malformed(const std::string &path, const std::string &what) {
    fail(path, "malformed header: " + what);
}

std::string quoted_name(const std::string &name) {
    // The replace handler keeps dump() from throwing on a multi-byte character cut in half.
    return json(name.substr(0, kMaxQuotedName)).dump(-1, ' ', false, json::error_handler_t::replace);
}

uint64_t read_le(const std::string &bytes, size_t at, size_t width) {
    uint64_t value = 0;
    for (size_t i = 0; i < width; i++) value |= uint64_t(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
    return value;
}

void append_le(std::string &out, uint64_t value, size_t width) {
    for (size_t i = 0; i < width; i++) out += char((value >> (8 * i)) & 0xff);
}

uint32_t crc_update(uint32_t crc, const void *data, size_t size) {
    // zlib returns the initial value 0 for a null buffer, which would discard `crc`: an empty
    // vector's data() may be null.
    if (size == 0) return crc;
    // crc32_z takes a size_t length, so arrays over 4 GiB need no splitting.
    return uint32_t(crc32_z(crc, static_cast<const Bytef *>(data), size));
}

// Where the data section starts for a header of `header_length` bytes. No overflow: the callers
// have checked the length against the file size.
uint64_t data_start_for(uint64_t header_length) {
    const uint64_t end = kHeaderAt + header_length;
    return (end + kAlignment - 1) / kAlignment * kAlignment;
}

// The file, with its read errors as CheckpointErrors.
std::string read_file(const std::string &path) {
    try {
        return read_whole_file(path);
    } catch (const std::runtime_error &e) {
        throw CheckpointError(e.what());
    }
}

struct ArrayEntry {
    std::string name;
    uint64_t count = 0;
    uint64_t offset = 0;  // bytes from the start of the data section
};

struct Header {
    json meta;
    std::vector<ArrayEntry> arrays;
    uint64_t data_start = 0;  // bytes from the start of the file
};

uint64_t unsigned_field(const std::string &path, const json &entry, const char *key, size_t index) {
    const auto it = entry.find(key);
    if (it == entry.end() || !it->is_number_unsigned())
        fail_malformed(path, "array " + std::to_string(index) + " has no non-negative integer '" + key + "'");
    return it->get<uint64_t>();
}

// The JSON header's fields, checked for presence and type but not yet against the data section.
// The header must lie within `bytes`.
Header parse_header(const std::string &path, const std::string &bytes) {
    const uint64_t length = read_le(bytes, kHeaderLengthAt, 8);
    json j;
    try {
        j = json::parse(bytes.data() + kHeaderAt, bytes.data() + kHeaderAt + length);
    } catch (const json::exception &e) {
        fail_malformed(path, e.what());
    }
    if (!j.is_object()) fail_malformed(path, "not a JSON object");
    const auto meta = j.find("meta");
    if (meta == j.end()) fail_malformed(path, "no 'meta'");
    const auto arrays = j.find("arrays");
    if (arrays == j.end() || !arrays->is_array()) fail_malformed(path, "no 'arrays' list");
    Header h;
    h.meta = std::move(*meta);
    h.data_start = data_start_for(length);
    std::set<std::string> names;
    for (size_t i = 0; i < arrays->size(); i++) {
        const json &entry = (*arrays)[i];
        if (!entry.is_object()) fail_malformed(path, "array " + std::to_string(i) + " is not a JSON object");
        const auto name = entry.find("name");
        if (name == entry.end() || !name->is_string())
            fail_malformed(path, "array " + std::to_string(i) + " has no string 'name'");
        ArrayEntry a;
        a.name = name->get<std::string>();
        if (!names.insert(a.name).second) fail_malformed(path, "array " + quoted_name(a.name) + " given twice");
        a.count = unsigned_field(path, entry, "count", i);
        a.offset = unsigned_field(path, entry, "offset", i);
        h.arrays.push_back(std::move(a));
    }
    return h;
}

// Refuses arrays that run past the `data_size` bytes of the data section or share bytes. Gaps
// between arrays are harmless and allowed.
void check_arrays_fit(const std::string &path, const Header &h, uint64_t data_size) {
    for (const ArrayEntry &a : h.arrays) {
        // In this order, so that nothing overflows.
        if (a.offset > data_size || a.count > (data_size - a.offset) / sizeof(float))
            fail_malformed(path, "array " + quoted_name(a.name) + " (" + std::to_string(a.count) +
                                     " floats at offset " + std::to_string(a.offset) + ") runs past the data (" +
                                     std::to_string(data_size) + " bytes)");
    }
    std::vector<const ArrayEntry *> by_offset;
    for (const ArrayEntry &a : h.arrays)
        if (a.count > 0) by_offset.push_back(&a);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const ArrayEntry *a, const ArrayEntry *b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); i++) {
        const ArrayEntry &prev = *by_offset[i - 1], &next = *by_offset[i];
        if (next.offset < prev.offset + prev.count * sizeof(float))
            fail_malformed(path, "arrays " + quoted_name(prev.name) + " and " + quoted_name(next.name) + " overlap");
    }
}

// After a CRC mismatch: the size the (unverified) header asks for, when it asks for more than the
// file holds, so that a cut-off file is reported as such rather than as corrupt. 0 otherwise.
uint64_t size_wanted_by_damaged_header(const std::string &path, const std::string &bytes) {
    Header h;
    try {
        h = parse_header(path, bytes);
    } catch (const CheckpointError &) {
        return 0;
    }
    // Sizes past 2^62 are corruption, not truncation (and would overflow below).
    constexpr uint64_t kImplausible = uint64_t(1) << 62;
    uint64_t end = 0;
    for (const ArrayEntry &a : h.arrays) {
        if (a.count >= kImplausible / sizeof(float) || a.offset >= kImplausible) return 0;
        end = std::max(end, a.offset + a.count * sizeof(float));
    }
    const uint64_t wanted = h.data_start + end + kCrcSize;
    return wanted > bytes.size() ? wanted : 0;
}

}  // namespace

void save_checkpoint(const std::string &path, const Checkpoint &checkpoint) {
    json arrays = json::array();
    uint64_t offset = 0;
    for (const auto &[name, values] : checkpoint.arrays) {
        arrays.push_back({{"name", name}, {"count", values.size()}, {"offset", offset}});
        offset += values.size() * sizeof(float);
    }
    json header = json::object();
    header["meta"] = checkpoint.meta;
    header["arrays"] = std::move(arrays);
    std::string text;
    try {
        text = header.dump();
    } catch (const json::exception &e) {  // e.g. a string in meta or a name that is not UTF-8
        fail(path, std::string("cannot save: ") + e.what());
    }

    std::string prefix(kMagic, sizeof kMagic);
    append_le(prefix, kVersion, 4);
    append_le(prefix, text.size(), 8);
    prefix += text;
    prefix.resize(data_start_for(text.size()), '\0');

    std::vector<ByteSpan> parts{{prefix.data(), prefix.size()}};
    uint32_t crc = crc_update(0, prefix.data(), prefix.size());
    for (const auto &[name, values] : checkpoint.arrays) {
        parts.push_back({values.data(), values.size() * sizeof(float)});
        crc = crc_update(crc, values.data(), values.size() * sizeof(float));
    }
    std::string crc_bytes;
    append_le(crc_bytes, crc, kCrcSize);
    parts.push_back({crc_bytes.data(), crc_bytes.size()});
    try {
        write_file_atomically(path, parts);
    } catch (const std::runtime_error &e) {
        throw CheckpointError(e.what());  // already starts with the path
    }
}

Checkpoint load_checkpoint(const std::string &path) {
    const std::string bytes = read_file(path);
    const uint64_t size = bytes.size();
    // A prefix of the magic is a cut-off checkpoint, not some other file.
    if (std::memcmp(bytes.data(), kMagic, std::min<size_t>(size, sizeof kMagic)) != 0)
        fail(path, "not a lowbit checkpoint (bad magic)");
    if (size < kHeaderLengthAt) fail_truncated(path, true, kMinFileSize, size);
    const uint64_t version = read_le(bytes, kVersionAt, 4);
    if (version != kVersion) fail(path, "unsupported version " + std::to_string(version));
    if (size < kMinFileSize) fail_truncated(path, true, kMinFileSize, size);

    const uint64_t header_length = read_le(bytes, kHeaderLengthAt, 8);
    const bool header_fits =
        header_length <= size - kHeaderAt - kCrcSize && data_start_for(header_length) <= size - kCrcSize;
    const uint32_t stored_crc = uint32_t(read_le(bytes, size - kCrcSize, kCrcSize));
    if (crc_update(0, bytes.data(), size - kCrcSize) != stored_crc) {
        if (!header_fits) {
            // Most likely cut off inside the header; an absurd length is damage instead.
            if (header_length < (uint64_t(1) << 62))
                fail_truncated(path, true, data_start_for(header_length) + kCrcSize, size);
        } else if (const uint64_t wanted = size_wanted_by_damaged_header(path, bytes)) {
            fail_truncated(path, false, wanted, size);
        }
        fail(path, "checksum mismatch (corrupt)");
    }
    if (!header_fits)
        fail_malformed(path, "its length " + std::to_string(header_length) + " runs past the end of the file (" +
                                 std::to_string(size) + " bytes)");

    Header h = parse_header(path, bytes);
    check_arrays_fit(path, h, size - kCrcSize - h.data_start);
    Checkpoint c;
    c.meta = std::move(h.meta);
    for (const ArrayEntry &a : h.arrays) {
        std::vector<float> values(a.count);
        if (a.count > 0) std::memcpy(values.data(), bytes.data() + h.data_start + a.offset, a.count * sizeof(float));
        c.arrays.emplace(a.name, std::move(values));
    }
    return c;
}

}  // namespace lowbit

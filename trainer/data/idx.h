// The IDX file format of MNIST and Fashion-MNIST (plain or gzip-compressed): a magic number
// giving the element type and rank, big-endian extents, then the elements.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {

struct IdxArray {
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;  // unsigned-byte arrays only: what (Fashion-)MNIST uses
};

// Errors name the file: "FILE: truncated: ...", "FILE: not an IDX file ...".
class DataError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Reads an unsigned-byte IDX file, transparently gunzipping `.gz` content. At most
// `max_items` entries along axis 0 are read (all when negative).
IdxArray read_idx(const std::string &path, int64_t max_items = -1);

}  // namespace lowbit

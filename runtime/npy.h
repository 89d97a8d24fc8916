// NumPy .npy files: float32 and int8 arrays in and out. Reads format versions 1.0, 2.0 and 3.0,
// C or Fortran order (returned row-major); writes C order as np.save does, byte for byte
// (version 1.0, or 2.0 for a header over 65535 bytes), atomically: to path + ".tmp", fsync,
// rename, so an existing file is never left half-written. Every error is an NpyError whose
// message starts with the file's path.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor.h"

namespace lowbit {

class NpyError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A float32 ('<f4') array of any rank, rank 0 (one element) included, as a contiguous Tensor.
// Every other dtype, big-endian '>f4' included, is refused.
Tensor read_npy(const std::string &path);
// Any strides; the elements are written in row-major order.
void write_npy(const std::string &path, const Tensor &tensor);

struct Int8Array {
    Shape shape;
    std::vector<int8_t> data;  // row-major
};
// An int8 ('|i1') array, e.g. quantized element values.
Int8Array read_npy_int8(const std::string &path);
// shape_numel(shape) values from `data`, row-major.
void write_npy(const std::string &path, const Shape &shape, const int8_t *data);

}  // namespace lowbit

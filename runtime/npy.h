// NumPy .npy files: float32 tensors in, float32 and int8 arrays out. Reads format versions
// 1.0, 2.0 and 3.0, C or Fortran order; writes version 1.0 (2.0 when the header needs it),
// C order, atomically (temporary file, fsync, rename), so an existing file is never left
// half-written. Every error names the file.
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

// A float32 ('<f4') array of any rank (rank 0 included) as a contiguous Tensor.
Tensor read_npy(const std::string &path);
void write_npy(const std::string &path, const Tensor &tensor);

struct Int8Array {
    Shape shape;
    std::vector<int8_t> data;
};
// An int8 ('|i1') array, e.g. quantized element values.
Int8Array read_npy_int8(const std::string &path);
void write_npy(const std::string &path, const Shape &shape, const int8_t *data);

}  // namespace lowbit

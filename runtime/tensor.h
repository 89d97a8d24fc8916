// Tensor: a float32 n-d array (row-major by default) with shape and strides checked, owning
// its 64-byte aligned storage or viewing someone else's. Axis 0 is the sample (batch) axis,
// axis 1 the channel axis, as in PyTorch's NCHW; weights are OIHW.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {

using Shape = std::vector<int64_t>;

// Number of elements of a shape; throws std::invalid_argument on a negative extent or overflow.
int64_t shape_numel(const Shape &shape);
// "[128, 64, 32, 32]"
std::string shape_string(const Shape &shape);
// Row-major strides (in elements) of a shape.
Shape contiguous_strides(const Shape &shape);

class Tensor {
public:
    Tensor() = default;
    // A new zero-filled contiguous tensor.
    explicit Tensor(Shape shape);
    Tensor(std::initializer_list<int64_t> shape) : Tensor(Shape(shape)) {}
    // A new contiguous tensor whose elements are left unset, for outputs a kernel overwrites.
    static Tensor uninitialized(Shape shape);
    // A view of memory owned elsewhere; strides in elements, row-major when empty. Throws
    // std::invalid_argument on a null pointer, negative extents or strides, or a rank mismatch.
    static Tensor wrap(float *data, Shape shape, Shape strides = {});

    const Shape &shape() const { return shape_; }
    const Shape &strides() const { return strides_; }
    int rank() const { return int(shape_.size()); }
    // Extent of an axis; negative axes count from the end. Throws std::out_of_range.
    int64_t size(int axis) const;
    int64_t numel() const { return numel_; }
    bool is_contiguous() const;

    float *data() { return data_; }
    const float *data() const { return data_; }
    // Element by flat row-major index; contiguous tensors only (checked in debug builds).
    float &operator[](int64_t i) { return data_[i]; }
    const float &operator[](int64_t i) const { return data_[i]; }
    // Element by full index, any strides; throws std::out_of_range.
    float &at(std::initializer_list<int64_t> index) { return data_[offset_of(index)]; }
    float at(std::initializer_list<int64_t> index) const { return data_[offset_of(index)]; }

    // Same data, new shape of the same element count; contiguous tensors only (throws).
    Tensor reshape(Shape shape) const;
    // This tensor if contiguous, else a contiguous copy.
    Tensor contiguous() const;
    // A deep, contiguous copy.
    Tensor clone() const;

private:
    int64_t offset_of(std::initializer_list<int64_t> index) const;

    std::shared_ptr<float> storage_;
    float *data_ = nullptr;
    Shape shape_, strides_;
    int64_t numel_ = 0;
};

}  // namespace lowbit

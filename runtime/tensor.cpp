#include "tensor.h"

#include "memory.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace lowbit {

int64_t shape_numel(const Shape &shape) {
    int64_t n = 1;
    for (int64_t extent : shape) {
        if (extent < 0) throw std::invalid_argument(fmt::format("negative extent in shape {}", shape_string(shape)));
        if (extent != 0 && n > std::numeric_limits<int64_t>::max() / extent)
            throw std::invalid_argument(fmt::format("shape {} has too many elements", shape_string(shape)));
        n *= extent;
    }
    return n;
}

std::string shape_string(const Shape &shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Shape contiguous_strides(const Shape &shape) {
    Shape strides(shape.size());
    int64_t stride = 1;
    for (size_t d = shape.size(); d-- > 0;) {
        strides[d] = stride;
        stride *= shape[d];
    }
    return strides;
}

Tensor::Tensor(Shape shape) : Tensor(uninitialized(std::move(shape))) {
    if (numel_ > 0) std::memset(data_, 0, size_t(numel_) * sizeof(float));
}

Tensor Tensor::uninitialized(Shape shape) {
    Tensor t;
    t.numel_ = shape_numel(shape);
    t.shape_ = std::move(shape);
    t.strides_ = contiguous_strides(t.shape_);
    // 128-byte alignment (memory.h): whole AVX-512 vectors, no false sharing between threads;
    // large tensors recycle the blocks of earlier steps.
    float *p = static_cast<float *>(allocate(size_t(t.numel_) * sizeof(float)));
    t.storage_ = std::shared_ptr<float>(p, [](float *q) { deallocate(q); });
    t.data_ = p;
    return t;
}

Tensor Tensor::wrap(float *data, Shape shape, Shape strides) {
    Tensor t;
    t.numel_ = shape_numel(shape);
    if (data == nullptr && t.numel_ > 0) throw std::invalid_argument("Tensor::wrap: null data");
    if (strides.empty()) strides = contiguous_strides(shape);
    if (strides.size() != shape.size())
        throw std::invalid_argument(
            fmt::format("Tensor::wrap: {} strides for shape {}", strides.size(), shape_string(shape)));
    for (int64_t s : strides) {
        if (s < 0) throw std::invalid_argument("Tensor::wrap: negative stride");
    }
    t.data_ = data;
    t.shape_ = std::move(shape);
    t.strides_ = std::move(strides);
    return t;
}

int64_t Tensor::size(int axis) const {
    const int r = rank();
    const int a = axis < 0 ? axis + r : axis;
    if (a < 0 || a >= r) throw std::out_of_range(fmt::format("axis {} of a rank-{} tensor", axis, r));
    return shape_[a];
}

bool Tensor::is_contiguous() const {
    int64_t stride = 1;
    for (size_t d = shape_.size(); d-- > 0;) {
        if (shape_[d] != 1 && strides_[d] != stride) return false;
        stride *= shape_[d];
    }
    return true;
}

int64_t Tensor::offset_of(std::initializer_list<int64_t> index) const {
    if (int(index.size()) != rank())
        throw std::out_of_range(fmt::format("{} indices for a rank-{} tensor", index.size(), rank()));
    int64_t offset = 0;
    int d = 0;
    for (int64_t i : index) {
        if (i < 0 || i >= shape_[d])
            throw std::out_of_range(fmt::format("index {} on axis {} of extent {}", i, d, shape_[d]));
        offset += i * strides_[d++];
    }
    return offset;
}

Tensor Tensor::reshape(Shape shape) const {
    if (!is_contiguous()) throw std::invalid_argument("reshape of a non-contiguous tensor");
    if (shape_numel(shape) != numel_)
        throw std::invalid_argument(fmt::format("cannot reshape {} to {}", shape_string(shape_), shape_string(shape)));
    Tensor t = *this;
    t.shape_ = std::move(shape);
    t.strides_ = contiguous_strides(t.shape_);
    return t;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
    Tensor t = uninitialized(shape_);
    if (is_contiguous()) {
        if (numel_ > 0) std::memcpy(t.data_, data_, numel_ * sizeof(float));
        return t;
    }
    // Walk the index space in row-major order.
    std::vector<int64_t> index(shape_.size(), 0);
    for (int64_t flat = 0; flat < numel_; flat++) {
        int64_t offset = 0;
        for (size_t d = 0; d < shape_.size(); d++) offset += index[d] * strides_[d];
        t.data_[flat] = data_[offset];
        for (size_t d = shape_.size(); d-- > 0;) {
            if (++index[d] < shape_[d]) break;
            index[d] = 0;
        }
    }
    return t;
}

}  // namespace lowbit

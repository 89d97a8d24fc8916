// ParameterStore: every trainable parameter of a model, its gradient and (through Sgd) its
// optimizer state, each kind in one contiguous buffer. One gradient buffer means one
// all-reduce call per step when training is spread over MPI ranks, and one memcpy per
// checkpoint.
#pragma once

#include "tensor.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {

class ParameterStore {
public:
    // Each parameter starts at a multiple of this many floats (64 bytes), so every view is as
    // aligned as a fresh Tensor and kernels may use aligned vector loads on it.
    static constexpr int64_t kAlignFloats = 16;

    ParameterStore() = default;
    ParameterStore(const ParameterStore &) = delete;
    ParameterStore &operator=(const ParameterStore &) = delete;

    // Registers a parameter and returns its index (0, 1, ... in order of registration). Memory
    // does not exist until finalize(), which is why this gives an index and not a view: take
    // value(i) / grad(i) afterwards. `decay` says whether weight decay applies (usually false for
    // biases and batch-norm scales and shifts). Throws std::invalid_argument on an empty or
    // duplicate name or a bad shape, std::logic_error after finalize().
    size_t add(const std::string &name, Shape shape, bool decay = true);
    // Allocates the value and gradient buffers, all zero (padding between parameters included).
    // Throws std::logic_error when called twice.
    void finalize();
    bool finalized() const { return finalized_; }

    // Views into the buffers; valid for the store's lifetime. Throw std::logic_error before
    // finalize() and std::out_of_range on a bad index.
    Tensor value(size_t i);
    Tensor grad(size_t i);

    // The whole buffers, total_size() floats each, 64-byte aligned (null before finalize()).
    float *values() { return values_.get(); }
    const float *values() const { return values_.get(); }
    float *grads() { return grads_.get(); }
    const float *grads() const { return grads_.get(); }

    // Floats per buffer, padding included; known from registration on.
    int64_t total_size() const { return total_; }
    size_t count() const { return entries_.size(); }
    // Registration data; std::out_of_range on a bad index.
    const std::string &name(size_t i) const { return entry(i).name; }
    Shape shape(size_t i) const { return entry(i).shape; }
    bool decay(size_t i) const { return entry(i).decay; }
    // Where parameter i starts in each buffer, in floats (a multiple of kAlignFloats).
    int64_t offset(size_t i) const { return entry(i).offset; }
    int64_t numel(size_t i) const { return entry(i).numel; }
    // Index of a parameter by name; throws std::out_of_range naming it when absent.
    size_t index(const std::string &name) const;

    // Zeroes the whole gradient buffer (throws std::logic_error before finalize()).
    void zero_grads();

private:
    struct Entry {
        std::string name;
        Shape shape;
        bool decay;
        int64_t offset, numel;
    };
    struct Free {
        void operator()(float *p) const;
    };

    const Entry &entry(size_t i) const;
    void require_finalized(const char *what) const;

    std::vector<Entry> entries_;
    int64_t total_ = 0;
    bool finalized_ = false;
    std::unique_ptr<float[], Free> values_, grads_;
};

// A zero-filled buffer of n floats (n may be 0) at a 64-byte boundary, freed with aligned_free.
float *aligned_zeros(int64_t n);
void aligned_free(float *p);

}  // namespace lowbit

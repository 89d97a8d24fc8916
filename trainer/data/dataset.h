// An image classification data set held in memory as raw bytes (what every supported format
// stores), with loaders for Fashion-MNIST (IDX), CIFAR-10 (binary batches) and a folder of
// images per class. Conversion to float happens per batch, in augment.h, so a data set costs
// one byte per pixel rather than four.
#pragma once

#include "data/idx.h"  // DataError
#include "tensor.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

struct Dataset {
    Shape image_shape;  // C, H, W
    int classes = 0;
    std::vector<uint8_t> images;           // size() * C*H*W bytes, each image CHW
    std::vector<int32_t> labels;           // in [0, classes)
    std::vector<std::string> class_names;  // `classes` names

    int64_t size() const { return int64_t(labels.size()); }
    int64_t image_bytes() const;  // C*H*W
    const uint8_t *image(int64_t index) const { return images.data() + index * image_bytes(); }
};

// All loaders throw DataError naming the offending file ("FILE: ..."), and read at most
// `max_items` images (all when negative).

// `train-images-idx3-ubyte(.gz)` and `train-labels-idx1-ubyte(.gz)` (or `t10k-...` for the test
// split) in `dir`; the gzipped name is tried first.
Dataset load_fashion_mnist(const std::string &dir, bool train, int64_t max_items = -1);

// CIFAR-10's binary version: `data_batch_1.bin` ... `data_batch_5.bin` (those present, at least
// one) or `test_batch.bin`; class names from `batches.meta.txt` when present.
Dataset load_cifar10(const std::string &dir, bool train, int64_t max_items = -1);

// One subfolder per class (class index by sorted name), holding JPEG/PNG files of one size,
// loaded as 3-channel RGB in sorted file order.
Dataset load_image_folder(const std::string &dir, int64_t max_items = -1);

// "fashion-mnist" (the system copy, /usr/share/datasets/fashion-mnist), or a directory in any of
// the formats above, recognised by its files. For an image folder, `train` picks its `train/` or
// `test/` subfolder when those exist.
Dataset load_dataset(const std::string &name_or_path, bool train);

}  // namespace lowbit

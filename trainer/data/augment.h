// Per-sample preprocessing from a data set's bytes to the float CHW image the network sees:
// centered zero padding to a fixed size, the usual pad-and-random-crop and horizontal flip
// augmentations, and per-channel normalization.
#pragma once

#include "data/dataset.h"

#include <random>
#include <vector>

namespace lowbit {

struct Augmentation {
    int pad = 0;                   // zero border added before random_crop crops back to size
    bool random_crop = false;      // crop offset uniform in [0, 2*pad] per axis; centered when off
    bool horizontal_flip = false;  // mirror left-right with probability 1/2
    int resize_to = 0;             // 0: keep; else pad (or center-crop) to resize_to x resize_to, centered
    // Per channel, applied after scaling to [0, 1]: (x/255 - mean) / stddev. Empty: mean 0,
    // stddev 1. Padding is zero before normalization, as in torchvision.
    std::vector<float> mean, stddev;
};

// (C, H', W'): the image shape after resize_to. Throws std::invalid_argument when the
// augmentation does not fit the data set (mean/stddev length, negative sizes, zero stddev).
Shape output_shape(const Dataset &d, const Augmentation &a);

// Writes image `index` of `d`, augmented, to out_chw (output_shape(d, a) floats). The random
// decisions (crop offsets, then flip) draw from `rng` in a fixed order, so a generator seeded
// the same way gives the same image on every run and platform.
void augment_into(const Dataset &d, int64_t index, const Augmentation &a, std::mt19937_64 &rng, float *out_chw);

// Mean and population standard deviation of each channel over the whole data set, of pixels
// scaled to [0, 1]: what Augmentation::mean and ::stddev expect.
std::vector<float> channel_mean(const Dataset &d);
std::vector<float> channel_stddev(const Dataset &d);

}  // namespace lowbit

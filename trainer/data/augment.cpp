#include "augment.h"

#include <fmt/format.h>
#include <opencv2/core.hpp>

#include <array>
#include <cmath>
#include <stdexcept>

namespace lowbit {

namespace {

// A uniform integer in [0, n) from one draw; the modulo bias (n / 2^64) is negligible here,
// and unlike std::uniform_int_distribution the mapping is the same in every standard library.
int64_t uniform_below(std::mt19937_64 &rng, int64_t n) { return int64_t(rng() % uint64_t(n)); }

// Border widths that take `from` to `to` centered: negative when cropping.
std::array<int, 2> centered_margins(int64_t from, int64_t to) {
    const int before = int((to - from) / 2);
    return {before, int(to - from) - before};
}

// One channel plane geometrically transformed: resize_to, then pad and crop, then flip.
cv::Mat transform_plane(const cv::Mat &plane, const Augmentation &a, int64_t out_h, int64_t out_w, int crop_y,
                        int crop_x, bool flip) {
    // Cropping to resize_to is a ROI; padding is a border, folded in with `pad`'s.
    const auto [top, bottom] = centered_margins(plane.rows, out_h);
    const auto [left, right] = centered_margins(plane.cols, out_w);
    const cv::Rect keep(std::max(-left, 0), std::max(-top, 0), int(std::min<int64_t>(plane.cols, out_w)),
                        int(std::min<int64_t>(plane.rows, out_h)));
    cv::Mat padded;
    cv::copyMakeBorder(plane(keep), padded, std::max(top, 0) + a.pad, std::max(bottom, 0) + a.pad,
                       std::max(left, 0) + a.pad, std::max(right, 0) + a.pad, cv::BORDER_CONSTANT, cv::Scalar(0));
    cv::Mat cropped = padded(cv::Rect(crop_x, crop_y, int(out_w), int(out_h)));
    if (!flip) return cropped;
    cv::Mat flipped;
    cv::flip(cropped, flipped, 1);
    return flipped;
}

}  // namespace

Shape output_shape(const Dataset &d, const Augmentation &a) {
    if (d.image_shape.size() != 3)
        throw std::invalid_argument(
            fmt::format("data set images have shape {}, expected C, H, W", shape_string(d.image_shape)));
    const int64_t c = d.image_shape[0];
    if (a.pad < 0 || a.resize_to < 0)
        throw std::invalid_argument(fmt::format("augmentation: negative pad {} or resize_to {}", a.pad, a.resize_to));
    if (!a.mean.empty() && int64_t(a.mean.size()) != c)
        throw std::invalid_argument(fmt::format("augmentation: {} means for {} channels", a.mean.size(), c));
    if (!a.stddev.empty() && int64_t(a.stddev.size()) != c)
        throw std::invalid_argument(fmt::format("augmentation: {} stddevs for {} channels", a.stddev.size(), c));
    for (float s : a.stddev)
        if (!(s > 0)) throw std::invalid_argument(fmt::format("augmentation: stddev {} is not positive", s));
    if (a.resize_to == 0) return d.image_shape;
    return {c, a.resize_to, a.resize_to};
}

void augment_into(const Dataset &d, int64_t index, const Augmentation &a, std::mt19937_64 &rng, float *out_chw) {
    const Shape out = output_shape(d, a);
    const int64_t channels = out[0], out_h = out[1], out_w = out[2];
    const int64_t in_h = d.image_shape[1], in_w = d.image_shape[2];
    if (index < 0 || index >= d.size())
        throw std::out_of_range(fmt::format("image index {} outside a data set of {}", index, d.size()));
    // A hand-built Dataset can disagree with itself; reading past its bytes would be silent garbage.
    if (int64_t(d.images.size()) < (index + 1) * d.image_bytes())
        throw std::invalid_argument(fmt::format("data set holds {} image bytes, too few for image {} of {} bytes",
                                                d.images.size(), index, d.image_bytes()));
    // Decisions are drawn once per image, in this order, so every channel moves together.
    int crop_y = a.pad, crop_x = a.pad;
    if (a.random_crop && a.pad > 0) {
        crop_y = int(uniform_below(rng, 2 * int64_t(a.pad) + 1));
        crop_x = int(uniform_below(rng, 2 * int64_t(a.pad) + 1));
    }
    const bool flip = a.horizontal_flip && (rng() >> 63) != 0;
    const uint8_t *image = d.image(index);
    const int64_t plane_out = out_h * out_w;
    for (int64_t c = 0; c < channels; c++) {
        // cv::Mat does not write through a const pointer; the plane is only read.
        const cv::Mat plane(int(in_h), int(in_w), CV_8UC1, const_cast<uint8_t *>(image + c * in_h * in_w));
        const cv::Mat t = transform_plane(plane, a, out_h, out_w, crop_y, crop_x, flip);
        // A 256-entry table: one exact float per byte value, the same as computing each pixel.
        const float mean = a.mean.empty() ? 0.0f : a.mean[size_t(c)];
        const float stddev = a.stddev.empty() ? 1.0f : a.stddev[size_t(c)];
        std::array<float, 256> table;
        for (int v = 0; v < 256; v++) table[size_t(v)] = (float(v) / 255.0f - mean) / stddev;
        float *dst = out_chw + c * plane_out;
        for (int y = 0; y < int(out_h); y++) {
            const uint8_t *row = t.ptr<uint8_t>(y);
            for (int x = 0; x < int(out_w); x++) dst[y * out_w + x] = table[row[x]];
        }
    }
}

namespace {

// Per-channel sums of x and x^2 over bytes, exact in 64-bit integers.
void channel_sums(const Dataset &d, std::vector<double> &mean, std::vector<double> &var) {
    const int64_t channels = d.image_shape.at(0), plane = d.image_bytes() / std::max<int64_t>(channels, 1);
    std::vector<uint64_t> s1(size_t(channels), 0), s2(size_t(channels), 0);
    for (int64_t i = 0; i < d.size(); i++) {
        const uint8_t *image = d.image(i);
        for (int64_t c = 0; c < channels; c++)
            for (int64_t p = 0; p < plane; p++) {
                const uint64_t v = image[c * plane + p];
                s1[size_t(c)] += v;
                s2[size_t(c)] += v * v;
            }
    }
    const double n = double(d.size()) * double(plane);
    mean.assign(size_t(channels), 0.0);
    var.assign(size_t(channels), 0.0);
    if (n == 0) return;
    for (size_t c = 0; c < size_t(channels); c++) {
        mean[c] = double(s1[c]) / n / 255.0;
        var[c] = std::max(0.0, double(s2[c]) / n / (255.0 * 255.0) - mean[c] * mean[c]);
    }
}

}  // namespace

std::vector<float> channel_mean(const Dataset &d) {
    std::vector<double> mean, var;
    channel_sums(d, mean, var);
    return std::vector<float>(mean.begin(), mean.end());
}

std::vector<float> channel_stddev(const Dataset &d) {
    std::vector<double> mean, var;
    channel_sums(d, mean, var);
    std::vector<float> out;
    for (double v : var) out.push_back(float(std::sqrt(v)));
    return out;
}

}  // namespace lowbit

// The emitted assembly of the compiled variants: the AVX-512 variant's loops really run on
// zmm registers, the AVX2 one's on ymm, and the AVX-512 variant holds no instruction of an
// extension the dispatcher does not check for. Reads the .s files written beside each library
// (cmake/LowbitKernels.cmake); LOWBIT_KERNEL_DIR is where they are.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace {

std::vector<std::string> read_lines(const std::string &path) {
    std::ifstream in(path);
    EXPECT_TRUE(in.good()) << "cannot read " << path;
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

// The bodies of the loops: for every backward branch `jcc .LBB_x` whose label comes earlier
// in the file, the lines from that label to the branch. (LLVM rotates loops, so a body may
// hold further labels; what matters is that the instruction repeats.)
std::vector<std::vector<std::string>> loops(const std::vector<std::string> &lines) {
    std::map<std::string, size_t> label_line;
    const std::regex label(R"(^(\.LBB[0-9_]+):)"), branch(R"(^\s+j[a-z]+\s+(\.LBB[0-9_]+))");
    std::vector<std::vector<std::string>> found;
    for (size_t i = 0; i < lines.size(); i++) {
        std::smatch m;
        if (std::regex_search(lines[i], m, label)) label_line[m[1]] = i;
        if (std::regex_search(lines[i], m, branch) && label_line.count(m[1])) {
            found.emplace_back(lines.begin() + long(label_line[m[1]]), lines.begin() + long(i) + 1);
        }
    }
    return found;
}

// Whether some loop of the file contains `instruction` on `reg` registers.
bool hot_loop_uses(const std::string &file, const std::string &instruction, const std::string &reg) {
    const std::vector<std::string> lines = read_lines(std::string(LOWBIT_KERNEL_DIR) + "/" + file);
    for (const auto &loop : loops(lines)) {
        for (const std::string &line : loop) {
            if (line.find(instruction) != std::string::npos && line.find("%" + reg) != std::string::npos) return true;
        }
    }
    return false;
}

TEST(Assembly, Avx512VariantsUseZmmInTheirHotLoops) {
    // quantize: the double-precision division of u = v qmax / (S 2^-e) on 8 lanes.
    EXPECT_TRUE(hot_loop_uses("quantize_values_avx512_vnni.s", "vdivpd", "zmm"));
    EXPECT_TRUE(hot_loop_uses("quantize_values_block_avx512_vnni.s", "vdivpd", "zmm"));
    // dequantize: the same on the way back.
    EXPECT_TRUE(hot_loop_uses("dequantize_avx512_vnni.s", "vdivpd", "zmm"));
    // scales: the integer max-abs reduction.
    EXPECT_TRUE(hot_loop_uses("quantize_scales_avx512_vnni.s", "vpmaxud", "zmm"));
}

TEST(Assembly, Avx2VariantsUseYmmAndBaselineNoAvx) {
    EXPECT_TRUE(hot_loop_uses("quantize_values_avx2.s", "vdivpd", "ymm"));
    EXPECT_FALSE(hot_loop_uses("quantize_values_avx2.s", "", "zmm"));
    EXPECT_FALSE(hot_loop_uses("quantize_values_baseline.s", "", "ymm"));
    EXPECT_TRUE(hot_loop_uses("quantize_values_baseline.s", "divpd", "xmm"));
}

TEST(Assembly, IntegerConvolutionsUseDotProductInstructions) {
    // AVX-512 VNNI: 4-term u8 x i8 dot products (forward, backward-data, the weight gradient of
    // unsigned inputs) and 2-term int16 ones (the signed weight gradient). On ymm or zmm, as
    // the schedule's vector_width says: 8 lanes as tuned for Zen 4 (schedules/tuned/).
    auto vnni_hot_loop_uses = [](const char *file, const char *instruction) {
        return hot_loop_uses(file, instruction, "ymm") || hot_loop_uses(file, instruction, "zmm");
    };
    for (const char *pass :
         {"conv_forward_avx512_vnni.s", "conv_backward_data_avx512_vnni.s", "conv_forward_unsigned_avx512_vnni.s",
          "conv_backward_weight_unsigned_avx512_vnni.s", "conv_backward_weight_unsigned_16_avx512_vnni.s",
          "conv_forward_unsigned_wide_avx512_vnni.s", "conv_backward_data_wide_avx512_vnni.s",
          "conv_backward_weight_unsigned_16_wide_avx512_vnni.s", "conv_forward_unsigned_channels_32_avx512_vnni.s",
          "conv_forward_unsigned_channels_64_avx512_vnni.s", "conv_backward_data_channels_32_avx512_vnni.s",
          "conv_backward_data_channels_64_avx512_vnni.s"}) {
        EXPECT_TRUE(vnni_hot_loop_uses(pass, "vpdpbusd")) << pass;
    }
    // The width-chosen tiles and the channel lanes are 16 lanes of int32: zmm.
    for (const char *pass :
         {"conv_forward_unsigned_wide_avx512_vnni.s", "conv_backward_data_wide_avx512_vnni.s",
          "conv_backward_weight_unsigned_16_wide_avx512_vnni.s", "conv_forward_unsigned_channels_32_avx512_vnni.s",
          "conv_forward_unsigned_channels_64_avx512_vnni.s", "conv_backward_weight_unsigned_64_avx512_vnni.s"}) {
        EXPECT_TRUE(hot_loop_uses(pass, "vpdpbusd", "zmm")) << pass;
    }
    EXPECT_TRUE(vnni_hot_loop_uses("conv_backward_weight_avx512_vnni.s", "vpdpwssd"));
    // AVX2: int16 pairs.
    for (const char *pass : {"conv_forward_avx2.s", "conv_backward_data_avx2.s", "conv_backward_weight_avx2.s"}) {
        EXPECT_TRUE(hot_loop_uses(pass, "vpmaddwd", "ymm")) << pass;
    }
    // Unsigned inputs on AVX2: u8 x i8 without offset as int16 narrow sums.
    EXPECT_TRUE(hot_loop_uses("conv_forward_unsigned_avx2.s", "vpmaddubsw", "ymm"));
    EXPECT_TRUE(hot_loop_uses("conv_backward_weight_unsigned_avx2.s", "vpmaddubsw", "ymm"));
    // Backward-data on AVX2: int16 narrow sums of offset (unsigned) weights times errors.
    EXPECT_TRUE(hot_loop_uses("conv_backward_data_narrow_avx2.s", "vpmaddubsw", "ymm"));
}

TEST(Assembly, FloatConvolutionsWithChannelLanesUseZmmFma) {
    // One FMA of 16 output channels' weights (the weight gradient: errors) by a broadcast
    // input value.
    for (const char *pass :
         {"conv_forward_float_channels_32_avx512_vnni.s", "conv_forward_float_channels_64_avx512_vnni.s",
          "conv_backward_data_float_channels_32_avx512_vnni.s", "conv_backward_data_float_channels_64_avx512_vnni.s",
          "conv_backward_weight_float_3x3_16_avx512_vnni.s", "conv_backward_weight_float_3x3_32_avx512_vnni.s"}) {
        EXPECT_TRUE(hot_loop_uses(pass, "vfmadd231ps", "zmm")) << pass;
    }
}

// The avx512_vnni variants run wherever the Cannon Lake AVX-512 set and VNNI are
// (runtime/dispatch.cpp). Sapphire Rapids has more, and Halide's code for it used
// AVX512-FP16's vmovw, which faults on AMD Zen 4: the build now generates this variant's
// code for the checked set (cmake/LowbitKernels.cmake). Any instruction of AVX512-FP16,
// AVX512-BF16, the VEX-encoded AVX-VNNI or AMX in these files would fault on some CPU the
// dispatcher sends there (Zen 4 lacks FP16, Ice Lake BF16 too).
TEST(Assembly, Avx512VariantsUseOnlyTheFeaturesTheDispatcherChecks) {
    // AVX512-FP16: vmovw, vmovsh and the half-precision arithmetic (the F16C conversions
    // vcvtph2ps / vcvtps2ph are AVX-512F and F16C); AVX-VNNI: the {vex} form of the dot
    // products; AMX: the tile instructions.
    const std::regex fp16(R"(^\s+(vmovw|vmovsh|v[a-z0-9]+(ph|sh))\s)"), f16c(R"(^\s+vcvt(ph2ps|ps2ph)\s)");
    const std::regex vex(R"(\{vex\})"), amx(R"(^\s+(tile[a-z0-9]+|tdp[a-z0-9]+|ldtilecfg|sttilecfg)\s)");
    // AVX512-BF16, which the dispatcher does not ask for either.
    const std::regex bf16(R"(^\s+(vcvtne2ps2bf16|vcvtneps2bf16|vdpbf16ps)\s)");
    int files = 0;
    for (const auto &entry : std::filesystem::directory_iterator(LOWBIT_KERNEL_DIR)) {
        const std::string name = entry.path().filename().string();
        if (name.size() < 14 || name.compare(name.size() - 14, 14, "_avx512_vnni.s") != 0) continue;
        files++;
        int line_number = 0;
        for (const std::string &line : read_lines(entry.path().string())) {
            line_number++;
            const bool bad = (std::regex_search(line, fp16) && !std::regex_search(line, f16c)) ||
                             std::regex_search(line, vex) || std::regex_search(line, amx) ||
                             std::regex_search(line, bf16);
            EXPECT_FALSE(bad) << name << ":" << line_number << ": " << line;
            if (bad) break;  // one line per file says enough
        }
    }
    // The AVX-512 variants: quantize (6), conv (12), batch norm (9).
    EXPECT_GE(files, 27);
}

}  // namespace

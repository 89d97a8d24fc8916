# lowbit_add_kernel(NAME GENERATOR gen [PARAMS key=value ...])
#
# Turns one generator into ahead-of-time Halide libraries, one per CPU variant in
# LOWBIT_CPU_VARIANTS (most specific first) and, with LOWBIT_CUDA / LOWBIT_OPENCL, one per GPU
# variant (called directly, not dispatched: tests/test_gpu_schedules.cpp); all share one
# Halide runtime. Beside each library it emits the assembly (.s) and the lowered
# statement (.stmt) for inspection and for tests that check the hot loop.
#
# The result is an interface library NAME and a header NAME_variants.h that lists the CPU
# variants for the runtime's dispatcher (runtime/dispatch.h), which picks the best one the
# CPU can run, or the one a test forces.
#
# VARIANTS narrows the CPU variants. CPU_ONLY builds no GPU variants (kernels without a GPU
# schedule yet); TEST_ONLY means the same, for libraries that exist to test an algorithm
# choice on this CPU (e.g. the u8 x i8 path on AVX2).
#
# Schedule knobs come from PARAMS, then from schedules/tuned/<NAME>_<variant>.params
# (key=value lines written by autotune/), which win.

set(LOWBIT_TARGET_avx512_vnni
    x86-64-linux-avx-avx2-avx512-avx512_cannonlake-avx512_sapphirerapids-avx512_skylake-f16c-fma-sse41)
# Halide 14 compiles the avx512_sapphirerapids feature (the only one that selects vpdpbusd)
# with LLVM's -mcpu=sapphirerapids, which lets the backend use AVX512-FP16 (vmovw for 16-bit
# moves) and AVX-VNNI encodings. Halide's run-time check for the feature verifies only the
# Cannon Lake AVX-512 set, VNNI and BF16: AMD Zen 4 passes it and lacks FP16, and the variant
# faulted there (SIGILL). So this variant's LLVM IR, which Halide has already optimized, is
# compiled to machine code by llc for the Cannon Lake set and VNNI, what our dispatcher checks
# (runtime/dispatch.cpp; no BF16, which the kernels do not use: Ice Lake runs it too).
set(LOWBIT_LLC_CPU_avx512_vnni -mcpu=cannonlake -mattr=+avx512vnni)
# Halide's own code generation options (CodeGen_Internal.cpp, make_target_machine): -O3, PIC,
# function sections, no FP contraction beyond per-instruction flags (strict_float stays strict).
set(LOWBIT_LLC_OPTIONS -O3 -relocation-model=pic -function-sections -fp-contract=off -relax-elf-relocations=false)
if ("avx512_vnni" IN_LIST LOWBIT_CPU_VARIANTS)
    # Halide 14 is built on LLVM 14, and llc must read its IR.
    find_program(LOWBIT_LLC NAMES llc-14 PATHS /usr/lib/llvm-14/bin REQUIRED)
endif ()
set(LOWBIT_TARGET_avx2 x86-64-linux-avx-avx2-f16c-fma-sse41)
set(LOWBIT_TARGET_baseline x86-64-linux)
set(LOWBIT_TARGET_cuda x86-64-linux-cuda-cuda_capability_61)
# The GPU schedules through OpenCL: on PoCL they run on the CPU, so CI checks their
# correctness without a GPU (the kernels use doubles for exact scaling: cl_doubles).
set(LOWBIT_TARGET_opencl x86-64-linux-opencl-cl_doubles)

function(_lowbit_add_variant NAME VARIANT GENERATOR)
    set(lib ${NAME}_${VARIANT})
    set(params ${ARGN})
    set(tuned "${PROJECT_SOURCE_DIR}/schedules/tuned/${lib}.params")
    if (EXISTS "${tuned}")
        file(STRINGS "${tuned}" tuned_params REGEX "^[A-Za-z_.]+=")
        list(APPEND params ${tuned_params})
        set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${tuned}")
    endif ()
    get_property(runtime GLOBAL PROPERTY LOWBIT_HALIDE_RUNTIME)
    set(use_runtime "")
    if (runtime)
        set(use_runtime USE_RUNTIME ${runtime})
    endif ()
    set(llc_cpu ${LOWBIT_LLC_CPU_${VARIANT}})
    set(code_output ASSEMBLY assembly)
    if (llc_cpu)
        set(code_output LLVM_ASSEMBLY llvm_ir)
    endif ()
    add_halide_library(${lib} FROM lowbit_generators
                       GENERATOR ${GENERATOR}
                       FUNCTION_NAME ${lib}
                       TARGETS ${LOWBIT_TARGET_${VARIANT}}
                       ${use_runtime}
                       ${code_output}
                       STMT stmt
                       PARAMS ${params})
    if (llc_cpu)
        # The library's code (and the .s the assembly tests read) from llc, in place of the
        # object Halide wrote for -mcpu=sapphirerapids.
        set(ir "${CMAKE_CURRENT_BINARY_DIR}/${lib}.ll")
        set(object "${CMAKE_CURRENT_BINARY_DIR}/${lib}.llc.o")
        set(asm "${CMAKE_CURRENT_BINARY_DIR}/${lib}.s")
        set(llc ${LOWBIT_LLC} ${LOWBIT_LLC_OPTIONS} ${llc_cpu})
        add_custom_command(OUTPUT "${object}" COMMAND ${llc} -filetype=obj "${ir}" -o "${object}"
                           DEPENDS "${ir}" VERBATIM)
        add_custom_command(OUTPUT "${asm}" COMMAND ${llc} -filetype=asm "${ir}" -o "${asm}"
                           DEPENDS "${ir}" VERBATIM)
        set_source_files_properties("${object}" PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
        set_property(TARGET ${lib} PROPERTY SOURCES "${object}")
        add_custom_target(${lib}.assembly ALL DEPENDS "${asm}")
    endif ()
    if (NOT runtime)
        set_property(GLOBAL PROPERTY LOWBIT_HALIDE_RUNTIME ${lib}.runtime)
    endif ()
endfunction()

function(lowbit_add_kernel NAME)
    cmake_parse_arguments(ARG "TEST_ONLY;CPU_ONLY" "GENERATOR" "PARAMS;VARIANTS" ${ARGN})
    if (NOT ARG_GENERATOR)
        set(ARG_GENERATOR ${NAME})
    endif ()
    if (NOT ARG_VARIANTS)
        set(ARG_VARIANTS ${LOWBIT_CPU_VARIANTS})
    endif ()
    add_library(${NAME} INTERFACE)
    set(includes "")
    set(entries "")
    foreach (variant IN LISTS ARG_VARIANTS)
        _lowbit_add_variant(${NAME} ${variant} ${ARG_GENERATOR} ${ARG_PARAMS})
        target_link_libraries(${NAME} INTERFACE ${NAME}_${variant})
        string(APPEND includes "#include \"${NAME}_${variant}.h\"\n")
        string(APPEND entries "    {Isa::${variant}, &${NAME}_${variant}},\n")
    endforeach ()
    foreach (gpu IN ITEMS cuda opencl)
        string(TOUPPER ${gpu} option)
        if (LOWBIT_${option} AND NOT ARG_TEST_ONLY AND NOT ARG_CPU_ONLY)
            _lowbit_add_variant(${NAME} ${gpu} ${ARG_GENERATOR} ${ARG_PARAMS})
            target_link_libraries(${NAME} INTERFACE ${NAME}_${gpu})
        endif ()
    endforeach ()
    list(GET ARG_VARIANTS 0 first)
    file(GENERATE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/${NAME}_variants.h" CONTENT
"// Generated by cmake/LowbitKernels.cmake: the compiled CPU variants of ${NAME}, best first.
#pragma once
#include \"dispatch.h\"
${includes}
namespace lowbit::kernels {
inline const Kernel<decltype(&${NAME}_${first})> ${NAME}{\"${NAME}\", {
${entries}}};
}  // namespace lowbit::kernels
")
    target_include_directories(${NAME} INTERFACE "${CMAKE_CURRENT_BINARY_DIR}"
                                                 "${PROJECT_SOURCE_DIR}/runtime")
    set_property(GLOBAL APPEND PROPERTY LOWBIT_KERNELS ${NAME})
endfunction()

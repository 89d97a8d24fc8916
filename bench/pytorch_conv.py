#!/usr/bin/python3
"""PyTorch 1.13 float32 conv2d timings on the ResNet-20 layer shapes, the side-by-side
reference for bench/bench_conv (which runs this script in the same session).

Prints one line per layer and pass: `layer pass median_ms`. Usage:
  /usr/bin/python3 bench/pytorch_conv.py --threads 2 --repetitions 7 [--batch 128]
"""
import argparse
import time

import torch

LAYERS = [  # name, C, O, H, K, stride
    ("16->16 32x32", 16, 16, 32, 3, 1),
    ("16->32 s2", 16, 32, 32, 3, 2),
    ("32->32 16x16", 32, 32, 16, 3, 1),
    ("32->64 s2", 32, 64, 16, 3, 2),
    ("64->64 8x8", 64, 64, 8, 3, 1),
    ("1x1 16->32 s2", 16, 32, 32, 1, 2),
    ("1x1 32->64 s2", 32, 64, 16, 1, 2),
]


def median_ms(fn, repetitions):
    fn()  # warm up
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, c, o, h, k, stride in LAYERS:
            pad = k // 2
            x = torch.randn(args.batch, c, h, h)
            w = torch.randn(o, c, k, k)
            y = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
            e = torch.randn_like(y)
            conv_backward = torch.ops.aten.convolution_backward

            def forward():
                torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)

            def backward_data():
                conv_backward(e, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, [True, False, False])

            def backward_weight():
                conv_backward(e, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, [False, True, False])

            for pass_name, fn in (("forward", forward), ("backward-data", backward_data),
                                  ("backward-weight", backward_weight)):
                print(f"{name}\t{pass_name}\t{median_ms(fn, args.repetitions):.4f}", flush=True)


if __name__ == "__main__":
    main()

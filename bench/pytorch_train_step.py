#!/usr/bin/python3
"""PyTorch 1.13 float32 training steps of ResNet-20, the side-by-side reference for
bench/bench_train_step (which runs this script in the same session).

The network is lowbit's resnet20 layer for layer: 3x3 conv-BN-ReLU stem of 16 channels, three
stages of three basic blocks (16, 32, 64 channels), 1x1 conv + BN projection shortcuts where the
shape changes, global average pooling, a linear classifier; no conv biases. One step is forward,
softmax cross-entropy, backward and an SGD update (momentum 0.9, weight decay 5e-4), on one
fixed random batch. Prints `pytorch float32 images_per_second X peak_rss_mib Y`.

Usage: /usr/bin/python3 bench/pytorch_train_step.py --threads 2 --batch 128 --steps 5 --repetitions 5
"""
import argparse
import resource
import time

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def resnet(depth, in_channels, classes):
    n = (depth - 2) // 6
    layers = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage in range(3):
        cout = 16 << stage
        for b in range(n):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and b == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = resnet(args.depth, 1, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(args.batch, 1, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()  # warm up
    times = []
    for _ in range(args.repetitions):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        times.append((time.perf_counter() - start) / args.steps)
    times.sort()
    median = times[len(times) // 2]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"pytorch float32 images_per_second {args.batch / median:.1f} peak_rss_mib {peak_mib:.1f}")


if __name__ == "__main__":
    main()

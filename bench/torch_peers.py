"""The PyTorch networks the benchmarks compare n2d2 with (one definition for every bench).

lenet(): N2D2's LeNet.ini with a dense conv2 (PyTorch has no connection tables): conv 5x5 x3
with ReLU, 2x2 max pools, fc 84 + ReLU + dropout 0.5, fc 10, no biases.
resnet20(): CIFAR ResNet-20 as n2d2.models.ResNet20 builds it (BatchNorm, projection shortcuts
where the shape changes, global average pool, fc 10).
"""


def lenet():
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(1, 6, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 120, 5, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(120, 84, bias=False), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(84, 10, bias=False))


def resnet20():
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.sc = None if stride == 1 and cin == cout else \
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (x if self.sc is None else self.sc(x)))

    layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

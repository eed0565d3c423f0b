"""PyTorch eager baseline for accuracy: the d2l recipe (SGD lr 1.0, batch 256, 10 epochs,
Xavier-uniform) on LeNet-BN exactly as ../shared/peers/torch_train_epoch.py builds it, printing
train loss, train accuracy and eval-mode test accuracy per epoch, then the best.

  python3 scripts/torch-lenet-bn-accuracy.py SEED      # needs numpy and torch
Compare with `bnc train models/lenet_bn.ir --seed SEED` (the seeds do not give the same
initial weights or batch order in the two frameworks; compare the spread over seeds).
"""
import gzip, os, sys, numpy as np, torch
from torch import nn
seed = int(sys.argv[1]); torch.manual_seed(seed); torch.set_num_threads(2)
def idx(name):
    raw = gzip.open(os.path.join("/usr/share/datasets/fashion-mnist", name)).read()
    nd = raw[3]; dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)
x = torch.from_numpy(idx("train-images-idx3-ubyte.gz").astype(np.float32).reshape(-1, 1, 28, 28) / 255)
y = torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
xt = torch.from_numpy(idx("t10k-images-idx3-ubyte.gz").astype(np.float32).reshape(-1, 1, 28, 28) / 255)
yt = torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
net = nn.Sequential(
    nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.Sigmoid(), nn.AvgPool2d(2, 2),
    nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
    nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
    nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(), nn.Linear(84, 10))
for m in net.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
opt = torch.optim.SGD(net.parameters(), lr=1.0)
loss = nn.CrossEntropyLoss()
best = 0
for ep in range(10):
    net.train(); perm = torch.randperm(60000); tl = 0; tc = 0
    for i in range(0, 60000, 256):
        b = perm[i:i + 256]
        opt.zero_grad(); out = net(x[b]); l = loss(out, y[b]); l.backward(); opt.step()
        tl += l.item() * len(b); tc += (out.argmax(1) == y[b]).sum().item()
    net.eval()
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    best = max(best, acc)
    print(f"epoch {ep+1} loss {tl/60000:.4f} train {tc/60000:.4f} test {acc:.4f}", flush=True)
print(f"seed {seed} best {best:.4f}")

"""PyTorch smoke script (runs INSIDE the image with its own Python; no downloads).

usage: python smoke.py info | cpu | gpu
  cpu/gpu: a tiny conv+linear module is scripted with torch.jit.script, saved, loaded back and
           run; its output is compared with the eager output (allclose).
"""
import json
import os
import sys
import tempfile
import time

if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # never import this file as `torch`


def emit(d):
    print("IMAGEGEN-RESULT " + json.dumps(d), flush=True)


def _cudnn(v):
    if not v:
        return None
    v = int(v)
    if v >= 90000:
        return "%d.%d.%d" % (v // 10000, (v % 10000) // 100, v % 100)
    return "%d.%d.%d" % (v // 1000, (v % 1000) // 100, v % 100)


def info():
    import torch
    cudnn = None
    if torch.version.cuda:
        try:
            cudnn = _cudnn(torch.backends.cudnn.version())
        except Exception:
            cudnn = None
    return {
        "framework_version": torch.__version__,
        "compiled_with_cuda": bool(torch.version.cuda) and torch.backends.cuda.is_built(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def infer(device):
    import torch

    t0 = time.time()
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    net = Net().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = net(x)
    path = os.path.join(tempfile.mkdtemp(prefix="imagegen-smoke-"), "model.pt")
    torch.jit.save(torch.jit.script(net), path)
    dev = "cuda:0" if device == "gpu" else "cpu"
    loaded = torch.jit.load(path, map_location=dev)
    with torch.no_grad():
        out = loaded(x.to(dev)).cpu()
    diff = float((out - eager).abs().max())
    ok = bool(torch.allclose(out, eager, rtol=1e-4, atol=1e-5))
    return {"ok": ok, "max_abs_diff": diff, "shape": list(out.shape), "seconds": round(time.time() - t0, 3),
            "error": None if ok else "scripted module output differs from eager output (max abs diff %s)" % diff}


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "info"
    emit(info() if mode == "info" else infer(mode))

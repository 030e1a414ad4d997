"""PaddlePaddle smoke script (runs INSIDE the image with its own Python; no downloads).

usage: python smoke.py info | cpu | gpu
Prints one line `IMAGEGEN-RESULT <json>`.
  info: framework/CUDA/cuDNN versions the build reports and whether it was compiled with CUDA
  cpu:  a tiny conv+linear net is run eagerly, saved with paddle.jit.save, loaded with
        paddle.inference.Config + create_predictor and run; outputs are compared (allclose)
  gpu:  the same, with the predictor on GPU 0 (Config.enable_use_gpu)
"""
import json
import os
import sys
import tempfile
import time

if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # never import this file as `paddle`


def emit(d):
    sys.stdout.flush()
    print("IMAGEGEN-RESULT " + json.dumps(d), flush=True)


def _ver(v):
    v = str(v) if v is not None else ""
    return None if v in ("", "False", "None", "0") else v


def info():
    import paddle
    return {
        "framework_version": paddle.__version__,
        "compiled_with_cuda": bool(paddle.is_compiled_with_cuda()),
        "cuda": _ver(paddle.version.cuda()),
        "cudnn": _ver(paddle.version.cudnn()),
    }


def infer(device):
    import numpy as np
    import paddle

    t0 = time.time()
    paddle.seed(0)
    paddle.set_device("cpu")

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1)
            self.fc = paddle.nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            y = paddle.nn.functional.relu(self.conv(x))
            return self.fc(paddle.flatten(y, 1))

    net = Net()
    net.eval()
    x = np.random.RandomState(0).rand(2, 3, 8, 8).astype("float32")
    eager = net(paddle.to_tensor(x)).numpy()

    d = tempfile.mkdtemp(prefix="imagegen-smoke-")
    spec = [paddle.static.InputSpec([None, 3, 8, 8], "float32", "x")]
    paddle.jit.save(net, os.path.join(d, "model"), input_spec=spec)
    files = sorted(os.listdir(d))
    # 2.x writes model.pdmodel, 3.x model.json: find it, do not assume it
    model = [f for f in files if f.endswith((".json", ".pdmodel"))]
    params = [f for f in files if f.endswith(".pdiparams")]
    if not model or not params:
        return {"ok": False, "error": "jit.save wrote no model/params file: %s" % files}
    config = paddle.inference.Config(os.path.join(d, model[0]), os.path.join(d, params[0]))
    if device == "gpu":
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
    predictor = paddle.inference.create_predictor(config)
    inp = predictor.get_input_handle(predictor.get_input_names()[0])
    inp.reshape(list(x.shape))
    inp.copy_from_cpu(x)
    predictor.run()
    out = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    diff = float(np.max(np.abs(out - eager))) if out.shape == eager.shape else None
    ok = out.shape == eager.shape and bool(np.allclose(out, eager, rtol=1e-4, atol=1e-5))
    return {"ok": ok, "max_abs_diff": diff, "shape": list(out.shape), "files": files,
            "seconds": round(time.time() - t0, 3),
            "error": None if ok else "predictor output differs from eager output (max abs diff %s)" % diff}


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "info"
    emit(info() if mode == "info" else infer(mode))

"""ONNX Runtime smoke script.

Two halves in one file:
  host_prepare(workdir) runs on the HOST (the test environment has `onnx` and numpy): it builds a
      tiny Conv+Relu+Flatten+Gemm model with onnx.helper, plus the input and the expected output
      computed with numpy, and returns the arguments for the in-image half.
  `python smoke.py info | cpu MODEL_DIR | gpu MODEL_DIR` runs INSIDE the image with its own
      Python: an InferenceSession runs the model and the output is compared (allclose).
"""
import json
import os
import sys
import time

if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # never import this file as `onnxruntime`


def host_prepare(workdir):
    """HOST side: write model.onnx, x.npy, expected.npy into workdir; return in-image args."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    w = rng.rand(4, 3, 3, 3).astype("float32") - 0.5
    b = rng.rand(4).astype("float32")
    fw = rng.rand(4 * 8 * 8, 5).astype("float32") - 0.5
    fb = rng.rand(5).astype("float32")
    x = rng.rand(2, 3, 8, 8).astype("float32")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "imagegen_smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(fw, "fw"), numpy_helper.from_array(fb, "fb")],
    )
    # opset 13 / IR 7: loadable by every ONNX Runtime this project builds
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    # expected output, computed independently with numpy
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((2, 4, 8, 8), dtype="float64")
    for i in range(8):
        for j in range(8):
            patch = pad[:, :, i:i + 3, j:j + 3]
            conv[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    conv += b[None, :, None, None]
    y = np.maximum(conv, 0).reshape(2, -1) @ fw + fb
    os.makedirs(workdir, exist_ok=True)
    onnx.save(model, os.path.join(workdir, "model.onnx"))
    np.save(os.path.join(workdir, "x.npy"), x)
    np.save(os.path.join(workdir, "expected.npy"), y.astype("float32"))
    return []  # the runner appends the in-image path of workdir


def _cuda_runtime_version():
    """The CUDA runtime in the environment (NVIDIA's wheel), from cudaRuntimeGetVersion: it needs no
    GPU and no driver. None when there is no such wheel."""
    import ctypes
    import glob
    import site

    for sp in site.getsitepackages():
        for path in sorted(glob.glob(os.path.join(sp, "nvidia", "cuda_runtime", "lib", "libcudart.so.*"))):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            v = ctypes.c_int(0)
            if lib.cudaRuntimeGetVersion(ctypes.byref(v)) == 0 and v.value:
                return "%d.%d" % (v.value // 1000, (v.value % 1000) // 10)
    return None


def info():
    import onnxruntime as ort
    providers = ort.get_available_providers()
    built = cudnn = None
    try:
        from onnxruntime.capi import build_and_package_info as bi
        built = getattr(bi, "cuda_version", None) or None
        cudnn = getattr(bi, "cudnn_version", None) or None
    except ImportError:
        pass
    # ONNX Runtime runs on any CUDA 12.x runtime at or above the one it was built with (CUDA minor
    # version compatibility); the image's CUDA is the runtime wheel's, which is what the tag claims.
    cuda = _cuda_runtime_version() if built else None
    return {"framework_version": ort.__version__, "providers": providers,
            "compiled_with_cuda": "CUDAExecutionProvider" in providers, "cuda": cuda or built,
            "cuda_built_with": built, "cudnn": cudnn}


def infer(device, model_dir):
    import numpy as np
    import onnxruntime as ort

    t0 = time.time()
    providers = ["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=providers)
    if device == "gpu" and "CUDAExecutionProvider" not in sess.get_providers():
        return {"ok": False, "error": "CUDAExecutionProvider not active: %s" % sess.get_providers()}
    x = np.load(os.path.join(model_dir, "x.npy"))
    expected = np.load(os.path.join(model_dir, "expected.npy"))
    out = sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: x})[0]
    diff = float(np.max(np.abs(out - expected)))
    ok = bool(np.allclose(out, expected, rtol=1e-4, atol=1e-4))
    return {"ok": ok, "max_abs_diff": diff, "shape": list(out.shape), "seconds": round(time.time() - t0, 3),
            "error": None if ok else "InferenceSession output differs from numpy reference (max abs diff %s)" % diff}


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "info"
    emit = lambda d: print("IMAGEGEN-RESULT " + json.dumps(d), flush=True)  # noqa: E731
    emit(info() if mode == "info" else infer(mode, sys.argv[2]))

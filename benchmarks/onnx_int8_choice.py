"""Why ``--format onnx --precision int8`` is refused: onnxruntime's static QDQ int8 against OpenVINO + NNCF.

ascan_tiny at 224 px, random weights (seed 0), 4 random calibration images, 1 thread per engine; each
engine timed in interleaved rounds (min of 5 rounds of 3 runs). Prints each variant's logits cosine to eager
PyTorch fp32 and its latency. Run: ``PYTHONPATH=src python benchmarks/onnx_int8_choice.py`` (a few minutes).
"""

import functools
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

import ascan  # noqa: F401  (registers the models)
from ascan.export.openvino import compile_model, convert
from ascan.export.quantize import quantize_openvino

SIZE, CALIBRATION, ROUNDS, RUNS = 224, 4, 5, 3
ORT_VARIANTS = {"ort int8 all ops": None, "ort int8 Conv/Gemm": ["Conv", "Gemm"],
                "ort int8 Conv/Gemm/MatMul": ["Conv", "Gemm", "MatMul"]}


class Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]):
        self.items = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = timm.create_model("ascan_tiny").eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = model(x).numpy()
    cal = [rng.standard_normal((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(CALIBRATION)]
    work = Path(tempfile.mkdtemp())
    torch.onnx.export(model, (x,), work / "f32.onnx", dynamo=True, opset_version=20)
    quant_pre_process(str(work / "f32.onnx"), str(work / "pre.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    name = ort.InferenceSession(str(work / "pre.onnx")).get_inputs()[0].name
    sessions = {"ort fp32": ort.InferenceSession(str(work / "f32.onnx"), options)}
    for tag, ops in ORT_VARIANTS.items():
        out = work / f"{len(sessions)}.onnx"
        quantize_static(str(work / "pre.onnx"), str(out), Reader(name, cal), quant_format=QuantFormat.QDQ,
                        per_channel=True, op_types_to_quantize=ops)
        sessions[tag] = ort.InferenceSession(str(out), options)
    feed = {name: x.numpy()}
    runs = {tag: functools.partial(lambda session: session.run(None, feed)[0], session)
            for tag, session in sessions.items()}
    fp32 = convert(model, (x,))
    int8 = quantize_openvino(fp32, [(torch.from_numpy(c),) for c in cal])
    for tag, graph, precision in (("openvino fp32", fp32, "fp32"), ("openvino int8 (NNCF)", int8, "int8")):
        compiled = compile_model(graph, precision, threads=1)
        runs[tag] = functools.partial(lambda c: c(x.numpy())[0], compiled)
    seconds = {tag: [] for tag in runs}
    for _ in range(ROUNDS):
        for tag, run in runs.items():
            start = time.perf_counter()
            for _ in range(RUNS):
                run()
            seconds[tag].append((time.perf_counter() - start) / RUNS)
    for tag, run in runs.items():
        print(f"{tag:<28} cosine {cosine(run(), ref):.4f}   {1000 * min(seconds[tag]):7.1f} ms")


if __name__ == "__main__":
    main()

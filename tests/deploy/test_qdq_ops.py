"""The QuantizeLinear/DequantizeLinear operator, eager and in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from gabfusion_mm.deploy.qdq_ops import (
    QDQ_OPSET,
    QDQSpec,
    QuantizeDequantize,
    qdq_translations,
)


def _spec(scale, zero, quant_min, quant_max, axis=1, offset=None):
    return QDQSpec(
        scale=torch.as_tensor(scale, dtype=torch.float32),
        zero_point=torch.as_tensor(zero, dtype=torch.int32),
        quant_min=quant_min,
        quant_max=quant_max,
        axis=axis,
        offset=None
        if offset is None
        else torch.as_tensor(offset, dtype=torch.float32),
    )


# name -> (spec, expected container, input shape)
CASES = {
    'int4_per_tensor': (_spec(0.1, 0, -8, 7), 'INT4', (2, 3, 5, 5)),
    'uint4_zero_point': (_spec(0.05, 3, 0, 15), 'UINT4', (2, 3, 5, 5)),
    'int8_5bit_clipped': (_spec(0.02, 0, -16, 15), 'INT8', (2, 3, 5, 5)),
    'int4_per_channel': (
        _spec([0.1, 0.2, 0.05], [0, 1, -2], -8, 7, axis=0),
        'INT4',
        (3, 2, 3, 3),
    ),
    'uint4_offset': (
        _spec(0.07, 0, 0, 15, offset=-0.28),
        'UINT4',
        (2, 3, 5, 5),
    ),
    'int8_odd_grid': (_spec(0.01, 0, -15, 15), 'INT8', (2, 3, 5, 5)),
}


def qdq_reference(x, spec: QDQSpec) -> np.ndarray:
    """ONNX QuantizeLinear then DequantizeLinear, in float64.

    q = saturate(round_half_even((x - offset) / scale) + zero_point) on
    [quant_min, quant_max]; y = (q - zero_point) * scale + offset.
    """
    x = x.double().numpy()
    shape = [1] * x.ndim
    if spec.scale.dim() == 1:
        shape[spec.axis] = -1
    scale = spec.scale.double().numpy().reshape(shape)
    zero = spec.zero_point.double().numpy().reshape(shape)
    offset = 0.0
    if spec.offset is not None:
        offset = spec.offset.double().numpy().reshape(shape)
    t = (x - offset) / scale
    q = np.clip(np.round(t) + zero, spec.quant_min, spec.quant_max)
    return (q - zero) * scale + offset, t


@pytest.mark.parametrize('case', sorted(CASES))
def test_eager_matches_float64_reference(case):
    spec, container, shape = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(shape) * 0.8
    expected, t = qdq_reference(x, spec)
    actual = QuantizeDequantize(spec)(x).double().numpy()

    # float32 and float64 may round differently within 1e-4 of a tie.
    away_from_ties = np.abs(np.abs(t - np.floor(t)) - 0.5) > 1e-4
    assert spec.container()[0] == container
    assert away_from_ties.mean() > 0.99
    np.testing.assert_allclose(
        actual[away_from_ties], expected[away_from_ties], atol=1e-6
    )


def test_constant_replaces_input():
    spec = _spec(0.1, 0, -8, 7)
    constant = torch.tensor([0.31, -0.84, 5.0])
    module = QuantizeDequantize(spec, constant=constant)

    result = module(torch.zeros(3))

    assert torch.allclose(result, torch.tensor([0.3, -0.8, 0.7]))


def test_zero_point_outside_container_raises():
    with pytest.raises(ValueError, match='zero points in \\[9, 9\\]'):
        _spec(0.1, 9, -8, 7)


def test_more_than_256_levels_raises():
    with pytest.raises(ValueError, match='512 levels'):
        _spec(0.1, 0, -256, 255)


class _AllCases(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qdqs = nn.ModuleDict(
            {
                name: QuantizeDequantize(spec)
                for name, (spec, _, _) in CASES.items()
            }
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = []
        for name, (_, _, shape) in CASES.items():
            sample = x[: shape[0], : shape[1], : shape[2], : shape[3]]
            outputs.append(self.qdqs[name](sample))
        return tuple(outputs)


def test_onnxruntime_matches_eager(tmp_path):
    torch.manual_seed(1)
    model = _AllCases().eval()
    x = torch.randn(3, 3, 5, 5) * 0.8
    path = str(tmp_path / 'qdq.onnx')

    torch.onnx.export(
        model,
        (x,),
        path,
        input_names=['x'],
        opset_version=QDQ_OPSET,
        dynamo=True,
        custom_translation_table=qdq_translations(),
        verbose=False,
    )
    graph = onnx.load(path).graph
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    actual = session.run(None, {'x': x.numpy()})
    expected = model(x)

    ops = [node.op_type for node in graph.node]
    zero_types = {
        onnx.TensorProto.DataType.Name(init.data_type)
        for init in graph.initializer
        if init.data_type
        in (
            onnx.TensorProto.INT4,
            onnx.TensorProto.UINT4,
            onnx.TensorProto.INT8,
        )
    }
    assert ops.count('QuantizeLinear') == len(CASES)
    assert ops.count('DequantizeLinear') == len(CASES)
    assert zero_types == {'INT4', 'UINT4', 'INT8'}
    for name, ort_out, torch_out in zip(CASES, actual, expected):
        assert np.array_equal(ort_out, torch_out.numpy()), name

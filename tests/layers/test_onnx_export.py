"""ONNX export of an eval-mode model with PWLU: standard ops only, matches PyTorch in ORT."""
import pytest
import torch

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from pwlu_mmdet import PWLU  # noqa: E402


def _model(realign=True):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), PWLU(4, num_intervals=8), torch.nn.Conv2d(4, 4, 1),
        PWLU(mode='layer', num_intervals=16))
    model.train()
    model(torch.randn(4, 3, 9, 9) * 2)
    if realign:
        for layer in model:
            if isinstance(layer, PWLU):
                layer.realign()
                with torch.no_grad():  # trained-looking parameters, not the reset ReLU
                    layer.points.add_(torch.randn_like(layer.points) * 0.2)
                    layer.left_slope.fill_(-0.1)
                    layer.right_slope.fill_(1.3)
    return model.eval()


def _export(model, x, path, dynamo):
    kwargs = dict(input_names=['x'], output_names=['y'])
    if dynamo:
        kwargs.update(dynamo=True, opset_version=18)
    else:
        kwargs.update(dynamo=False, opset_version=17,
                      dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}})
    torch.onnx.export(model, (x, ), path, **kwargs)
    graph = onnx.load(path).graph
    onnx.checker.check_model(onnx.load(path))
    return {(n.domain, n.op_type) for n in graph.node}


def _run(path, x):
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize('dynamo', [False, True], ids=['torchscript', 'dynamo'])
def test_export_matches_pytorch(tmp_path, dynamo):
    model = _model()
    x = torch.randn(2, 3, 10, 10) * 3
    path = str(tmp_path / 'pwlu.onnx')
    ops = _export(model, x, path, dynamo)
    assert all(domain in ('', 'ai.onnx') for domain, _ in ops), ops  # no custom op domain
    assert ('', 'Conv') in ops
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(_run(path, x), expected, atol=1e-5, rtol=1e-5)
    if not dynamo:  # dynamic axes: another input size, far outside the ranges too
        x2 = torch.randn(3, 3, 7, 12) * 10
        with torch.no_grad():
            expected = model(x2)
        torch.testing.assert_close(_run(path, x2), expected, atol=1e-4, rtol=1e-5)


def test_phase_one_exports_as_relu(tmp_path):
    model = _model(realign=False)
    x = torch.randn(2, 3, 10, 10)
    path = str(tmp_path / 'relu.onnx')
    ops = _export(model, x, path, dynamo=False)
    assert ('', 'Relu') in ops and ('', 'Gather') not in ops
    with torch.no_grad():
        torch.testing.assert_close(_run(path, x), model(x), atol=1e-5, rtol=1e-5)

"""convert_activations on small modules: each kind of site, what is kept, the options, the
errors (which change nothing), with_cp, frozen stages, copies, ONNX export."""
import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip('mmdet')

from mmdet.models.backbones import ResNet  # noqa: E402

from pwlu_mmdet import PWLU  # noqa: E402
from pwlu_mmdet.layers import realign_model, statistics_step  # noqa: E402
from pwlu_mmdet.models import ConvertedAway, convert_activations  # noqa: E402


class Net(nn.Module):
    """One ReLU at two places and in a loop over two fcs; a gate; a functional clamp; a ReLU
    built and never called."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 6, 1)
        self.fcs = nn.ModuleList([nn.Linear(6, 5), nn.Linear(5, 7)])
        self.head = nn.Linear(7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.gate = nn.Sigmoid()
        self.unused = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x)) * self.gate(x.mean(1, keepdim=True))
        x = x.mean((2, 3))
        for fc in self.fcs:
            x = self.relu(fc(x))
        return F.relu(self.head(x))


class Tokens(nn.Module):
    """A transformer-style FFN on ``(B, L, C)`` tokens with a functional GELU."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 8)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def inputs():
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))


def test_each_kind_of_site():
    torch.manual_seed(0)
    model = Net()
    report = convert_activations(model, dict(type='PWLU'), inputs=inputs())
    got = [(e.path, e.kind, e.channels, e.action) for e in report]
    assert got == [('act1', 'shared', 4, 'converted'), ('act2', 'shared', 6, 'converted'),
                   ('act3.0', 'loop', 5, 'converted'), ('act3.1', 'loop', 7, 'converted'),
                   ('', 'functional', 2, 'clamp')]
    assert [n for n, m in model.named_modules() if isinstance(m, PWLU)] == [
        'act1', 'act2', 'act3.0', 'act3.1']
    assert isinstance(model.gate, nn.Sigmoid)  # gates are not activation sites
    assert report.unreached == ['unused']
    for name in ('relu', 'unused'):  # no longer modules: no state, no module tree entry
        assert isinstance(getattr(model, name), ConvertedAway)
        with pytest.raises(RuntimeError, match=f"exclude=\\['{name}'\\]"):
            getattr(model, name)(torch.zeros(1))
    assert 'act1' in str(report) and 'clamp' in str(report)


def test_stock_copies_keep_keys_and_outputs():
    torch.manual_seed(0)
    stock = Net()
    model = copy.deepcopy(stock)
    convert_activations(model, None, inputs=inputs())
    assert list(model.state_dict()) == list(stock.state_dict())
    assert isinstance(model.act1, nn.ReLU) and model.act1.inplace
    x = inputs()
    assert torch.equal(model(x), stock(x))


def test_phase_one_is_relu_and_phase_two_trains():
    torch.manual_seed(0)
    stock = Net()
    model = copy.deepcopy(stock)
    convert_activations(model, dict(type='PWLU'), inputs=inputs())
    x = inputs()
    assert torch.equal(model.eval()(x), stock.eval()(x))
    model.train()
    with statistics_step(model):
        model(x)
    realign_model(model)
    model(x).sum().backward()
    assert all(m.points.grad is not None for m in model.modules() if isinstance(m, PWLU))


def test_functional_site_on_tokens_is_channels_last():
    torch.manual_seed(0)
    model = Tokens()
    x = torch.randn(2, 3, 8)
    report = convert_activations(model, dict(type='PWLU'), inputs=x)
    assert [(e.path, e.kind, e.channels, e.channel_axis) for e in report] == [
        ('act1', 'functional', 12, -1)]
    assert model.act1.channel_axis == -1 and model.act1.num_channels == 12
    model.train()
    model(x)
    realign_model(model)
    y = model(x)
    # the same layer on the tokens as rows (N, C)
    rows = model.act1(model.fc1(x).reshape(-1, 12)).reshape(2, 3, 12)
    assert torch.equal(y, model.fc2(rows))


class DynamicHead(nn.Module):
    """Per-instance kernels computed from the input (CondInst style, with and without autograd
    history, as post-processing detaches them) beside a weight-standardized conv."""

    def __init__(self, detach):
        super().__init__()
        self.detach = detach
        self.controller = nn.Linear(4, 2 * 4 * 4)
        self.conv_ws = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        weight = self.conv_ws.weight
        weight = (weight - weight.mean((1, 2, 3), keepdim=True)) / weight.std()
        x = F.relu(F.conv2d(x, weight, self.conv_ws.bias))  # a fixed layer: converted
        kernels = self.controller(x.mean((2, 3)))  # (N instances, 2 x 4 x 4)
        if self.detach:
            kernels = kernels.detach()
        n = x.shape[0]
        feats = x.reshape(1, n * 4, *x.shape[2:])
        first, second = kernels.split(16, dim=1)
        y = F.relu(F.conv2d(feats, first.reshape(n * 4, 4, 1, 1), groups=n))  # kept: dynamic
        return F.conv2d(y, second.reshape(n * 4, 4, 1, 1), groups=n)


@pytest.mark.parametrize('detach', [False, True])
def test_activation_between_dynamic_convs_is_kept(detach):
    model = DynamicHead(detach)
    x = torch.randn(3, 4, 5, 5)
    report = convert_activations(model, dict(type='PWLU'), inputs=x)
    assert [(e.kind, e.channels, e.action) for e in report] == [
        ('functional', 4, 'converted'), ('functional', 12, 'dynamic')]
    realign_model(model)
    model.eval()
    assert model(torch.randn(5, 4, 5, 5)).shape == (1, 20, 5, 5)  # another instance count


def test_include_exclude():
    report = convert_activations(Net(), dict(type='PWLU'), inputs=inputs(), exclude=['act3'])
    assert [e.action for e in report if e.path.startswith('act3')] == []
    assert {e.path: e.action for e in report}['relu'] == 'excluded'
    model = Net()
    report = convert_activations(model, dict(type='PWLU'), inputs=inputs(), include=['act2'])
    assert [e.path for e in report.converted] == ['act2']
    assert isinstance(model.relu, nn.ReLU)  # still called by the sites left stock
    assert isinstance(model.unused, nn.ReLU)  # not selected: left as it is


@pytest.mark.parametrize('kwargs, error', [
    (dict(act_cfg=dict(type='NoSuchActivation')), KeyError),
    (dict(act_cfg=dict(type='PWLU', num_intervals=3)), ValueError),
    (dict(act_cfg=dict(type='PWLU'), exclude=['nowhere']), ValueError),
    (dict(act_cfg=dict(type='PWLU'), include=['act1', 'nowhere.*']), ValueError),
    (dict(act_cfg=dict(type='PWLU'), frozen='sometimes'), ValueError),
])
def test_bad_calls_change_nothing(kwargs, error):
    model = Net()
    before = (type(model), dict(model.named_modules()), copy.deepcopy(model.state_dict()))
    with pytest.raises(error, match='nowhere|NoSuch|num_intervals|frozen'):
        convert_activations(model, inputs=inputs(), **kwargs)
    assert (type(model), dict(model.named_modules())) == before[:2]
    assert all(torch.equal(v, before[2][k]) for k, v in model.state_dict().items())


def test_wrapped_or_converted_twice_is_refused():
    with pytest.raises(TypeError, match='before wrapping'):
        convert_activations(nn.DataParallel(Net()), dict(type='PWLU'), inputs=inputs())
    model = Net()
    convert_activations(model, dict(type='PWLU'), inputs=inputs())
    with pytest.raises(RuntimeError, match='already converted'):
        convert_activations(model, dict(type='Swish'), inputs=inputs())


def test_channels_last_sites_need_a_channel_axis():
    with pytest.raises(ValueError, match='channels-last tokens.*FReLU'):
        convert_activations(Tokens(), dict(type='FReLU'), inputs=torch.randn(2, 3, 8))


def test_copy_and_pickle_of_a_converted_model():
    model = Net()
    convert_activations(model, dict(type='PWLU'), inputs=inputs())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert type(other) is type(model)
        x = inputs()
        assert torch.equal(other.eval()(x), model.eval()(x))
        assert other.act1 is not model.act1


def resnet(norm_cfg=dict(type='GN', num_groups=4), **kwargs):
    torch.manual_seed(0)
    model = ResNet(18, base_channels=8, norm_cfg=norm_cfg, **kwargs)
    report = convert_activations(model, dict(type='PWLU'), inputs=inputs())
    return model, report


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for with_cp in (False, True):
        model, _ = resnet(with_cp=with_cp)
        model.train()
        with statistics_step(model):
            model(x)
        realign_model(model)
        model(x.clone().requires_grad_())[-1].square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and any('act' in k for k in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_frozen_stages_and_norm_eval_are_kept():
    torch.manual_seed(0)
    model, report = resnet(norm_cfg=dict(type='BN'), frozen_stages=1, norm_eval=True)
    frozen = [e.path for e in report if e.action == 'frozen']
    assert frozen == ['relu'] + [f'layer1.{b}.relu' for b in (0, 0, 1, 1)]
    assert isinstance(model.relu, nn.ReLU) and isinstance(model.layer1[0].relu, nn.ReLU)
    model.train()
    assert not model.layer1.training and not model.norm1.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert isinstance(model.layer2[0].act1, PWLU) and model.layer2[0].act1.training
    assert not any(p.requires_grad for p in model.layer1.parameters())


def test_onnx_export_of_a_converted_model(tmp_path):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    model, _ = resnet()
    x = torch.randn(1, 3, 32, 32)
    model.train()
    with statistics_step(model):
        model(x)
    realign_model(model)
    model.eval()
    path = str(tmp_path / 'resnet.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x, ), path, dynamo=False, opset_version=17)
    onnx.checker.check_model(onnx.load(path))
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=1e-4)


class SuperCall(Net):
    """Reaches Net.forward through super(): its calls cannot be rewritten in place."""

    def forward(self, x):
        return super().forward(x) * 2


def test_a_site_that_cannot_be_converted_names_the_way_out():
    model = SuperCall()
    with pytest.raises(ValueError, match=r"Net.forward runs through super\(\).*exclude=\['relu'\]"):
        convert_activations(model, dict(type='PWLU'), inputs=inputs())
    assert type(model) is SuperCall and isinstance(model.relu, nn.ReLU)
    report = convert_activations(model, dict(type='PWLU'), inputs=inputs(), exclude=['relu'])
    assert {e.action for e in report} == {'excluded', 'clamp'}
    assert isinstance(model.relu, nn.ReLU)

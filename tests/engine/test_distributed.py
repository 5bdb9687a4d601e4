"""PWLU under 2-process gloo DDP through a real mmengine Runner (different data per rank)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip('mmengine')

WORLD = 2
REALIGN_ITER = 3
MAX_ITERS = 6


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _gloo_threads() -> list:
    """Names of this process's threads that belong to gloo or the TCP store."""
    names = []
    for tid in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{tid}/comm') as f:
            names.append(f.read().strip())
    return [n for n in names if 'gloo' in n or 'tcpstore' in n]


def _teardown_joins_gloo_threads() -> bool:
    """Run the job-end teardown; True when gloo's threads (transport loop, workers, store)
    are gone afterwards. Left running, they can abort the process at interpreter exit."""
    from pwlu_mmdet.utils.dist import destroy_process_group
    assert _gloo_threads()  # (the check below can tell)
    destroy_process_group()
    assert not dist.is_initialized()
    return not _gloo_threads()


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # Imported before the group exists, as in tools/train.py: some torch.distributed modules
    # that mmengine imports take group.WORLD as a default argument value, which would then
    # hold the group past destroy_process_group().
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    import pwlu_mmdet.engine  # noqa: F401
    from pwlu_mmdet.engine import PWLUGradSync
    from pwlu_mmdet.utils.testing import tiny_runner_cfg

    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        records = {'syncs': []}
        original_sync = PWLUGradSync.sync

        def counting_sync(self):
            records['syncs'].append(runner.iter)
            original_sync(self)

        PWLUGradSync.sync = counting_sync

        class Recorder(Hook):
            priority = 'LOWEST'

            def before_train_iter(self, runner, batch_idx, data_batch=None):
                # LOWEST priority: runs after PWLUHook, so this sees the reset values.
                if runner.iter == REALIGN_ITER:
                    records['reset'] = _state(runner.model.module)

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                records[runner.iter] = _state(runner.model.module)

        cfg = tiny_runner_cfg(
            os.path.join(out_dir, f'work{rank}'), MAX_ITERS, REALIGN_ITER, data_seed=rank,
            launcher='pytorch',
            # CPU DDP: device_ids must be None; no find_unused_parameters on purpose.
            model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None,
                                   broadcast_buffers=False))
        cfg['custom_hooks'].append(Recorder())
        runner = Runner(**cfg)
        records['init'] = _state(runner.model.module)
        runner.train()
        del runner  # as tools/train.py does before the teardown
        records['threads_joined'] = _teardown_joins_gloo_threads()
        torch.save(records, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        if dist.is_initialized():  # the test failed before the teardown
            dist.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_records(tmp_path_factory):
    from pwlu_mmdet.utils.testing import free_port
    out = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f'rank{r}.pt', weights_only=False) for r in range(WORLD)]


PWLU_PARAMS = [f'{layer}.{name}' for layer in ('act1', 'act2') for name in (
    'points', 'left_bound', 'right_bound', 'left_slope', 'right_slope')]


@pytest.mark.slow
def test_ranks_saw_different_statistics(ddp_records):
    before = REALIGN_ITER - 1
    r0, r1 = (rec[before] for rec in ddp_records)
    for name in ('act1.running_mean', 'act1.running_std'):
        assert not torch.allclose(r0[name], r1[name]), name


@pytest.mark.slow
def test_teardown_joins_gloo_threads_after_training(ddp_records):
    """Nothing left of the runner (DDP, PWLU grad sync, hooks) keeps the group alive."""
    assert [rec['threads_joined'] for rec in ddp_records] == [True] * WORLD


@pytest.mark.slow
def test_phase_one_frozen_on_every_rank(ddp_records):
    for rec in ddp_records:
        for it in range(1, REALIGN_ITER):
            for name in PWLU_PARAMS:
                assert torch.equal(rec[it][name], rec['init'][name]), (it, name)


@pytest.mark.slow
def test_pwlu_gradients_reduced_only_in_phase_two(ddp_records):
    """No collective for PWLU gradients in phase I (not in DDP's reducer, no sync); one flat
    all-reduce per backward in phase II."""
    for rec in ddp_records:
        assert rec['syncs'] == list(range(REALIGN_ITER, MAX_ITERS))


@pytest.mark.slow
def test_realign_combines_rank_statistics(ddp_records):
    """Both ranks reset from the mixture of the ranks' statistics (not averaged stds)."""
    before = REALIGN_ITER - 1
    for layer in ('act1', 'act2'):
        means = torch.stack([rec[before][f'{layer}.running_mean'].double()
                             for rec in ddp_records])
        stds = torch.stack([rec[before][f'{layer}.running_std'].double() for rec in ddp_records])
        mean = means.mean(0)
        std = ((stds**2 + means**2).mean(0) - mean**2).sqrt()
        if layer == 'act1':  # act2 sees GroupNorm-ed input: similar statistics on both ranks
            # Averaging the stds would give something else: the test can tell them apart.
            assert not torch.allclose(std, stds.mean(0), rtol=1e-3)
        for rec in ddp_records:
            reset = rec['reset']  # right after the realignment at iteration REALIGN_ITER
            torch.testing.assert_close(reset[f'{layer}.running_mean'].double(), mean)
            torch.testing.assert_close(reset[f'{layer}.running_std'].double(), std)
            torch.testing.assert_close(reset[f'{layer}.left_bound'].double(), mean - 3 * std)
            torch.testing.assert_close(reset[f'{layer}.right_bound'].double(), mean + 3 * std)
            assert reset[f'{layer}.phase'].item() == 2
    for name, value in ddp_records[0]['reset'].items():
        assert torch.equal(value, ddp_records[1]['reset'][name]), name


@pytest.mark.slow
def test_identical_parameters_after_switch_and_further_steps(ddp_records):
    r0, r1 = ddp_records
    for it in range(REALIGN_ITER, MAX_ITERS):
        for name, value in r0[it].items():
            if 'running' in name or 'num_batches' in name:
                continue
            assert torch.equal(value, r1[it][name]), (it, name)
    # The PWLU parameters really trained in phase II (and identically on both ranks).
    # (the outer slopes may keep zero gradients: few inputs fall outside mu +- 3 std)
    for name in PWLU_PARAMS:
        if 'slope' not in name:
            assert not torch.equal(r0[MAX_ITERS - 1][name], r0['reset'][name]), name


def _accumulation_worker(rank: int, port: int, out_dir: str) -> None:
    """Plain DDP (no Runner): no_sync() accumulation, then a synchronised backward."""
    import copy

    from torch.nn.parallel import DistributedDataParallel

    from pwlu_mmdet import PWLU
    from pwlu_mmdet.engine import install_pwlu_grad_sync

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), PWLU(4, num_intervals=4),
                                    torch.nn.Linear(4, 1))
        g = torch.Generator().manual_seed(100 + rank)
        xs = [torch.randn(8, 3, generator=g) * (1 + rank) for _ in range(3)]
        model(xs[0])  # phase-I statistics
        ddp = DistributedDataParallel(model)  # built in phase I: PWLU not in the reducer
        sync = install_pwlu_grad_sync(ddp)
        assert install_pwlu_grad_sync(ddp) is sync  # idempotent
        calls = []
        original = sync.sync
        sync.sync = lambda: (calls.append(1), original())
        model[1].realign()
        local = copy.deepcopy(model)  # same parameters, no DDP: this rank's own gradients
        with ddp.no_sync():
            ddp(xs[1]).square().sum().backward()
        ddp(xs[2]).square().sum().backward()
        for x in xs[1:]:
            local(x).square().sum().backward()
        assert len(calls) == 1  # none inside no_sync(), one for the synchronised backward
        del ddp, sync  # the model stays: the grad sync installed on it must not hold the group
        threads_joined = _teardown_joins_gloo_threads()
        torch.save(dict(synced={n: p.grad for n, p in model[1].named_parameters()},
                        local={n: p.grad for n, p in local[1].named_parameters()},
                        threads_joined=threads_joined),
                   os.path.join(out_dir, f'acc{rank}.pt'))
    finally:
        if dist.is_initialized():  # the test failed before the teardown
            dist.destroy_process_group()


@pytest.mark.slow
def test_grad_sync_averages_accumulated_gradients(tmp_path):
    from pwlu_mmdet.utils.testing import free_port
    mp.spawn(_accumulation_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    recs = [torch.load(tmp_path / f'acc{r}.pt') for r in range(WORLD)]
    assert all(rec.pop('threads_joined') for rec in recs)
    for name, grad in recs[0]['synced'].items():
        expected = sum(rec['local'][name] for rec in recs) / WORLD
        if 'slope' not in name:  # (few inputs reach the outer pieces: zero slope grads)
            assert not torch.allclose(recs[0]['local'][name], recs[1]['local'][name]), name
        for rec in recs:
            torch.testing.assert_close(rec['synced'][name], expected, rtol=1e-5, atol=1e-6)


def _non_finite_worker(rank: int, port: int, out_dir: str) -> None:
    """Phase I on two ranks with non-finite batches on rank 1 only, a channel that is NaN on
    both, and a layer shared by three levels; then the distributed realignment."""
    import warnings

    from pwlu_mmdet import PWLU, statistics_step

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=WORLD)
    try:
        g = torch.Generator().manual_seed(rank)
        act = PWLU(3)
        shared = PWLU(2)
        for step in range(20):
            x = torch.randn(4, 3, 5, 5, generator=g) * (1 + rank) + rank
            x[:, 2] = float('nan')  # channel 2: never finite, on any rank
            if rank == 1 and step == 3:
                x[0, 0, 0, 0] = float('inf')  # one inf element
            if rank == 1 and step == 5:
                x[:, 1] *= 1e5  # float16 overflow, as under --amp
                x = x.half()
            with statistics_step(act), statistics_step(shared):
                act(x)
                for shift in (-4.0, 0.0, 4.0):  # the levels
                    shared(torch.randn(2, 2, 8 >> int(shift > 0), 8, generator=g) + shift)
        local = {name: {k: v.clone() for k, v in m.state_dict().items()}
                 for name, m in (('act', act), ('shared', shared))}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            act.realign(name='act')
            shared.realign(name='shared')
        torch.save(dict(local=local, act=act.state_dict(), shared=shared.state_dict(),
                        warnings=[str(w.message) for w in caught]),
                   os.path.join(out_dir, f'nonfinite{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_realign_with_non_finite_batches(tmp_path):
    from pwlu_mmdet.utils.testing import free_port
    mp.spawn(_non_finite_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    recs = [torch.load(tmp_path / f'nonfinite{r}.pt') for r in range(WORLD)]
    for name in ('act', 'shared'):
        for key, value in recs[0][name].items():
            assert torch.equal(value, recs[1][name][key]), (name, key)  # identical ranks
            if value.is_floating_point():
                assert torch.isfinite(value).all(), (name, key)
    local = [rec['local']['act'] for rec in recs]
    # Rank 1 skipped its inf batch in channel 0 and its float16 overflow in channel 1; both
    # ranks skipped every batch of channel 2. The sums over the ranks are in the buffers.
    assert local[0]['channel_batches_skipped'].tolist() == [0, 0, 20]
    assert local[1]['channel_batches_skipped'].tolist() == [1, 1, 20]
    act = recs[0]['act']
    assert act['channel_batches_skipped'].tolist() == [1, 1, 40]
    assert act['channel_batches_tracked'].tolist() == [39, 39, 0]
    # Channels 0 and 1: the mixture of the two ranks' finite statistics.
    means = torch.stack([s['running_mean'][:2].double() for s in local])
    stds = torch.stack([s['running_std'][:2].double() for s in local])
    mean = means.mean(0)
    std = ((stds**2 + means**2).mean(0) - mean**2).sqrt()
    torch.testing.assert_close(act['left_bound'][:2].double(), mean - 3 * std)
    torch.testing.assert_close(act['right_bound'][:2].double(), mean + 3 * std)
    # Channel 2 keeps the initial range, with a warning naming the layer on every rank.
    assert act['left_bound'][2].item() == -3.0 and act['right_bound'][2].item() == 3.0
    for rec in recs:
        assert any("PWLU 'act'" in w and '1 of 3 channels (2)' in w for w in rec['warnings'])
        assert not any("'shared'" in w for w in rec['warnings'])
    # The shared layer's range covers its three levels (means -4, 0, +4) on both ranks.
    shared = recs[0]['shared']
    assert (shared['left_bound'] < -6).all() and (shared['right_bound'] > 6).all()

"""Per policy: AM-Q, support fraction, left fraction, mean disagreement along the rollout, real score."""
import sys, json, torch
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[4] / 'scripts'))
from ope_probe import load_finished_run
from uepo.phases.improve import am_q, amq_setting
from uepo.phases import BatchSampler
from uepo.evaluate import rank_correlation
torch.set_num_threads(1)
out = []
for root in sys.argv[1:]:
    from pathlib import Path
    fin = load_finished_run(Path(root))
    support, horizon = amq_setting(fin.data, fin.dynamics, fin.critics, fin.cfg)
    dyn = fin.dynamics
    orig = dyn.step_with_disagreement
    rec = []
    def step(obs, a, gen, _orig=orig):
        r = _orig(obs, a, gen); rec.append(r[3]); return r
    dyn.step_with_disagreement = step
    idx = BatchSampler(fin.data, 0.0, 1)(256, torch.Generator().manual_seed(fin.cfg.seed * 1000 + 4242))
    starts = fin.data.histories(idx, fin.policy.history)
    res = []
    for k, act in enumerate(fin.acts):
        rec.clear()
        a = am_q(act, dyn, fin.critics, starts, horizon, fin.data.normalize, support)
        dis = torch.stack(rec[:50]).mean().item() / support.disagreement
        res.append(dict(real=fin.real[k], amq=a.value, support=a.support_fraction, left=a.left_fraction, dis50=dis))
    print(root, flush=True)
    for k, r in enumerate(res):
        print(f"  {'raw' if k < len(res)//2 else 'imp'}{k % (len(res)//2)} real {r['real']:5.1f} amq {r['amq']:7.2f} support {r['support']:.3f} left {r['left']:.3f} dis50 {r['dis50']:.3f}", flush=True)
    for key in ('amq', 'support', 'left', 'dis50'):
        print(f"  rho {key}: {rank_correlation([r[key] for r in res], [r['real'] for r in res])}", flush=True)
    out.append(dict(run=root, res=res))
    json.dump(out, open('disag_' + sys.argv[1].split('/')[-1] + '_' + str(len(sys.argv)) + '.json', 'w'))

"""The latent step's hot path: the observer hook (helper 'lens' relies on it) and the fed vector against an
independent computation; bookkeeping kept on the device must give the same trace as before."""
from __future__ import annotations

import torch

from latentmas.engine.alignment import compute_alignment
from latentmas.engine.kv import SequenceBatch, extend, left_pad
from latentmas.engine.latent import LatentMapper, latent_rollout
from latentmas.engine.models import encode, render_chat


def _start(lm, texts):
    batch = SequenceBatch.empty(lm.model, len(texts), lm.device)
    ids, mask = left_pad([encode(lm.tokenizer, render_chat(lm.tokenizer, [{"role": "user", "content": t}]))
                          for t in texts], lm.pad_token_id, lm.device)
    return batch, extend(lm.model, batch, mask, input_ids=ids)


def test_observer_sees_each_step_and_the_vector_actually_fed(tiny_lm):
    """The observer gets (step, mapped state, fed vector) once per step, and the fed vector is rescale(h · W_a) to
    the target norm, computed here independently in float64. Catches a transposed W_a (W_a is not symmetric), a
    missing rescale or one to the wrong norm, an observer handed the pre-rescale vector, and an observer that
    changes the rollout (results with and without it must be identical)."""
    lm = tiny_lm("qwen2")
    al = compute_alignment(lm.model)
    assert not torch.allclose(al.w_a, al.w_a.T)
    mapper = LatentMapper(al.target_norm, al.w_a, lm.device, lm.dtype)
    texts = ["first prompt", "a second, longer prompt of the batch"]
    seen = []
    batch, h0 = _start(lm, texts)
    last, trace = latent_rollout(lm.model, batch, h0, 3, mapper, "a",
                                 observer=lambda step, hidden, vec: seen.append((step, hidden.clone(), vec.clone())))
    assert [s for s, _, _ in seen] == [0, 1, 2]
    for _, hidden, vec in seen:
        assert hidden.shape == vec.shape == (2, lm.model.config.hidden_size)
        x = hidden.double() @ al.w_a.double()
        want = x * (al.target_norm / x.norm(dim=-1, keepdim=True))
        assert torch.allclose(vec.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(seen[0][1], h0)
    assert [[round(n, 4) for n in row] for row in trace.norms] == \
        [[round(float((h.double() @ al.w_a.double())[b].norm()), 4) for _, h, _ in seen] for b in range(2)]
    batch2, h0b = _start(lm, texts)
    last2, trace2 = latent_rollout(lm.model, batch2, h0b, 3, mapper, "a")
    assert torch.equal(last, last2) and trace.norms == trace2.norms and trace2.failed_at == [None, None]

import pytest
import torch

from recon.fields.appearance import AppearanceEmbedding


def test_lookup_gradients_and_eval_fallback():
    emb = AppearanceEmbedding(num_cameras=4, dim=3)
    idx = torch.tensor([0, 2, 2])
    out = emb(idx)
    assert out.shape == (3, 3) and torch.equal(out[1], out[2])
    out.sum().backward()
    grad = emb.weight.grad
    assert grad[2].abs().sum() > 0 and grad[1].abs().sum() == 0  # only looked-up rows learn
    emb.eval()  # unseen evaluation cameras: every ray gets the mean embedding
    mean = emb.weight.detach().mean(0)
    assert torch.allclose(emb(torch.tensor([0, 3])), mean.expand(2, 3))
    zeros = AppearanceEmbedding(4, 3, fallback="zeros").eval()
    assert torch.equal(zeros(torch.tensor([1])), torch.zeros(1, 3))


def test_bad_indices():
    emb = AppearanceEmbedding(2, 3)
    with pytest.raises(IndexError):
        emb(torch.tensor([2]))
    with pytest.raises(TypeError):
        emb(torch.tensor([0.5]))

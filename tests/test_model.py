"""The paper CNN (docs/reproduction.md §4): shapes, parameter counts, Keras BatchNorm, Glorot init."""

import math

import pytest
import torch
from torch import nn

from heatedasc.model import ASCNet, block_output_shapes, count_parameters

torch.set_num_threads(1)

PAPER_SHAPES = [(16, 254, 860), (32, 126, 429), (32, 124, 427), (64, 61, 213), (64, 59, 211)]


def test_block_output_shapes_paper_size():
    model = ASCNet()
    assert block_output_shapes(model, (256, 862)) == PAPER_SHAPES
    assert block_output_shapes(model, (1, 256, 862)) == PAPER_SHAPES


def test_block_output_shapes_refuse_exactly_the_inputs_a_real_forward_refuses():
    # the meta device returns a 0-sized side where a real convolution raises; the planner relies on the same answer
    model = ASCNet().eval()
    refused = []
    for height in range(1, 25):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 1, height, 24))
            real_ok = True
        except RuntimeError:
            real_ok = False
        try:
            shapes = block_output_shapes(model, (height, 24))
        except RuntimeError:
            assert not real_ok, height
            refused.append(height)
        else:
            assert real_ok, height
            assert all(0 not in shape for shape in shapes)
    assert refused == list(range(1, 21))  # 20 rows leave block 5 nothing (18, 8, 6, 2, 0); 21 leave it one row
    with pytest.raises(RuntimeError, match=r"^block 2: its input \(16, 2, 38\) gives an empty output \(32, 0, 18\)$"):
        block_output_shapes(model, (4, 40))


def test_real_forward_matches_listed_shapes_and_embedding():
    torch.manual_seed(0)
    model = ASCNet().eval()
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:]))) for b in model.blocks]
    x = torch.randn(1, 1, 256, 862)
    with torch.no_grad():
        logits, emb = model.forward_with_embedding(x)
    for h in hooks:
        h.remove()
    assert seen == PAPER_SHAPES
    assert logits.shape == (1, 10) and emb.shape == (1, 64)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), emb)
        assert torch.allclose(model(x), model.classifier(emb))
        # embedding is the global average of the last block's output
        assert torch.allclose(emb, model.features(x).mean(dim=(2, 3)), atol=1e-6)


def test_parameter_counts_match_paper():
    trainable, keras = count_parameters(ASCNet())
    assert trainable == 70_538
    assert keras == 70_954


def test_batchnorm_is_keras_configured():
    model = ASCNet(bn_momentum_keras=0.99, bn_eps=1e-3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 5
    for bn in bns:
        assert bn.momentum == pytest.approx(0.01)
        assert bn.eps == pytest.approx(1e-3)
        assert bn.affine and bn.track_running_stats
    # each block is conv -> relu -> batchnorm (BN after the nonlinearity, as in the base system)
    for block in model.blocks:
        assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
        assert block[0].padding == (0, 0)
    assert [b[0].stride for b in model.blocks] == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]


def test_glorot_uniform_kernels_and_zero_biases():
    torch.manual_seed(1)
    model = ASCNet()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            receptive = w[0, 0].numel() if w.dim() > 2 else 1
            fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max().item() <= bound + 1e-7
            assert w.abs().max().item() > 0.9 * bound  # uniform fills its range
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
            assert torch.count_nonzero(module.bias) == 0


def test_n_classes_and_mismatched_config():
    assert ASCNet(n_classes=3).classifier.out_features == 3
    with pytest.raises(ValueError, match="model.channels"):
        ASCNet(channels=(16, 32), strides=(1,))


def test_the_cpu_classifier_is_atens_product_and_sum_not_a_gemm(monkeypatch):
    """On the CPU the dense layer is Σ_j w_ij·e_j by ATen's elementwise product and sum: nn.Linear's MKL GEMM rounds
    otherwise on AMD CPUs (heatedasc.pinning). The classifier's own forward must not run there."""
    torch.manual_seed(1)
    model = ASCNet(channels=(4, 8), strides=(1, 2)).eval()

    def no_gemm(*args, **kwargs):
        raise AssertionError("nn.Linear.forward ran on the CPU path")

    with torch.no_grad():
        model.classifier.bias.normal_()  # non-zero: its sign counts
    monkeypatch.setattr(nn.Linear, "forward", no_gemm)
    x = torch.randn(3, 1, 12, 20)
    with torch.no_grad():
        logits, emb = model.forward_with_embedding(x)
        want = emb.double() @ model.classifier.weight.double().T + model.classifier.bias.double()
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logits.double(), want, rtol=1e-6, atol=1e-6)


def test_model_settings_are_checked_and_kept():
    model = ASCNet(n_classes=7, channels=(4, 8, 6), strides=(1, 2, 1))
    assert model.n_classes == 7 and model.embedding_dim == 6
    bn = model.blocks[0][2]
    assert bn.eps == 1e-3 and bn.affine and model.blocks[0][0].padding == (0, 0)
    assert ASCNet(bn_momentum_keras=0.0).blocks[0][2].momentum == 1.0  # 0 is allowed: Keras keeps no history
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^model.bn_momentum_keras must be in \[0, 1\), got {bad}$"):
            ASCNet(bn_momentum_keras=bad)


def test_off_the_cpu_the_classifier_is_the_dense_layer():
    """torch's meta device stands in for CUDA (shapes without numbers): the nn.Linear path runs there."""
    model = ASCNet(channels=(4, 8), strides=(1, 2)).to("meta")
    logits, emb = model.forward_with_embedding(torch.empty(2, 1, 12, 20, device="meta"))
    assert logits.shape == (2, 10) and emb.shape == (2, 8) and logits.device.type == "meta"

"""cudcn.adapters.torch.kernelize on small randomly initialised transformers
detectors built from configs (no downloads): every MultiScaleDeformableAttention
layer runs cudcn's kernel, and logits, boxes and training gradients equal
the default (grid_sample) path's in float64."""

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
kernels = pytest.importorskip("kernels")

import cudcn.adapters.torch as ct  # noqa: E402
from cudcn.adapters.torch import hub_kernels  # noqa: E402

pytestmark = [pytest.mark.torchvision, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def _backbone():
    return transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16],
                                     depths=[1, 1, 1, 1],
                                     out_features=["stage2", "stage3", "stage4"])


def deformable_detr():
    config = transformers.DeformableDetrConfig(
        backbone_config=_backbone(), use_timm_backbone=False, use_pretrained_backbone=False,
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10,
        num_feature_levels=4, encoder_n_points=2, decoder_n_points=3, num_labels=3,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return transformers.DeformableDetrForObjectDetection(config)


MODELS = {"deformable-detr": deformable_detr}


def _attention_layers(model):
    return [m for m in model.modules() if type(m).__name__ == "MultiScaleDeformableAttention"
            and hasattr(type(m), "kernel_layer_name")]


def _off_the_ties(model):
    """Fresh layers put points exactly on pixel centres and on the map's edge,
    where grid_sample's gradient and the kernel's may differ (the transformers guide): move
    them off before comparing gradients."""
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sampling_offsets.weight" in name:
                p.normal_(0, 0.05)


def _outputs(model, pixels):
    out = model(pixel_values=pixels)
    return out.logits, out.pred_boxes


@pytest.mark.parametrize("name", MODELS)
def test_kernelized_inference_gives_the_default_logits(name):
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    reference = copy.deepcopy(model)
    assert ct.kernelize(model) is model
    layers = _attention_layers(model)
    assert layers and all(
        m.forward.__func__ is hub_kernels.MultiScaleDeformableAttentionLayer.forward
        for m in layers)
    assert not any("forward" in vars(m) for m in _attention_layers(reference))
    pixels = torch.randn(2, 3, 128, 96, dtype=torch.float64)
    with torch.no_grad():
        for got, want in zip(_outputs(model, pixels), _outputs(reference, pixels)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_kernelized_training_step_gives_the_default_gradients(name):
    torch.manual_seed(1)
    model = MODELS[name]().double().train()
    _off_the_ties(model)
    reference = copy.deepcopy(model)
    ct.kernelize(model)  # model.training: kernels.Mode.TRAINING
    pixels = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    for m in (model, reference):
        logits, boxes = _outputs(m, pixels)
        (logits.square().sum() + boxes.sum()).backward()
    want = dict(reference.named_parameters())
    checked = 0
    for pname, p in model.named_parameters():
        if p.grad is None:
            assert want[pname].grad is None, pname
            continue
        torch.testing.assert_close(p.grad, want[pname].grad, rtol=1e-8, atol=1e-10, msg=pname)
        checked += "sampling_offsets" in pname or "value_proj" in pname
    assert checked >= 4


def test_kernels_own_kernelize_with_cudcns_mapping_does_the_same():
    model = deformable_detr().eval()
    with kernels.use_kernel_mapping(hub_kernels.kernel_mapping()):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    assert all(m.forward.__func__ is hub_kernels.MultiScaleDeformableAttentionLayer.forward
               for m in _attention_layers(model))


def test_torch_compile_mode_is_accepted():
    model = deformable_detr().eval()
    ct.kernelize(model, mode=kernels.Mode.INFERENCE | kernels.Mode.TORCH_COMPILE)
    assert all(m.forward.__func__ is hub_kernels.MultiScaleDeformableAttentionLayer.forward
               for m in _attention_layers(model))

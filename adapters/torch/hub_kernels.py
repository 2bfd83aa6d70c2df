"""cudcn's kernels in transformers' detectors, through the ``kernels`` library.

transformers marks its deformable attention layers (Deformable DETR,
Grounding DINO, RT-DETR, OmDet-Turbo, LW-DETR, RF-DETR, ...) with
``use_kernel_forward_from_hub("MultiScaleDeformableAttention")``: a layer
name that ``kernels.kernelize`` looks up in a kernel mapping, replacing the
forward of every such layer with the forward of the layer class the
mapping's repository loads. :func:`cudcn.adapters.torch.kernelize` maps
that name, on the CPU and on CUDA, to a repository of cudcn's own whose
``load()`` returns ``MultiScaleDeformableAttentionLayer`` (no download: the layer is in
this package), then calls ``kernels.kernelize``. Nothing is monkeypatched:
``kernels.kernelize(model, mode=...)`` with the same mapping does the same,
and the model keeps its class, parameters and state_dict.
"""

from torch import nn

from . import ops

LAYER_NAME = "MultiScaleDeformableAttention"


class MultiScaleDeformableAttentionLayer(nn.Module):
    """The forward transformers' ``MultiScaleDeformableAttention`` layers call,
    computed by cudcn (:func:`cudcn.adapters.torch.ms_deform_attn`).

    Stateless, as ``kernels`` requires of a kernel layer; its forward has
    the signature of the layer it replaces (``value_spatial_shapes_list``,
    the shapes as Python ints, is not needed: cudcn reads the tensor).
    """

    has_backward = True
    can_torch_compile = True

    def forward(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                sampling_locations, attention_weights, im2col_step):
        return ops.ms_deform_attn(value, value_spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, im2col_step)


class CudcnRepository:
    """A ``kernels`` layer repository that holds cudcn's layer: ``load()``
    returns it (``kernels`` asks for nothing else of a repository)."""

    layer_name = LAYER_NAME

    def load(self):
        return MultiScaleDeformableAttentionLayer

    def __repr__(self):
        return "cudcn (cudcn.adapters.torch.hub_kernels)"


_REPOSITORY = CudcnRepository()  # one object: kernels memoizes loaded layers by repository


def kernel_mapping():
    """The mapping ``kernels.use_kernel_mapping`` takes: transformers' layer
    name to cudcn's repository on the CPU and on CUDA, in every mode."""
    return {LAYER_NAME: {"cpu": _REPOSITORY, "cuda": _REPOSITORY}}


def kernelize(model, *, mode=None, device=None):
    """Run every transformers ``MultiScaleDeformableAttention`` layer of
    ``model`` on cudcn's kernel, for inference and training, on CPU and CUDA.

    Args:
        model: a torch module, typically a transformers model (Deformable
            DETR, Grounding DINO, RT-DETR, OmDet-Turbo, LW-DETR, ...).
        mode: a ``kernels.Mode``; default ``Mode.TRAINING`` if
            ``model.training`` else ``Mode.INFERENCE`` (with or without
            ``Mode.TORCH_COMPILE``: cudcn's op supports both).
        device: as ``kernels.kernelize`` takes it; default the model's.

    Returns:
        ``model``, its layers' forwards replaced (other layers keep what the
        mappings in force give them).

    Raises:
        ImportError: without the ``kernels`` package (``pip install
            cudcn[hf]``).
        ValueError: from ``kernels.kernelize``: a mode with neither
            ``Mode.INFERENCE`` nor ``Mode.TRAINING`` (or ``Mode.FALLBACK``),
            a device type it does not know.

    The layers' forwards then call
    :func:`cudcn.adapters.torch.ms_deform_attn` on the tensors
    transformers gives them (value (N, S, M, D), sampling_locations and
    attention_weights of the model's dtype), so its errors are theirs.

    Example:
        A tiny Deformable DETR from a config, random weights, no download
        (building it takes a few seconds):

        >>> import torch
        >>> import transformers
        >>> import cudcn.adapters.torch as ct
        >>> backbone = transformers.ResNetConfig(
        ...     embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
        ...     out_features=["stage1", "stage2"])
        >>> config = transformers.DeformableDetrConfig(
        ...     backbone_config=backbone, use_timm_backbone=False,
        ...     use_pretrained_backbone=False, d_model=32, encoder_layers=1,
        ...     decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        ...     encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=4,
        ...     num_feature_levels=2, encoder_n_points=2, decoder_n_points=2, num_labels=2)
        >>> _ = torch.manual_seed(0)
        >>> model = transformers.DeformableDetrForObjectDetection(config).eval()
        >>> ct.kernelize(model) is model
        True
        >>> layers = [m for m in model.modules()
        ...           if type(m).__name__ == "MultiScaleDeformableAttention"]
        >>> len(layers), layers[0].forward.__qualname__
        (3, 'MultiScaleDeformableAttentionLayer.forward')
        >>> with torch.no_grad():
        ...     out = model(pixel_values=torch.randn(1, 3, 32, 32))
        >>> tuple(out.logits.shape), tuple(out.pred_boxes.shape)
        ((1, 4, 2), (1, 4, 4))
    """
    try:
        import kernels
    except ImportError as error:
        raise ImportError("cudcn.adapters.torch.kernelize needs the 'kernels' package: "
                          "pip install 'cudcn[hf]'") from error
    if mode is None:
        mode = kernels.Mode.TRAINING if model.training else kernels.Mode.INFERENCE
    with kernels.use_kernel_mapping(kernel_mapping()):
        kernels.kernelize(model, mode=mode, device=device)
    return model

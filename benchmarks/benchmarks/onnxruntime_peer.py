"""ONNX Runtime's CPU DeformConv (opset 19) as a peer of cudcn's forward.

The model is one DeformConv node built with ``onnx.helper``, so the peer does
not depend on cudcn's exporter. The session runs as issue 12 measures it:
CPU provider, 2 intra-op threads, spinning off (a spinning pool would steal
the cores from whatever runs next in the same process).
"""

OPSET = 19
IR_VERSION = 9  # the IR version of opset 19; newer onnx writes one older runtimes refuse


def deform_conv_session(args):
    """An InferenceSession computing deform_conv2d for ``args`` (the shared
    builders' keyword arguments: float32 input, offset, weight, bias, mask,
    stride, padding, dilation), and its input feed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        raise NotImplementedError("onnx and onnxruntime are not both installed") from None
    weight, offset = args["weight"], args["offset"]
    kh, kw = weight.shape[2:]
    pad_h, pad_w = _pair(args["padding"])
    feed = {"X": args["input"], "W": weight, "offset": offset, "B": args["bias"],
            "mask": args["mask"]}
    node = helper.make_node(
        "DeformConv", list(feed), ["Y"], kernel_shape=[kh, kw], pads=[pad_h, pad_w, pad_h, pad_w],
        strides=list(_pair(args["stride"])), dilations=list(_pair(args["dilation"])),
        group=args["input"].shape[1] // weight.shape[1],
        offset_group=offset.shape[1] // (2 * kh * kw))
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape))
              for name, a in feed.items()]
    graph = helper.make_graph([node], "deform_conv2d", values,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return session, feed


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

"""The folded graph (``rmnet.deploy.graph``) written as an ONNX model with ``onnx.helper``:
opset 17, float32, dynamic batch; in-place Caffe blobs become distinct ONNX values, the last
version keeping the blob's name so the outputs are called as in Caffe.

``normalize=True`` appends what trackers do to every descriptor: the output flattened to
``[N, D]`` and each row divided by ``max(||row||_2, 1e-12)`` (as ``rmnet.eval.metrics
.l2_normalize``: an all-zero row stays zero), named ``NORMALIZED_OUTPUT``. ``props`` are
written into the model's ``metadata_props`` (the input convention, ``rmnet.deploy.conventions``)."""
from __future__ import annotations

import numpy as np

from rmnet.deploy.graph import AffineRecord, ConvRecord, Graph

OPSET = 17
NORMALIZED_OUTPUT = "descriptor"
L2_EPS = 1e-12
IR_VERSION = 8            # the IR version that goes with opset 17; read by every runtime here


def to_onnx(g: Graph, doc: str = "", *, normalize: bool = False,
            props: dict[str, str] | None = None):
    """The graph as an ``onnx.ModelProto`` (opset 17, float32, dynamic batch), checked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # ONNX values are written once: versions of an in-place Caffe blob get distinct names, the
    # last version keeps the blob's own name (so the outputs are called as in Caffe).
    total: dict[str, int] = {g.input_name: 1}
    for rec in g.records:
        total[rec.dst] = total.get(rec.dst, 0) + 1
    count: dict[str, int] = {}
    current: dict[str, str] = {}

    def new_name(blob: str) -> str:
        k = count.get(blob, 0)
        count[blob] = k + 1
        name = blob if k == total[blob] - 1 else f"{blob}#{k}"
        current[blob] = name
        return name

    new_name(g.input_name)
    nodes, inits = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    for rec in g.records:
        if isinstance(rec, ConvRecord):
            x = current[rec.src]
            wname = const(f"{rec.name}/weight", rec.weight)
            bname = const(f"{rec.name}/bias", rec.bias)
            nodes.append(helper.make_node(
                "Conv", [x, wname, bname], [new_name(rec.dst)], name=rec.name,
                kernel_shape=list(rec.weight.shape[2:]), strides=list(rec.stride),
                pads=[rec.pad[0], rec.pad[1], rec.pad[0], rec.pad[1]],
                dilations=list(rec.dilation), group=rec.group,
                doc_string="folded: " + ", ".join(rec.folded) if rec.folded else ""))
        elif isinstance(rec, AffineRecord):
            x = current[rec.src]
            shape = (1, -1) + (1,) * (rec.rank - 2)
            sname = const(f"{rec.name}/scale", rec.scale.reshape(shape))
            bname = const(f"{rec.name}/shift", rec.shift.reshape(shape))
            mid = f"{rec.name}/mul"
            nodes.append(helper.make_node("Mul", [x, sname], [mid], name=mid))
            nodes.append(helper.make_node("Add", [mid, bname], [new_name(rec.dst)],
                                          name=f"{rec.name}/add",
                                          doc_string="affine of: " + ", ".join(
                                              [rec.name] + rec.folded)))
        else:
            srcs = [current[s] for s in rec.srcs]
            if rec.consts:   # Eltwise SUM with coefficients
                scaled = []
                for i, (s, c) in enumerate(zip(srcs, rec.consts)):
                    cname = const(f"{rec.name}/coeff{i}", np.asarray(c))
                    out = f"{rec.name}/scaled{i}"
                    nodes.append(helper.make_node("Mul", [s, cname], [out], name=out))
                    scaled.append(out)
                srcs = scaled
            nodes.append(helper.make_node(rec.op_type, srcs, [new_name(rec.dst)],
                                          name=rec.name, **rec.attrs))

    def value_info(name: str, shape: tuple[int, ...]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape[1:]])

    outputs = [value_info(o, g.shapes[o]) for o in g.outputs]
    if normalize:
        if len(g.outputs) != 1:
            raise ValueError(f"normalize needs one output, the net has {g.outputs}")
        dim = int(np.prod(g.shapes[g.outputs[0]][1:]))
        flat, norm, safe = "descriptor/flat", "descriptor/norm", "descriptor/norm_safe"
        nodes += [
            helper.make_node("Flatten", [g.outputs[0]], [flat], name=flat, axis=1),
            helper.make_node("ReduceL2", [flat], [norm], name=norm, axes=[1], keepdims=1),
            helper.make_node("Max", [norm, const("descriptor/eps", np.asarray(L2_EPS))],
                             [safe], name=safe),
            helper.make_node("Div", [flat, safe], [NORMALIZED_OUTPUT], name=NORMALIZED_OUTPUT,
                             doc_string="rows L2-normalised: cosine = dot product")]
        outputs = [value_info(NORMALIZED_OUTPUT, (1, dim))]
    graph = helper.make_graph(nodes, g.name, [value_info(g.input_name, g.input_shape)],
                              outputs, inits)
    model = helper.make_model(graph, producer_name="rmnet.deploy.export", doc_string=doc,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    h, w = g.input_hw
    helper.set_model_props(model, props or {"rmnet.input": "raw BGR 0..255, N x 3 x H x W",
                                            "rmnet.input_height": str(h),
                                            "rmnet.input_width": str(w)})
    onnx.checker.check_model(model, full_check=True)
    return model

"""Test fixtures: IR v5-v7 files (XML + .bin) written from a folded Caffe graph in the published
Model Optimizer 2018-2019 format, as Intel's RMNet releases are.

``write_old_ir(graph, xml)`` takes ``rmnet.deploy.export.load_graph``'s folded graph and writes
``<net name version batch="1">`` with ``<layers>``: ``Input``; ``ScaleShift`` for the input
normalisation; ``Convolution`` with ``<data dilations group kernel output pads_begin pads_end
strides/>`` and ``<blobs><weights offset size/><biases offset size/></blobs>``; ``ReLU``;
the ELUs as ``Activation type="elu"`` (v7) or a layer typed ``elu`` (``elu_style="type"``);
``Eltwise operation="sum"``; ``Pooling pool-method="max"`` (the head's global pooling as a
kernel over the whole map); then ``<edges>``. The ``.bin`` holds the blobs as little-endian
float32 (FP32) or float16 (FP16) at their offsets. Layers are written in a seeded shuffled order
with non-consecutive ids, so the reader has to follow the edges. ``alter`` changes ``<data>``
attributes of named layers (to build graphs that must be refused).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from rmnet.deploy.graph import AffineRecord, ConvRecord, Graph


def write_old_ir(g: Graph, xml_path: str | Path, version: int = 7, precision: str = "FP32",
                 elu_style: str = "activation", alter: dict | None = None,
                 seed: int = 0) -> Path:
    xml_path = Path(xml_path)
    dtype = {"FP32": "<f4", "FP16": "<f2"}[precision]
    bin_chunks: list[bytes] = []
    offset = 0

    def blob(arr: np.ndarray) -> tuple[int, int]:
        nonlocal offset
        data = np.ascontiguousarray(arr, dtype).tobytes()
        bin_chunks.append(data)
        start, offset = offset, offset + len(data)
        return start, len(data)

    layers: list[ET.Element] = []
    edges: list[tuple[int, int, int, int]] = []
    producer: dict[str, tuple[int, int]] = {}   # blob -> (layer id, output port)

    def dims(parent: ET.Element, port: int, shape) -> None:
        p = ET.SubElement(parent, "port", id=str(port))
        for d in shape:
            ET.SubElement(p, "dim").text = str(int(d))

    def layer(name: str, typ: str, srcs: list[str], out_shape, data: dict | None = None,
              weights: np.ndarray | None = None, biases: np.ndarray | None = None) -> int:
        lid = 3 * len(layers) + 5
        el = ET.Element("layer", id=str(lid), name=name, precision=precision, type=typ)
        attrs = dict(data or {})
        attrs.update((alter or {}).get(name, {}))
        if attrs:
            ET.SubElement(el, "data", {k: str(v) for k, v in attrs.items()})
        if srcs:
            inp = ET.SubElement(el, "input")
            for i, s in enumerate(srcs):
                dims(inp, i, g.shapes[s] if s in g.shapes else out_shape)
                src_id, src_port = producer[s]
                edges.append((src_id, src_port, lid, i))
        out = ET.SubElement(el, "output")
        dims(out, len(srcs), out_shape)
        if weights is not None:
            b = ET.SubElement(el, "blobs")
            o, n = blob(weights)
            ET.SubElement(b, "weights", offset=str(o), size=str(n))
            if biases is not None:
                o, n = blob(biases)
                ET.SubElement(b, "biases", offset=str(o), size=str(n))
        layers.append(el)
        return lid

    def pair(v) -> str:
        return f"{int(v[0])},{int(v[1])}"

    h, w = g.input_hw
    producer[g.input_name] = (layer(g.input_name, "Input", [], (1, 3, h, w)), 0)
    for rec in g.records:
        shape = g.shapes[rec.dst]
        if isinstance(rec, AffineRecord):
            lid = layer(rec.name, "ScaleShift", [rec.src], shape, weights=rec.scale,
                        biases=rec.shift)
            srcs = [rec.src]
        elif isinstance(rec, ConvRecord):
            o, _, kh, kw = rec.weight.shape
            lid = layer(rec.name, "Convolution", [rec.src], shape,
                        {"dilations": pair(rec.dilation), "group": rec.group,
                         "kernel": f"{kh},{kw}", "output": o, "pads_begin": pair(rec.pad),
                         "pads_end": pair(rec.pad), "strides": pair(rec.stride)},
                        weights=rec.weight, biases=rec.bias)
            srcs = [rec.src]
        elif rec.op_type == "Relu":
            lid = layer(rec.name, "ReLU", rec.srcs, shape, {"negative_slope": "0"})
            srcs = rec.srcs
        elif rec.op_type == "Elu":
            alpha = rec.attrs["alpha"]
            if elu_style == "activation":
                lid = layer(rec.name, "Activation", rec.srcs, shape,
                            {"alpha": alpha, "type": "elu"})
            else:
                lid = layer(rec.name, "elu", rec.srcs, shape, {"alpha": alpha})
            srcs = rec.srcs
        elif rec.op_type == "Sum":
            lid = layer(rec.name, "Eltwise", rec.srcs, shape, {"operation": "sum"})
            srcs = rec.srcs
        elif rec.op_type == "MaxPool":
            a = rec.attrs
            lid = layer(rec.name, "Pooling", rec.srcs, shape,
                        {"exclude-pad": "true", "kernel": pair(a["kernel_shape"]),
                         "pads_begin": pair(a["pads"][:2]), "pads_end": pair(a["pads"][2:]),
                         "pool-method": "max", "rounding_type": "ceil",
                         "strides": pair(a["strides"])})
            srcs = rec.srcs
        elif rec.op_type == "GlobalMaxPool":
            in_shape = g.shapes[rec.srcs[0]]
            lid = layer(rec.name, "Pooling", rec.srcs, shape,
                        {"exclude-pad": "true", "kernel": f"{in_shape[2]},{in_shape[3]}",
                         "pads_begin": "0,0", "pads_end": "0,0", "pool-method": "max",
                         "rounding_type": "floor", "strides": "1,1"})
            srcs = rec.srcs
        else:
            raise ValueError(f"no IR v{version} layer for {rec.op_type}")
        producer[rec.dst] = (lid, len(srcs))

    net = ET.Element("net", name=g.name, version=str(version), batch="1")
    lay = ET.SubElement(net, "layers")
    order = np.random.default_rng(seed).permutation(len(layers))
    for i in order:
        lay.append(layers[i])
    ed = ET.SubElement(net, "edges")
    for a, ap, b, bp in edges:
        ET.SubElement(ed, "edge", {"from-layer": str(a), "from-port": str(ap),
                                   "to-layer": str(b), "to-port": str(bp)})
    ET.indent(net)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    xml_path.with_suffix(".bin").write_bytes(b"".join(bin_chunks))
    xml_path.write_text('<?xml version="1.0" ?>\n' + ET.tostring(net, encoding="unicode"))
    return xml_path

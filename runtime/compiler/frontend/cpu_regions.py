"""CPU fallback: maximal connected runs of nodes the cores lack, cut out of
the QDQ graph into ir.CpuOp layers (onnxruntime runs them on the host, int8
tensors at the boundary)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from vfpga.runtime.compiler import ir

from .errors import FrontendError, UnsupportedOperatorError
from .ops import QDQ_OPS, RANGE_OPS, VIEW_OPS
from .qdq_values import Ref, hwc, layer_inputs, layer_outputs


class CpuRegions:
    """The CPU-region part of :class:`~vfpga.runtime.compiler.frontend.qdq_reader.QdqReader`."""

    def find(self, rid: int) -> int:
        while self.parent[rid] != rid:
            self.parent[rid] = self.parent[self.parent[rid]]
            rid = self.parent[rid]
        return rid

    def materializable(self, x: str) -> bool:
        """A per-tensor int8 value inside a CPU region that can leave it as an IR tensor."""
        if x not in self.cpu_q or x not in self.shapes:
            return False
        s = list(self.shapes[x])
        return (len(s) == 4 and s[0] == 1) or (len(s) == 2 and s[0] == 1)

    def materialize(self, x: str) -> None:
        """Make the int8 value x of a CPU region an output of it (an IR tensor)."""
        if x in self.tensors:
            return
        s, z = self.cpu_q[x]
        rid = self.find(self.cpu_val[x])
        chain = []
        self.chain_to(x, chain)  # the QuantizeLinear writing x joins the region
        self.region_add(rid, chain)
        self.add_tensor(x, hwc(self.shapes[x], f"'{x}'"), s, z)
        self.tensors[x].onnx_shape = tuple(self.shapes[x])
        self.qref[x] = Ref(x, len(self.shapes[x]) == 2)
        self.materialized[x] = rid

    def on_cpu_reader(self, node, nname, idx, handlers):
        """A node reading a value computed on the CPU."""
        x = node.input[0]
        if node.op_type in QDQ_OPS and x in self.cpu_val:
            rid = self.find(self.cpu_val[x])
            out = node.output[0]
            self.cpu_val[out] = rid
            self.cpu_node[out] = idx  # joins the region when a CPU node reads it (chain_to)
            if node.op_type == "QuantizeLinear":
                try:
                    scale, zp = self.qparams(node, nname)
                except UnsupportedOperatorError:
                    return
                if zp.dtype == np.int8 and scale.size == 1:
                    self.cpu_q[out] = (float(scale.ravel()[0]), int(zp.ravel()[0]))
            else:
                self.cpu_dq[out] = x
            return
        # An accelerator op reading int8 results of the CPU through DequantizeLinear.
        reads = [i for i in node.input if i in self.cpu_val]
        if all(i in self.cpu_dq and self.materializable(self.cpu_dq[i]) for i in reads):
            for i in reads:
                q = self.cpu_dq[i]
                self.materialize(q)
                self.fref[i] = Ref(q, self.qref[q].flat)
            try:
                self.dispatch(node, nname, idx, handlers)
                return
            except UnsupportedOperatorError as e:
                self.cpu_reasons[nname] = e.reason or "no accelerator mapping"
        self.to_cpu(node, nname, idx)

    def chain_to(self, value: str, out: list) -> None:
        """The nodes computing `value` from IR tensors and constants (the
        DequantizeLinear / view / Q-DQ chain at a region's boundary)."""
        if value in self.tensors:
            return
        if value in self.cpu_node:  # a Q/DQ on a region value: walk through to the region
            if self.cpu_node[value] not in out:
                out.append(self.cpu_node[value])
                self.chain_to(self.model.graph.node[self.cpu_node[value]].input[0], out)
            return
        if value in self.cpu_val or value in self.tensors or value in self.initializer_names or not value:
            return
        node = self.producer.get(value)
        if node is None:
            raise FrontendError(f"cannot cut out a CPU subgraph: '{value}' has no producer")
        idx = self.node_index[id(node)]
        if idx in out:
            return
        out.append(idx)
        for i in node.input:
            self.chain_to(i, out)

    def region_deps(self, tensors, memo=None) -> set:
        """Root ids of the CPU regions the given IR tensors depend on."""
        memo = {} if memo is None else memo
        producers = {o: layer for layer in self.layers for o in layer_outputs(layer)}
        result = set()

        def deps(t):
            if t in memo:
                return memo[t]
            memo[t] = set()
            d = set()
            if t in self.materialized:
                r = self.find(self.materialized[t])
                d.add(r)
                for i in self.region_inputs[r]:
                    d |= deps(i)
            elif t in producers:
                for i in layer_inputs(producers[t]):
                    d |= deps(i)
            memo[t] = d
            return d

        for t in tensors:
            result |= deps(t)
        return result

    def region_add(self, rid, idxs, inputs=()):
        self.region_nodes[rid].update(idxs)
        self.region_inputs[rid].update(inputs)
        self.region_seq[rid] = len(self.layers)

    def to_cpu(self, node, nname, idx):
        """Put `node` on the CPU, in the region of the CPU values it reads
        (merging regions it joins), with DequantizeLinear chains from the IR
        tensors it reads at the boundary. Where joining a region would make
        the cut cyclic (the node also reads an accelerator result computed
        from that region), int8 results of the region are read as boundary
        inputs instead, and the node starts a region of its own."""
        rids, boundary, chain = self.cpu_inputs(node, nname, split=set())
        if rids and boundary:
            cyclic = self.region_deps(boundary) & rids
            if cyclic:
                rids, boundary, chain = self.cpu_inputs(node, nname, split=cyclic)
                if rids and boundary and self.region_deps(boundary) & rids:
                    raise FrontendError(
                        f"cannot run {node.op_type} '{nname}' on the CPU: it joins a CPU subgraph and also "
                        f"reads an accelerator result computed from that subgraph's output (the cut would "
                        f"be cyclic)"
                    )
        if rids:
            rid = min(rids)
            for r in rids:
                self.parent[r] = rid
                if r != rid:
                    self.region_nodes[rid] |= self.region_nodes.pop(r)
                    self.region_inputs[rid] |= self.region_inputs.pop(r)
        else:
            rid = len(self.parent)
            self.parent[rid] = rid
            self.region_nodes[rid], self.region_inputs[rid] = set(), set()
        self.region_add(rid, chain + [idx], boundary)
        for o in node.output:
            if o:
                self.cpu_val[o] = rid

    def cpu_inputs(self, node, nname, split: set):
        """(regions joined, boundary IR tensors, chain node indices) of a
        node put on the CPU; values of the regions in `split` that are int8
        results read through a DequantizeLinear become boundary inputs."""
        rids, boundary, chain = set(), set(), []
        for i in node.input:
            if not i:
                continue
            if i in self.cpu_val and self.find(self.cpu_val[i]) in split:
                q = self.cpu_dq.get(i)
                if q is None or not self.materializable(q):
                    raise FrontendError(
                        f"cannot run {node.op_type} '{nname}' on the CPU: it reads '{i}' of a CPU subgraph "
                        f"whose output also feeds the accelerator results it reads (the cut would be cyclic)"
                    )
                self.materialize(q)
                boundary.add(q)
                self.chain_to(i, chain)
            elif i in self.cpu_val:
                rids.add(self.find(self.cpu_val[i]))
                self.chain_to(i, chain)
            elif i in self.ewise and not (i in self.ewise_q and i in self.tensors):
                boundary.add(self.ewise[i])  # the element-wise chain joins the CPU subgraph
                self.chain_to(i, chain)
            elif i in self.fref or i in self.qref:
                ref = self.fref.get(i) or self.qref[i]
                boundary.add(ref.q)
                self.chain_to(i, chain)
            elif i in self.pending:
                raise FrontendError(
                    f"{node.op_type} '{nname}' runs on the CPU but reads the float result of "
                    f"'{self.pending[i].producer}' directly (no QuantizeLinear in between); the accelerator "
                    f"hands over int8 tensors only"
                )
            elif i == self.input_name:
                raise FrontendError(
                    f"{node.op_type} '{nname}' runs on the CPU on the float graph input '{i}' before it is "
                    f"quantized; the accelerator path takes int8 inputs"
                )
            elif i in self.initializer_names or i in self.producer:
                self.chain_to(i, chain)  # constants (and their Q/DQ or Constant producers)
            else:
                raise FrontendError(f"{node.op_type} '{nname}' reads '{i}', which nothing produces")
        return rids, boundary, chain

    def build_cpu_ops(self, outputs: list[str]) -> list:
        """One ir.CpuOp per region that feeds anything."""
        g = self.model.graph
        used = set(outputs)
        for layer in self.layers:
            used.update(layer_inputs(layer))
        for ins in self.region_inputs.values():
            used.update(ins)
        inits = {t.name: t for t in g.initializer}
        const_nodes = {o: n for n in g.node if n.op_type == "Constant" for o in n.output}
        ops = []
        for rid in sorted(self.region_nodes):
            outs = [t for t, r in self.materialized.items() if self.find(r) == rid and t in used]
            outs += [t for t, r in self.float_outputs.items() if self.find(r) == rid]
            if not outs:
                continue  # computes nothing anything reads
            inputs = sorted(self.region_inputs[rid])
            # Only what the outputs need (a region may have grown nodes whose results nobody reads).
            members = self.region_nodes[rid]
            need, keep = set(outs), set()
            for i in sorted(members, reverse=True):
                if any(o in need for o in g.node[i].output):
                    keep.add(i)
                    need.update(x for x in g.node[i].input if x)
            inputs = [t for t in inputs if t in need]
            nodes = [g.node[i] for i in sorted(keep)]
            if not nodes:
                raise FrontendError(f"internal error: the CPU subgraph for {outs} holds no nodes")
            produced = {o for n in nodes for o in n.output}
            need_inits, need_consts = [], []
            for n in nodes:
                for i in n.input:
                    if not i or i in produced or i in inputs:
                        continue
                    if i in inits:
                        if i not in [t.name for t in need_inits]:
                            need_inits.append(inits[i])
                    elif i in const_nodes:
                        if const_nodes[i] not in need_consts:
                            need_consts.append(const_nodes[i])
                    else:
                        raise FrontendError(f"cannot cut out a CPU subgraph: '{i}' comes from outside it")

            def info(name):
                t = self.tensors[name]
                elem = TensorProto.FLOAT if t.dtype == "float32" else TensorProto.INT8
                return helper.make_tensor_value_info(name, elem, list(self.shapes[name]))

            names = [n.name or f"{n.op_type}_{self.node_index[id(n)]}" for n in nodes]
            sub = helper.make_graph(
                need_consts + nodes, f"cpu_{len(ops)}", [info(i) for i in inputs], [info(o) for o in outs], need_inits
            )
            model = helper.make_model(sub, opset_imports=list(self.model.opset_import))
            model.ir_version = self.model.ir_version
            main = next((n for n, nd in zip(names, nodes) if nd.op_type not in QDQ_OPS | VIEW_OPS), names[-1])
            name = self.layer_name(helper.make_node("CpuOp", [], [], name=f"cpu_{main}"), rid)
            reasons = {n: self.cpu_reasons.get(n, "kept in float by the quantizer (a square or root: int8 loses "
                                                  "its range)" if nd.op_type in RANGE_OPS else
                                                  "reads a value computed on the host (no int8 hand-over)")
                       for n, nd in zip(names, nodes) if nd.op_type not in QDQ_OPS | VIEW_OPS}
            op = ir.CpuOp(name, tuple(inputs), tuple(outs), model.SerializeToString(), onnx_nodes=names,
                          reasons=reasons)
            ops.append((self.region_seq[rid], op))
        return ops

    def order(self, cpu_ops) -> list:
        """Layers (in reading order) and CPU ops (at the point their region
        last grew) in a valid execution order, stable otherwise."""
        import heapq

        items = [((k, 0), layer) for k, layer in enumerate(self.layers)] + [((s, -1), op) for s, op in cpu_ops]
        producer = {o: n for n, (_, layer) in enumerate(items) for o in layer_outputs(layer)}
        deps = [{producer[i] for i in layer_inputs(layer) if i in producer} for _, layer in items]
        readers: dict[int, list] = {}
        for n, d in enumerate(deps):
            for p in d:
                readers.setdefault(p, []).append(n)
        waiting = [len(d) for d in deps]
        heap = [(items[n][0], n) for n in range(len(items)) if not waiting[n]]
        heapq.heapify(heap)
        out = []
        while heap:
            _, n = heapq.heappop(heap)
            out.append(items[n][1])
            for r in readers.get(n, []):
                waiting[r] -= 1
                if not waiting[r]:
                    heapq.heappush(heap, (items[r][0], r))
        if len(out) != len(items):
            raise FrontendError("the accelerator/CPU partition has a cycle")
        return out

"""Step 1 of issue 18: default int8 recipe, .pte vs float, quantized graph vs float, .pte vs
quantized graph, on 200 held-out crops.  Usage: int8_runtime_vs_reference.py v3s|v2 [--dump-graph FILE]"""

import json
import sys
import time

import int8_runtime_common as C


def main():
    name = sys.argv[1]
    t0 = time.time()

    from mobile_export.quantize import QuantRecipe, quantize_pt2e

    wrapped, calib, held, example = C.setup(name)
    fl = C.torch_outputs(wrapped, held)
    qm = quantize_pt2e(wrapped, example, calib, QuantRecipe())
    ref = getattr(qm, "reference", None)
    ref = qm.graph_module if ref is None else ref
    q = C.torch_outputs(ref, held)
    q_graph = C.torch_outputs(qm.graph_module, held)
    if "--dump-graph" in sys.argv:
        with open(sys.argv[sys.argv.index("--dump-graph") + 1], "w") as fh:
            fh.write(str(qm.graph_module.graph))
    buf, deleg = C.lower_bytes(qm.graph_module, example)
    pte = C.torch_outputs_pte = [o[0] for o in C.run_pte(buf, held)]
    import numpy as np

    pte = np.concatenate([p.reshape(1, -1) for p in pte])
    import hashlib

    import mobile_export

    res = {
        "model": name,
        "code": mobile_export.__file__,
        "pte_sha256": hashlib.sha256(buf).hexdigest()[:16],
        **C.three_way(fl, q, pte),
        "pte_vs_graph_module_db": round(C.sqnr(q_graph, pte), 2),
        "outside": deleg["outside"],
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(res))
    if "--by-operator" in sys.argv:
        print(json.dumps(deleg["by_operator"], indent=1))


if __name__ == "__main__":
    main()

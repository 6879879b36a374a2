"""Run a real timm model in the side venv (torch 2.14 + timm, never a project dependency) and
bring back its state dict, an input and timm's output through one safetensors file, so tests
can load timm's weights into our model by name and compare outputs."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from sidecar import SIDE_PYTHON, SKIP_REASON  # noqa: F401 (SKIP_REASON is used through this module)

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, timm
    from safetensors.torch import save_file

    torch.set_num_threads(1)  # the test machine is shared: one thread is the fastest here
    for case in json.loads(sys.argv[1]):
        torch.manual_seed(case["seed"])
        model = timm.create_model(case["name"], **case["kwargs"])
        # Move every norm, bias and layer scale off its init value (BN 1/0/0/1, gamma 1e-5) so
        # that each part of each block changes the output.
        with torch.no_grad():
            for key, t in model.state_dict().items():
                if key.endswith("running_var"):
                    t.uniform_(0.5, 1.5)
                elif key.endswith("running_mean"):
                    t.normal_(0.0, 0.1)
                elif key.endswith("gamma"):
                    t.uniform_(0.05, 0.3)
                elif t.is_floating_point() and t.dim() == 1 and key.endswith("weight"):
                    t.mul_(torch.empty_like(t).uniform_(0.5, 1.5))
                elif t.is_floating_point() and t.dim() == 1 and key.endswith("bias"):
                    t.normal_(0.0, 0.1)
        model.eval()
        x = torch.rand(2, 3, case["resolution"], case["resolution"])
        with torch.no_grad():
            y = model(x)
        tensors = {"state." + k: v.contiguous() for k, v in model.state_dict().items()}
        tensors.update(input=x, output=y.contiguous())
        save_file(tensors, case["out"])
        del model, tensors
    """
)


def available() -> bool:
    return SIDE_PYTHON is not None


def timm_reference(name: str, resolution: int, out: Path, seed: int = 0, **kwargs) -> dict:
    """Returns {"state": timm state dict, "input": x, "output": timm(x)} as torch tensors."""
    return timm_references([(name, resolution, kwargs)], out.parent, seed)[0]


def timm_references(cases: list[tuple[str, int, dict]], folder: Path, seed: int = 0) -> list[dict]:
    """Several models in one side process (one interpreter start-up, which dominates)."""
    from safetensors.torch import load_file

    spec = [
        {
            "name": name,
            "resolution": res,
            "kwargs": kwargs,
            "seed": seed,
            "out": str(folder / f"timm_ref_{i}.safetensors"),
        }
        for i, (name, res, kwargs) in enumerate(cases)
    ]
    subprocess.run(
        [str(SIDE_PYTHON), "-c", _SCRIPT, json.dumps(spec)], check=True, capture_output=True, timeout=1800
    )
    results = []
    for case in spec:
        tensors = load_file(case["out"])
        state = {k[len("state.") :]: v for k, v in tensors.items() if k.startswith("state.")}
        results.append({"state": state, "input": tensors["input"], "output": tensors["output"]})
    return results

"""Batch keys are named once (REC/utils/batch_keys.py): no module spells one as a string on either side."""
import ast

from REC.utils import batch_keys

from .conftest import ROOT

KEYS = {v for k, v in vars(batch_keys).items() if k.isupper()}


def test_no_module_spells_a_batch_key():
    assert {"items", "negatives", "item_seq", "hist_item", "covers", "cover_prefix", "shared_negatives"} <= KEYS
    spelled = []
    for path in sorted((ROOT / "REC").rglob("*.py")):
        if path.name == "batch_keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            keys = []
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "batch":
                keys = [node.slice]  # batch["items"]
            elif isinstance(node, ast.Dict):  # {"items": torch.from_numpy(...)}: a batch being made
                keys = [k for k, v in zip(node.keys, node.values) if isinstance(v, ast.Call)
                        and ast.unparse(v.func).startswith("torch.")]
            spelled += [f"{path.relative_to(ROOT)}:{k.lineno} {k.value!r}" for k in keys
                        if isinstance(k, ast.Constant) and k.value in KEYS]
    assert not spelled, spelled

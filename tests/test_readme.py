"""The README's Python examples run as written (on a small exported model named model.onnx)."""

import re
import subprocess
import sys
from pathlib import Path

import torch

from conftest import random_input, write_finetune_inputs
from model_zoo import IMAGE, build
from saddc.frontends.torch_export import export_onnx

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path):
    export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), tmp_path / "model.onnx", "legacy", 17)
    # The fine-tuning example's FILE.py:FACTORY, weights and data.
    images = random_input((48,) + IMAGE[1:])
    write_finetune_inputs(tmp_path, images, (images.mean(axis=(1, 2, 3)) > 0).astype("int64"), 16)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for index, block in enumerate(blocks):
        script = tmp_path / f"readme_{index}.py"
        script.write_text(block)
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"README example {index} failed:\n{block}\n{result.stderr[-3000:]}"

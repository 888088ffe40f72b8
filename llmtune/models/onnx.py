"""An ONNX export (`llmtune export`) run by ONNX Runtime behind the interface of a torch model."""

from __future__ import annotations

import types
from pathlib import Path

from ..common import runs
from ..common.lazy import torch

ONNX_FILES = runs.ONNX_FILES  # an export's weights: the quantized file when there is one

# The model classes whose forward pass ONNX Runtime runs in llmtune's place: the outputs tasks read, and their
# free axes (a sequence classifier's logits have no sequence axis).
ONNX_OUTPUTS = {
    "AutoModelForSequenceClassification": {"logits": {0: "batch"}},
    "AutoModelForTokenClassification": {"logits": {0: "batch", 1: "sequence"}},
    "AutoModelForQuestionAnswering": {
        "start_logits": {0: "batch", 1: "sequence"},
        "end_logits": {0: "batch", 1: "sequence"},
    },
}


def onnx_file(folder: Path) -> Path | None:
    """The ONNX model of an export directory (`llmtune export`), or None."""
    return next((folder / name for name in ONNX_FILES if (folder / name).is_file()), None)


def load_onnx(path: Path, config, outputs):
    """An exported model as a torch module that ONNX Runtime runs: tasks call it as they call the torch model
    (keyword inputs in, an object with the task's outputs, e.g. `.logits`, back)."""
    import onnxruntime

    class OnnxModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.inputs = {item.name for item in self.session.get_inputs()}
            self.config = config
            # A parameter only so `next(model.parameters())` tells the device, as it does for torch models.
            self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

        def forward(self, **inputs):
            feed = {name: value.cpu().numpy() for name, value in inputs.items() if name in self.inputs}
            values = self.session.run(list(outputs), feed)
            return types.SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(outputs, values)})

    return OnnxModel()

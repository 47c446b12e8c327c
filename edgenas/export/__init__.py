"""Export subnets to TFLite (fp32, fp16, dynamic-range, full-integer int8) with a manifest."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgenas.export.api import export  # noqa: E402
from edgenas.export.convert import PRECISIONS, ExportError  # noqa: E402
from edgenas.export.pipeline import (  # noqa: E402
    ExportResult,
    export_model,
    read_manifest,
    sha256_file,
)

__all__ = ["PRECISIONS", "ExportError", "ExportResult", "export", "export_model", "read_manifest",
           "sha256_file"]

"""Export subnets to TFLite (fp32, fp16, dynamic-range, full-integer int8) with a manifest, and the model
package (:mod:`edgenas.export.package`) every later stage reads.

Nothing is imported here: the package reader must stay free of torch and TensorFlow for the verbs
that only read model folders (``fleet push``, ``bench``), so import what you need from its module —
:func:`edgenas.export.api.export`, :func:`edgenas.export.pipeline.export_model`.
"""

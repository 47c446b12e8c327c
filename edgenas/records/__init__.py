"""Typed records of the workspace database, one module per table family, each holding ALL the SQL on
its tables: :mod:`edgenas.records.devices`, :mod:`edgenas.records.measurements`,
:mod:`edgenas.records.deployments` and :mod:`edgenas.records.classes`.

Why one owner per table: the resume rule of a campaign, the rows a predictor is fitted on, the latest
deployment per device and the report all read the same rows; when each caller writes its own query
they drift apart (a resume that ignored the runtime version while the predictor honoured it).
:mod:`edgenas.device.registry` validates devices and calls :mod:`edgenas.records.devices` to store
them.  Schema changes are migrations in
:mod:`edgenas.records.store`.  Nothing here imports torch, TensorFlow or the device layer.
"""

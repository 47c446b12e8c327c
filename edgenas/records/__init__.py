"""Typed records of the workspace database, one module per table family, each holding ALL the SQL on
its tables: :mod:`edgenas.records.measurements` and :mod:`edgenas.records.deployments`.

Why one owner per table: the resume rule of a campaign, the rows a predictor is fitted on, the latest
deployment per device and the report all read the same rows; when each caller writes its own query
they drift apart (a resume that ignored the runtime version while the predictor honoured it).  The
``devices`` table stays with :mod:`edgenas.device.registry`.  Schema changes are migrations in
:mod:`edgenas.records.store`.  Nothing here imports torch, TensorFlow or the device layer.
"""

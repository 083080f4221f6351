"""The core: the contracts the gateway, the sidecar and the trainer share. It imports none of them.

The data path, and the module that owns each step::

    request        an OpenAI call reaches the gateway (``gateway.intake``); its messages read as
                   text one way everywhere (``core.text``), and secrets are scrubbed from what
                   is logged (``core.redact``)
       │
    record         one JSON object per exchange, named by a ULID (``core.ids``), with the columns
       │           of ``core.record.SCHEMA`` (built by ``gateway.capture``)
       ▼
    spool segment  records framed in a local append-only file (format, readers and crash
       │           recovery: ``core.segment``; the writer: ``gateway.spool``)
       ▼
    Parquet        the sidecar turns a sealed segment into parts (``sidecar.parts``, with
       │           ``core.record.records_to_table``) stored under the keys of ``core.keys`` in
       │           the store (``core.store``: a local directory or S3, configured by ``core.s3``)
       ▼
    dataset row    exchanges read back in streaming batches (``core.read``), curated into a
       │           snapshot's train and test rows (``trainer.curate``, ``trainer.dataset``,
       │           answers parsed by ``core.answers``)
       ▼
    training       each row rendered with the base's chat template and tokenized
    example        (``trainer.batches``); its prompts' profile (``core.profile``) is published
                   with the adapter and is the gateway's drift reference

Beside the path: the errors every part raises (``core.errors``), the settings base and the
sections services share (``core.settings``), and logging (``core.logs``); LLM judges of
free-text answers, their cache and calibration (``core.judging``).
"""

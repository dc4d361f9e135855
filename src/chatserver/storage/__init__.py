"""Storage back-ends shipped with chatserver, and the loader for ``--storage``.

The modules are imported on demand: ``chatserver.storage.memory``,
``chatserver.storage.sqlite``, ``chatserver.storage.mongo``.
"""

"""Everything that knows Label Studio: the labeling config (:mod:`.label_config`: tags, modalities), regions
<-> arrays (:mod:`.regions`: brush RLE, polygons, rectangles; :mod:`.convert`: annotations and
predictions), task JSON -> network input (:mod:`.tasks`), the REST client and its auth (:mod:`.client`,
:mod:`.auth`), image fetching and decoding behind the network guard (:mod:`.images`, :mod:`.decode`,
:mod:`.netguard`), and the JSON export reader and its synthetic writer (:mod:`.export`,
:mod:`.synthetic_export`).

May import: :mod:`backend.settings`, :mod:`backend.logs` and ``mtal_models``; nothing else of ``backend``.
"""

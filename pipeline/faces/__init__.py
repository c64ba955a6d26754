"""The aligned-face store: what the align stage writes and training, evaluation and embedding read.

- :mod:`pipeline.faces.shards`: tar shards of encoded crops, read back by byte range;
- :mod:`pipeline.faces.table`: the alignment table (one row per manifest image: status, shard, offset...);
- :mod:`pipeline.faces.source`: :class:`~pipeline.faces.source.FaceSource`, the one reader of an aligned folder;
- :mod:`pipeline.faces.crops`: the random (training) and centre (evaluation) crops of stored faces.

It sits below :mod:`pipeline.align` (the writer), :mod:`pipeline.data` and :mod:`pipeline.training` (the readers)
and imports none of them.
"""

"""Subject-disjoint k-fold splits, expression verification pairs, and the original pair-file and LFW pair readers.

- :mod:`.split`: folds over subjects (``contiguous`` / ``hash`` / explicit lists) and the leakage checks;
- :mod:`.pairs`: the seeded 4-type expression pair recipe and the pairs table schema;
- :mod:`.pair_file`: the original ``...pairs_Six.txt`` format, mapped to manifest ids;
- :mod:`.lfw`: LFW ``pairs.txt`` folds mapped to manifest ids;
- :mod:`.cari`: the caricature protocols (CaVI's down-sampled closed-set split, WebCaricature's pair, probe and
  gallery files).

No import-time side effects; nothing here touches MLflow, DVC or the CLI.
"""

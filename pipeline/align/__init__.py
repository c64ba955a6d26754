"""Face alignment: batched MTCNN detection, face choice and margin crop (or WebCaricature's landmark box,
:mod:`.landmarks`); the crops go to :mod:`pipeline.faces`."""

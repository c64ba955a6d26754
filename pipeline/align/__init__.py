"""Face alignment: batched MTCNN detection, face choice and margin crop, or a crop without detector (the whole
image, or WebCaricature's landmark box: :mod:`.nodetect`, :mod:`.landmarks`); the crops go to :mod:`pipeline.faces`."""

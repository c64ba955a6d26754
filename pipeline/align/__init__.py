"""Face alignment: batched MTCNN detection, face choice and margin crop; the crops go to :mod:`pipeline.faces`."""

"""Face alignment: batched MTCNN detection, face choice and margin crop, and the aligned-face shard format."""

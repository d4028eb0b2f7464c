"""Face crops (crop_faces.py is the command line).

The algorithm apart from what makes it fast: geometry.py decides the crop (which face is the subject, the
fallback box of a photo without one, the margins, the min face size); detector.py and runner.py run it
fast (MTCNN loaded in the background and fed in batches and streams, decoding and encoding in threads,
skipping up-to-date crops, checkpoints); manifest.py reads and writes crops_manifest.csv and the
overrides; preview.py draws the contact sheet.
"""

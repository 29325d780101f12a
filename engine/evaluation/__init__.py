"""Quality evaluation of the generator (DESIGN section 6): metrics in torch
(metrics.py) and the generation variants compared (variants.py: generator,
guide-only, no knot (k = 0), fixed reference position). The driver that
needs mediapipe / dlib lives in kf_desktop/evaluate.py."""

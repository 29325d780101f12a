"""PySide6 widgets and windows (no torch, no mediapipe)."""
